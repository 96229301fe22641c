"""Dispatch `python -m infinipot_mlx.bench <subcommand>` to the module named in SUBCOMMANDS.

Bad input (a flag out of range, an unknown method, an INFINIPOT_BLAS that failed to load)
is one line on stderr and exit code 2; any other exception is a bug and keeps its traceback.
Only the chosen subcommand's module is imported (some import mlx or mlx-vlm at the top), when
the command line names it: `--help` and a bad subcommand answer without any array library.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys

import infinipot_mlx  # noqa: F401  (loads the optimized BLAS before any mlx import)

from .._blas import check_blas
from ..bench import SUBCOMMANDS
from ..errors import OneLineParser, UserError, report


class _LazySubcommands(argparse._SubParsersAction):  # argparse's "parsers" action, filled on use
    """Sub-parsers whose flags are added when the command line chooses them: the module's
    add_arguments(sub), and run=module.run as a default, just before the sub-parser parses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.modules: dict[str, str] = {}  # subcommand -> module name, not yet imported

    def __call__(self, parser, namespace, values, option_string=None):
        fill(self, values[0])
        super().__call__(parser, namespace, values, option_string)


def fill(subparsers: _LazySubcommands, name: str) -> None:
    """Import `name`'s module and add its flags to its sub-parser (once)."""
    module_name = subparsers.modules.pop(name, None)
    if module_name is not None:
        module = importlib.import_module(module_name)
        sub = subparsers.choices[name]
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)


def summary(module_name: str) -> str:
    """The first line of a module's docstring, read from its source without importing it."""
    try:
        spec = importlib.util.find_spec(module_name)
        with open(spec.origin, encoding="utf-8") as source:
            doc = ast.get_docstring(ast.parse(source.read()))
    except (AttributeError, ImportError, OSError, SyntaxError, TypeError, ValueError):
        return ""  # no such module (yet): importing it when chosen says why
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def build_parser(fill_all: bool = False) -> argparse.ArgumentParser:
    """One sub-parser per registered subcommand; its module's add_arguments fills it when the
    command line names it (fill_all: now, for every subcommand, which imports them all)."""
    parser = OneLineParser(prog="python -m infinipot_mlx.bench", description=__doc__)
    parser.register("action", "parsers", _LazySubcommands)
    subparsers = parser.add_subparsers(dest="subcommand", required=True)  # sub-parsers: OneLineParser too
    for name, module_name in SUBCOMMANDS.items():
        subparsers.add_parser(name, help=summary(module_name))
        subparsers.modules[name] = module_name
    if fill_all:
        for name in SUBCOMMANDS:
            fill(subparsers, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand: 0 when done, 2 (one line on stderr) on input the user can fix."""
    args = build_parser().parse_args(argv)
    try:
        check_blas()
        args.run(args)  # each run() checks its flags before any work
    except UserError as err:
        return report(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
