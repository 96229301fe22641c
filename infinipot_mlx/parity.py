"""`python -m infinipot_mlx.parity`: the parity command line (infinipot_mlx/cli/parity.py)."""

from .cli.parity import main

if __name__ == "__main__":
    raise SystemExit(main())
