"""The package's shape: no import cycles between its modules (imports inside functions
count too), and the reference backend never imports mlx."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "infinipot_mlx"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of the package that `path` imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = node.module if node.level == 0 else ".".join(filter(None, [base, node.module]))
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # a package __init__ that re-exports its own submodule is not a cycle of concern
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not cycles, cycles


def test_the_reference_backend_imports_no_mlx():
    for path in (PACKAGE / "reference").rglob("*.py"):
        assert not any(m == "mlx" or m.startswith(("mlx.", "mlx_vlm", "mlx_lm")) for m in imports(path)), path


# ----- the house: backend-free top level, two mirrored backends, tools apart ----------------
import subprocess  # noqa: E402
import sys  # noqa: E402

ARRAY_LIBRARIES = ("mlx", "mlx_vlm", "mlx_lm", "torch", "torchvision", "transformers")
TOP_LEVEL = sorted(p for p in PACKAGE.glob("*.py"))
RUNTIME = [*TOP_LEVEL, *(PACKAGE / "mlx").rglob("*.py"), *(PACKAGE / "reference").rglob("*.py")]


def _library(module: str) -> str:
    return module.split(".")[0]


def test_the_top_level_imports_neither_mlx_nor_torch():
    """Not at import time and not inside a function: array code lives in mlx/ and reference/."""
    for path in TOP_LEVEL:
        found = {m for m in imports(path) if _library(m) in ARRAY_LIBRARIES}
        assert not found, (path.name, found)
    names = [module_name(p) for p in TOP_LEVEL]
    code = ("import importlib, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({ARRAY_LIBRARIES!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_backends_mirror_each_other_file_for_file():
    def files(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))

    mlx, reference = files(PACKAGE / "mlx"), files(PACKAGE / "reference")
    # memory.py is the MLX side's unified-memory probe (the reference measures in its backend)
    assert [f for f in mlx if f != "memory.py"] == reference
    for name in ("backend.py", "cache.py", "scoring.py", "select.py", "adapters/qwen2_5_vl.py"):
        assert name in reference


def test_the_runtime_imports_no_tools():
    """The session and the backends never import the hub writers, the CLIs, the benchmarks
    or the organism: those are built on the runtime, not the other way round."""
    tools = tuple(f"infinipot_mlx.{t}" for t in ("hub", "cli", "bench", "organism"))
    for path in RUNTIME:
        if path.name in ("chat.py", "parity.py") and path.parent == PACKAGE:
            continue  # the `python -m infinipot_mlx.chat` / `.parity` entry points call cli/
        found = {m for m in imports(path) if m.startswith(tools)}
        assert not found, (module_name(path), found)


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
