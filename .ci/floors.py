"""Print every dependency of pyproject.toml (the package's, and every extra's) pinned to its
declared floor, one requirement per line, markers kept: .ci/run installs exactly these in its
lower-bound virtualenv and runs the whole suite there."""

import re
import sys
import tomllib
from pathlib import Path


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = [*project["dependencies"], *(d for group in project["optional-dependencies"].values() for d in group)]
    pinned = []
    for spec in specs:
        pin = re.sub(r">=", "==", spec, count=1)
        if pin not in pinned:  # torch and transformers sit in two extras
            pinned.append(pin)
    return pinned


if __name__ == "__main__":
    print("\n".join(floors(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
