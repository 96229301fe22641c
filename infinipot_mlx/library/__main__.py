"""`python -m infinipot_mlx.library`: the video library command line (infinipot_mlx/cli/library.py)."""

from ..cli.library import main

if __name__ == "__main__":
    raise SystemExit(main())
