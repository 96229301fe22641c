"""The docs the code cites are in the repository: every "ALGORITHM.md section N" resolves to
a section of docs/ALGORITHM.md, and no file names a document or a path outside the repo."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("infinipot_mlx", "conversions", "tests") for p in (ROOT / d).rglob("*.py")]


def test_every_algorithm_citation_resolves():
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "ALGORITHM.md").read_text(), re.M))
    cited = {}
    for path in SOURCES + [ROOT / "README.md"]:
        for match in re.finditer(r"ALGORITHM\.md sections? (\d+)(?:\s*(?:-|and)\s*(\d+))?", path.read_text()):
            for number in filter(None, match.groups()):
                cited.setdefault(number, []).append(path.name)
    assert cited, "no citation found: the pattern is wrong"
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert not missing, missing


def test_no_file_names_a_document_or_path_outside_the_repo():
    outside = re.compile(r"/work/|/root/|/home/|shared/|FIXTURES\.md|PERFORMANCE\.md|ORGANISM\.md|DESIGN\.md")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES + [ROOT / "README.md"]
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if outside.search(line) and p.name != "test_docs.py"]
    assert not hits, hits


AUTHORS_FILES = {"kvcache_utils.py", "qwen_inference_ovu.py"}  # aiha-lab/InfiniPot-V, cited by name


def test_every_file_the_algorithm_names_exists():
    """`mlx/select.py`, `session.py`, `tests/test_parity*.py`: each name matches a file here."""
    files = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if ".git" not in p.parts]
    named = set(re.findall(r"`([\w/*.]+\.py)`", (ROOT / "docs" / "ALGORITHM.md").read_text()))
    assert named, "no file name found: the pattern is wrong"
    missing = [name for name in sorted(named - AUTHORS_FILES)
               if not any(Path(f).match(name) and (f == name or f.endswith("/" + name)
                                                   or "*" in name) for f in files)]
    assert not missing, missing
