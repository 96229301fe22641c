"""python -m infinipot_mlx.server: an OpenAI-compatible server with video memories.

The CLI parses and checks the flags (the door's shared ones, door.py; before mlx, mlx-vlm or
torch is imported), binds the port, loads the model (server/engine.py) and serves the app
(server/app.py) with uvicorn on that socket. Bad flags or a
checkpoint that cannot load end with one line on stderr and exit code 2, as in `chat`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from .. import _blas  # first: the optimized BLAS loads before mlx
from ..door import add_session_flags, check_session_args, machine_memory, parse_size
from ..errors import OneLineParser, UserError, run_command

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEMO_DIR = "~/.cache/infinipot_mlx/server-demo"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m infinipot_mlx.server",
                      description="An OpenAI-compatible server (POST /v1/chat/completions) that answers "
                                  "questions about videos from memory-capped, reusable video memories.")
    add_session_flags(p, stream_flags=False, model_help="checkpoint folder or hub repo (default: chat's, "
                      "mlx-community/Qwen2.5-VL-7B-Instruct-4bit; reference: Qwen/Qwen2.5-VL-7B-Instruct)",
                      fps_help="sampling rate when a request sets none (default 2)")
    p.add_argument("--served-model-name", default=None, help="the model id clients see (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port, 1-65535 (default 8080); it is bound before "
                   "the model loads, so a port in use is refused at once")
    p.add_argument("--api-key", default=os.environ.get("INFINIPOT_API_KEY"),
                   help="require `Authorization: Bearer KEY` (default: $INFINIPOT_API_KEY, else no key)")
    p.add_argument("--max-memories-bytes", default="2GB", metavar="SIZE",
                   help="KV bytes of video memories held in RAM, least recently used leave first "
                        "(default 2GB; 512MB, 60%% of memory, ...; a bare number is refused: give its unit)")
    p.add_argument("--max-sessions", type=int, default=8, help="live sessions open at once (default 8)")
    p.add_argument("--queue-limit", type=int, default=64,
                   help="requests that may wait while one runs; more answer 503 (default 64)")
    p.add_argument("--library", default=None, metavar="DIR",
                   help="a video library (python -m infinipot_mlx.library): reuse its memories, and browse, "
                        "index and ask it on the page at http://HOST:PORT/; a new or empty folder starts "
                        "an empty one")
    p.add_argument("--demo", action="store_true",
                   help="serve the page over a small generated library on the bundled model organism "
                        "(no download; videos and library under $INFINIPOT_DEMO_DIR, else "
                        f"{DEMO_DIR})")
    p.add_argument("--allowed-local-media-path", action="append", default=None, metavar="DIR",
                   help="read file:// videos only under DIR (repeatable; default: any local file)")
    p.add_argument("--max-body-bytes", default="64MB", metavar="SIZE",
                   help="request body limit (default 64MB; 2MB, 1000000B, ...)")
    p.add_argument("--max-download-bytes", default="2GB", metavar="SIZE",
                   help="largest http(s) video downloaded (default 2GB)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info")
    return p


def check_args(args) -> None:
    """Reject impossible flag values before anything heavy is loaded; sizes become bytes."""
    if getattr(args, "demo", False):
        demo_args(args)
    check_session_args(args)
    for name in ("queue_limit",):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.max_sessions < 1:
        raise UserError(f"--max-sessions must be a positive integer, got {args.max_sessions}")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port} is not a TCP port; give one in 1-65535")
    args.max_memories_bytes = parse_size(args.max_memories_bytes, "--max-memories-bytes", machine_memory())
    args.max_body_bytes = parse_size(args.max_body_bytes, "--max-body-bytes")
    args.max_download_bytes = parse_size(args.max_download_bytes, "--max-download-bytes")
    for folder in args.allowed_local_media_path or []:
        if not Path(folder).expanduser().is_dir():
            raise UserError(f"--allowed-local-media-path {folder} is not a folder")
    if args.library is not None:
        from ..library import Catalogue

        args.library = Path(args.library).expanduser()
        # a new or empty folder becomes an empty library, to fill from the page; a folder of
        # other files with no catalogue (a videos folder, say) is refused in one line
        new = not args.library.exists() or (args.library.is_dir() and not any(args.library.iterdir()))
        Catalogue(args.library, create=new or getattr(args, "demo", False)).close()


def demo_args(args) -> None:
    """--demo: the bundled organism with chat --demo's cap, over the demo folder's library."""
    from ..organism import weights_dir
    from ..organism.session import DEMO_BLOCK_SLOTS, DEMO_RESERVE

    if args.model or args.library:
        raise UserError("--demo serves the bundled organism over its own library; leave out --model and --library")
    folder = Path(os.environ.get("INFINIPOT_DEMO_DIR") or DEMO_DIR).expanduser()
    args.model, args.library, args.demo_videos = str(weights_dir()), str(folder / "library"), folder / "videos"
    args.kv_budget = args.kv_budget or 316  # chat --demo's: 18 pinned + 256 reserve + a quarter of 32 frames
    args.block_slots, args.reserve = args.block_slots or DEMO_BLOCK_SLOTS, DEMO_RESERVE
    args.served_model_name = args.served_model_name or "organism (bundled demo model)"


def write_demo_videos(folder: Path, count: int = 3) -> Path:
    """`count` held-out organism videos (32 frames at 2 fps, 84 x 84) as VP8 WebM, which browsers
    play, in `folder` (written once; kept for the next start). Returns the folder."""
    import cv2

    from ..organism import make_episode

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(count):
        path = folder / f"shapes-{seed + 1}.webm"
        if path.is_file():
            continue
        frames, fps, _ = make_episode(seed, split="test")  # (32, 84, 84, 3) RGB
        partial = path.with_name(f".{path.name}.partial.webm")
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"VP80"), fps, frames.shape[2:0:-1])
        if not writer.isOpened():
            raise UserError(f"this OpenCV cannot write WebM (VP8) videos to {folder}; --demo needs it")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        partial.replace(path)
    return folder


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a port in use is one line, not a
    traceback after the load (uvicorn serves on this socket)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as err:
        raise UserError(f"--host {host}: cannot listen there ({err.strerror or err}); give an address "
                        "of this machine, e.g. 127.0.0.1") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror or err}); is another server "
                        "using it? choose another --port") from None
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: check_args(args) or run(args), interrupted="")  # check_args returns None


def run(args) -> int:
    _blas.check_blas()
    roots = tuple(Path(f).expanduser().resolve() for f in args.allowed_local_media_path or [])
    with bind(args.host, args.port) as sock:  # before the model loads: a port in use is one line at once
        from ..server.engine import Engine
        from ..server.media import Limits

        engine = Engine(args, Limits(allowed_roots=roots, max_download_bytes=args.max_download_bytes))
        try:
            import uvicorn  # FastAPI and uvicorn once the model has loaded: a bad checkpoint fails without them

            from ..server.app import create_app

            app = create_app(engine, api_key=args.api_key, max_body_bytes=args.max_body_bytes)
            if args.demo:  # indexed in the background: the page shows the progress
                from ..server.web import start_index

                start_index(app, engine, write_demo_videos(args.demo_videos))
            capacity = engine.config.capacity or "no cap"
            if args.host not in LOOPBACK and not roots:
                print(f"warning: listening on {args.host} and reading any local file a request names; limit "
                      "that with --allowed-local-media-path DIR", file=sys.stderr)
            print(f"serving {engine.model_id} (KV cap {capacity} tokens, {args.backend}) on "
                  f"http://{args.host}:{args.port}/v1; the page: http://{args.host}:{args.port}/",
                  file=sys.stderr, flush=True)
            config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            engine.worker.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
