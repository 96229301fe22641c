"""python -m infinipot_mlx.server: an OpenAI-compatible server with video memories.

The CLI parses and checks the flags (before mlx, mlx-vlm or torch is imported), loads the
model (server/engine.py) and serves the app (server/app.py) with uvicorn. Bad flags or a
checkpoint that cannot load end with one line on stderr and exit code 2, as in `chat`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .. import _blas  # first: the optimized BLAS loads before mlx
from ..contract.config import METHODS
from ..errors import OneLineParser, UserError, run_command
from .chat import MIN_PIXELS

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m infinipot_mlx.server",
                      description="An OpenAI-compatible server (POST /v1/chat/completions) that answers "
                                  "questions about videos from memory-capped, reusable video memories.")
    p.add_argument("--model", default=None, help="checkpoint folder or hub repo (default: chat's, "
                   "mlx-community/Qwen2.5-VL-7B-Instruct-4bit; reference: Qwen/Qwen2.5-VL-7B-Instruct)")
    p.add_argument("--served-model-name", default=None, help="the model id clients see (default: the folder's name)")
    p.add_argument("--backend", choices=("mlx", "reference"), default="mlx", help="mlx (default) or the PyTorch reference")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="reference backend device")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None, help="reference backend dtype")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--kv-budget", type=int, default=None, metavar="TOKENS",
                        help="KV cache capacity of each video memory, tokens per layer (default 6144)")
    budget.add_argument("--memory", default=None, metavar="GB|PCT",
                        help="memory budget (MLX), e.g. 6GB or 60%%: sets each memory's capacity as chat does "
                             "for frames of the default size (448x448, or the model's fixed frame size)")
    p.add_argument("--reserve", type=int, default=512, metavar="TOKENS", help="room kept for a question and its answer")
    p.add_argument("--block-slots", "--block-frames", type=int, default=None, metavar="N",
                   help="temporal slots per block (default: auto; --block-frames: its name before 0.2)")
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate when a request sets none (default 2)")
    p.add_argument("--max-pixels", type=int, default=None, help="pixel budget per frame (default 448x448, fitted)")
    p.add_argument("--method", choices=METHODS, default="infinipot_v", help="compression method")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--api-key", default=os.environ.get("INFINIPOT_API_KEY"),
                   help="require `Authorization: Bearer KEY` (default: $INFINIPOT_API_KEY, else no key)")
    p.add_argument("--max-memories-bytes", default="2GB", metavar="SIZE",
                   help="KV bytes of video memories held in RAM, least recently used leave first "
                        "(default 2GB; 512MB, 60%% of memory, ...)")
    p.add_argument("--max-sessions", type=int, default=8, help="live sessions open at once (default 8)")
    p.add_argument("--queue-limit", type=int, default=64,
                   help="requests that may wait while one runs; more answer 503 (default 64)")
    p.add_argument("--library", default=None, metavar="DIR",
                   help="a video library (python -m infinipot_mlx.library): reuse its memories")
    p.add_argument("--allowed-local-media-path", action="append", default=None, metavar="DIR",
                   help="read file:// videos only under DIR (repeatable; default: any local file)")
    p.add_argument("--max-body-bytes", default="64MB", metavar="SIZE", help="request body limit (default 64MB)")
    p.add_argument("--max-download-bytes", default="2GB", metavar="SIZE",
                   help="largest http(s) video downloaded (default 2GB)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")
    return p


def parse_size(text: str, flag: str, share_of: int | None = None) -> int:
    """'2GB', '512MiB', '1000000' (bytes) or, with `share_of`, '60%' -> bytes; UserError otherwise."""
    from ..contract.budget import UNITS

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(%|[a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if unit is None or (unit not in UNITS and not (unit == "%" and share_of)) or float(match.group(1)) <= 0:
        raise UserError(f"{flag} {text!r} is not a size; write it like 2GB, 512MB, 1000000"
                        + (" or 60%" if share_of else ""))
    value = float(match.group(1))
    if unit == "%":
        return int(share_of * min(value, 100.0) / 100)
    return int(value * (UNITS[unit] if unit else 1))


def check_args(args) -> None:
    """Reject impossible flag values before anything heavy is loaded; sizes become bytes."""
    for name in ("reserve", "queue_limit"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    for name in ("kv_budget", "block_slots", "max_pixels", "max_sessions", "port"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if not args.fps > 0:
        raise UserError(f"--fps must be positive, got {args.fps}")
    if args.kv_budget is not None and METHODS[args.method].bounded and args.kv_budget <= args.reserve:
        raise UserError(f"--kv-budget {args.kv_budget} must be above --reserve {args.reserve}")
    if args.max_pixels is not None and args.max_pixels < MIN_PIXELS:
        raise UserError(f"--max-pixels {args.max_pixels} is below one visual token ({MIN_PIXELS} pixels)")
    if args.memory is not None and args.backend != "mlx":
        raise UserError("--memory plans an MLX session; with --backend reference use --kv-budget")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    args.max_memories_bytes = parse_size(args.max_memories_bytes, "--max-memories-bytes", total)
    args.max_body_bytes = parse_size(args.max_body_bytes, "--max-body-bytes")
    args.max_download_bytes = parse_size(args.max_download_bytes, "--max-download-bytes")
    for folder in args.allowed_local_media_path or []:
        if not Path(folder).expanduser().is_dir():
            raise UserError(f"--allowed-local-media-path {folder} is not a folder")
    if args.library is not None:
        from ..library import Catalogue

        args.library = Path(args.library).expanduser()
        Catalogue(args.library).close()  # CatalogueError (one line) when there is no library there


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: check_args(args) or run(args), interrupted="")  # check_args returns None


def run(args) -> int:
    from ..server.engine import Engine
    from ..server.media import Limits

    _blas.check_blas()
    roots = tuple(Path(f).expanduser().resolve() for f in args.allowed_local_media_path or [])
    engine = Engine(args, Limits(allowed_roots=roots, max_download_bytes=args.max_download_bytes))
    try:
        import uvicorn  # FastAPI and uvicorn once the model has loaded: a bad checkpoint fails without them

        from ..server.app import create_app

        app = create_app(engine, api_key=args.api_key, max_body_bytes=args.max_body_bytes)
        capacity = engine.config.capacity or "no cap"
        if args.host not in LOOPBACK and not roots:
            print(f"warning: listening on {args.host} and reading any local file a request names; limit that "
                  "with --allowed-local-media-path DIR", file=sys.stderr)
        print(f"serving {engine.model_id} (KV cap {capacity} tokens, {args.backend}) on "
              f"http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.worker.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
