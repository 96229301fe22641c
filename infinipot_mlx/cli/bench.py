"""Dispatch `python -m infinipot_mlx.bench <subcommand>` to the module named in SUBCOMMANDS.

Bad input (a flag out of range, an unknown method, an INFINIPOT_BLAS that failed to load)
is one line on stderr and exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import infinipot_mlx  # noqa: F401  (loads the optimized BLAS before any mlx import)

from .._blas import check_blas
from ..bench import SUBCOMMANDS
from ..errors import OneLineParser, UserError, report


def build_parser() -> argparse.ArgumentParser:
    """One sub-parser per registered subcommand, filled by its module's add_arguments."""
    parser = OneLineParser(prog="python -m infinipot_mlx.bench", description=__doc__)
    subparsers = parser.add_subparsers(dest="subcommand", required=True)  # sub-parsers: OneLineParser too
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=(module.__doc__ or "").splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
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
