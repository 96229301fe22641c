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


# ----- the house: floors that point one way ----------------------------------------------
import subprocess  # noqa: E402
import sys  # noqa: E402

ARRAY_LIBRARIES = ("mlx", "mlx_vlm", "mlx_lm", "torch", "torchvision", "transformers")
# Each package's floor; a module may import its own floor and those below, never one above.
FLOORS = {
    "plumbing": 0,   # __init__ (public API), errors, deprecated, _blas
    "contract": 1,   # config, plan, budget, specs, candidates, rows, positions, pixels, model_path
    "video": 2,      # frame sources and the reader thread
    "stream": 3,     # the streaming loop, backend-agnostic
    "mlx": 4, "reference": 4,               # the two backends
    "hub": 2,        # hub-layout checkpoint writers (contract only)
    "door": 5,       # the one door: flags, opening a session, streaming a source
    "library": 5,    # the SQLite catalogue of video memories
    "organism": 6, "bench": 6,              # tools over the door
    "cli": 7, "server": 7,                  # the front ends: the top floor
}
ENTRY_POINTS = {"infinipot_mlx.chat", "infinipot_mlx.parity", "infinipot_mlx.library.__main__",
                "infinipot_mlx.server.__main__", "infinipot_mlx.bench.__main__"}  # `python -m` shims


def floor_of(module: str) -> tuple[str, int]:
    if module in ENTRY_POINTS:
        return "entry point", 8
    if module == "infinipot_mlx":
        return "public API", 5  # re-exports the session, load, the config and select_tokens
    parts = module.split(".")
    group = parts[1] if len(parts) > 1 and parts[1] in FLOORS else "plumbing"
    return group, FLOORS[group]


def test_every_package_has_a_floor():
    unknown = {p.relative_to(PACKAGE).parts[0] for p in PACKAGE.glob("*/__init__.py")} - set(FLOORS)
    assert not unknown, f"give {unknown} a floor in FLOORS"


def test_imports_point_down():
    """Front ends -> the door -> backends -> stream -> video, contract: nothing imports upward,
    and nothing but a `python -m` shim imports the front ends (cli/, server/)."""
    upward = []
    for module, targets in graph().items():
        (group, floor) = floor_of(module)
        for target in targets - {"infinipot_mlx"}:  # `from .. import x` runs the package's __init__ anyway
            tgroup, tfloor = floor_of(target)
            front_end = tgroup in ("cli", "server") and group not in (tgroup, "entry point")
            if tfloor > floor or (front_end and (group, tgroup) != ("cli", "server")):
                upward.append(f"{module} ({group}) imports {target} ({tgroup})")
    assert not upward, "\n".join(upward)


BACKEND_FREE = sorted([*PACKAGE.glob("*.py"), *(PACKAGE / "contract").rglob("*.py"),
                       *(PACKAGE / "stream").rglob("*.py"), *(PACKAGE / "video").rglob("*.py")])


def _library(module: str) -> str:
    return module.split(".")[0]


def test_the_backend_free_floors_import_neither_mlx_nor_torch():
    """Not at import time and not inside a function: array code lives in mlx/ and reference/."""
    for path in BACKEND_FREE:
        found = {m for m in imports(path) if _library(m) in ARRAY_LIBRARIES}
        assert not found, (path.name, found)
    names = [module_name(p) for p in BACKEND_FREE if module_name(p) not in ENTRY_POINTS]
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
    # memory_probe.py is the MLX side's unified-memory probe (the reference measures in its backend);
    # quant.py is the reference's port of mx.quantize / mx.dequantize (MLX has them built in)
    assert [f for f in mlx if f != "memory_probe.py"] == [f for f in reference if f != "quant.py"]
    for name in ("backend.py", "cache.py", "scoring.py", "select.py", "adapters/qwen2_5_vl.py"):
        assert name in reference


def test_modules_moved_in_0_3_still_import_with_a_warning():
    code = ("import warnings; warnings.simplefilter('error')\n"
            "import infinipot_mlx\n"
            "from infinipot_mlx.stream.session import StreamSession\n"
            "try:\n    import infinipot_mlx.session\nexcept DeprecationWarning as w: print(w)\n"
            "warnings.simplefilter('ignore')\n"
            "import infinipot_mlx.session as old, infinipot_mlx.memories as mem\n"
            "from infinipot_mlx.video import VideoSource\n"
            "print(old.StreamSession is StreamSession, mem.__name__, VideoSource.__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "infinipot_mlx.session is deprecated; import infinipot_mlx.stream.session",
        "True infinipot_mlx.stream.memory_file infinipot_mlx.video.source"]


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
