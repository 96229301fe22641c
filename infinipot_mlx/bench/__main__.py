"""Dispatch `python -m infinipot_mlx.bench <subcommand>` to the module named in SUBCOMMANDS."""

from __future__ import annotations

import argparse
import importlib

import infinipot_mlx  # noqa: F401  (loads the optimized BLAS before any mlx import)

from . import SUBCOMMANDS


def build_parser() -> argparse.ArgumentParser:
    """One sub-parser per registered subcommand, filled by its module's add_arguments."""
    parser = argparse.ArgumentParser(prog="python -m infinipot_mlx.bench", description=__doc__)
    subparsers = parser.add_subparsers(dest="subcommand", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=(module.__doc__ or "").splitlines()[0])
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
