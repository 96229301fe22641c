"""`python -m infinipot_mlx.server`: the OpenAI-compatible server (infinipot_mlx/cli/server.py)."""

from ..cli.server import main

if __name__ == "__main__":
    raise SystemExit(main())
