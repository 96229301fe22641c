"""`python -m infinipot_mlx.bench`: the benchmark command line (infinipot_mlx/cli/bench.py)."""

from ..cli.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
