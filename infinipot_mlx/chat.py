"""`python -m infinipot_mlx.chat`: the chat command line (infinipot_mlx/cli/chat.py)."""

from .cli.chat import main

if __name__ == "__main__":
    raise SystemExit(main())
