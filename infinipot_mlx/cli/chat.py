"""python -m infinipot_mlx.chat VIDEO: stream a video under a KV cap, then ask questions.

The CLI parses, prints and reports errors; the work is in session.py and the backends (mlx/, reference/).
Bad input of any kind (a errors.UserError) ends with one line on stderr and exit code 2;
anything else is a bug and keeps its traceback. Bad flags are refused before mlx, mlx-vlm
or torch is imported. Ctrl-C while streaming stops the video there and keeps what was
seen; Ctrl-C during an answer stops that answer; Ctrl-C at the prompt exits with 130.
"""

from __future__ import annotations

import argparse
import math
import sys

from .. import _blas  # noqa: F401  (optimized BLAS before mlx)
from ..config import METHODS
from ..errors import EXIT_INTERRUPTED, OneLineParser, UserError, report
from .console import answer, interactive, stream_frames

DEFAULT_CAPACITY = 6144
MIN_PIXELS = 28 * 28  # one merged visual token of every supported model


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m infinipot_mlx.chat",
        description="Stream a video into a memory-capped KV cache (InfiniPot-V), then ask questions.",
    )
    p.add_argument("video", nargs="?", help="video file, camera index (0) or stream URL")
    p.add_argument("--demo", action="store_true",
                   help="stream a synthetic video through the bundled trained organism (offline)")
    p.add_argument("--model", default=None,
                   help="local checkpoint folder or hub repo (default: mlx-community/Qwen2.5-VL-7B-Instruct-4bit; "
                        "with --backend reference: Qwen/Qwen2.5-VL-7B-Instruct)")
    p.add_argument("--backend", choices=("mlx", "reference"), default="mlx",
                   help="mlx (default) or the PyTorch reference")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="reference backend device")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="reference backend dtype (default: the checkpoint's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--kv-budget", type=int, default=None, metavar="TOKENS",
                        help="KV cache capacity in tokens per layer (default 6144)")
    budget.add_argument("--memory", default=None, metavar="GB|PCT",
                        help="memory budget, e.g. 6GB or 60%% of unified memory; sets the capacity")
    p.add_argument("--reserve", type=int, default=512, metavar="TOKENS",
                   help="room kept free under the cap for a question and its answer")
    p.add_argument("--block-frames", type=int, default=None, metavar="N",
                   help="temporal slots per block (Qwen2.5-VL: 2 sampled frames each); default: the "
                        "largest block, up to 8, that keeps at least as many frames as it brings")
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate in frames per second")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="pixel budget per frame (default 448x448 = 200704, shrunk to fit the cap)")
    p.add_argument("--method", choices=METHODS, default="infinipot_v",
                   help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    p.add_argument("--question", "-q", action="append", default=None,
                   help="ask this (repeatable); answers each in turn and exits")
    p.add_argument("--max-tokens", type=int, default=256, help="answer length cap")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    return p


def check_args(args) -> None:
    """Reject impossible flag values before anything heavy is loaded."""
    if not args.demo and args.video is None:
        raise UserError("give a video (file, camera index or URL), or --demo for the offline demo")
    for name in ("fps",):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive")
    for name in ("block_frames", "max_tokens", "kv_budget", "max_frames", "max_pixels"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.reserve < 0:
        raise UserError(f"--reserve must be 0 or more tokens, got {args.reserve}")
    if args.kv_budget is not None and METHODS[args.method].bounded and args.kv_budget <= args.reserve:
        raise UserError(f"--kv-budget {args.kv_budget} must be above the reserve (--reserve {args.reserve}, "
                        "the room kept for a question and its answer); raise --kv-budget or lower --reserve")
    if args.max_pixels is not None and args.max_pixels < MIN_PIXELS:
        raise UserError(f"--max-pixels {args.max_pixels} is below one visual token ({MIN_PIXELS} pixels, "
                        "28 x 28); use at least that")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("--temperature must be >= 0 and --top-p in (0, 1]")
    for q in args.question or []:
        if not q.strip():
            raise UserError("--question is empty; write a question about the video")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as err:
        return report(err)


# ----- running a session ---------------------------------------------------------------
def open_session(args, path: str, frame_hw: tuple[int, int] | None = None):
    """A StreamSession on the chosen backend, with the capacity from the flags (or --memory)."""
    from ..config import InfiniPotConfig

    capacity = None if not METHODS[args.method].bounded else (args.kv_budget or DEFAULT_CAPACITY)
    config = InfiniPotConfig(capacity=capacity, block_frames=args.block_frames, method=args.method,
                             reserve=args.reserve)
    if args.memory is not None:
        return open_budgeted_session(args, path, config, frame_hw)
    if args.backend == "reference":
        from ..reference.backend import load as load_reference

        return load_reference(path, config, fps=args.fps, device=args.device, dtype=args.dtype)
    from ..mlx.backend import load

    return load(path, config, fps=args.fps)


def open_budgeted_session(args, path: str, config, frame_hw: tuple[int, int] | None):
    """Load, plan --memory (weights measured, one block calibrated), print the plan, open."""
    import json
    from dataclasses import replace
    from functools import partial
    from pathlib import Path

    from ..budget import parse_budget
    from ..mlx.backend import load_model
    from ..mlx.memory import apply_memory_limits, memory_probe, plan_session
    from ..plan import DEFAULT_BLOCK_SLOTS
    from ..session import StreamSession

    if args.backend != "mlx" or not config.bounded or frame_hw is None:
        raise UserError("--memory plans an MLX session of a video with a compression method; "
                        "otherwise use --kv-budget")
    parse_budget(args.memory, memory_probe().total)  # a misspelt budget fails before loading
    model, tokenizer, spec, model_dir = load_model(path)
    make = partial(StreamSession, model, tokenizer, spec, fps=args.fps)  # make(InfiniPotConfig)
    plan = plan_session(args.memory, model, tokenizer, spec,
                        json.loads((Path(model_dir) / "config.json").read_text()), frame_hw=frame_hw,
                        block_frames=config.block_frames or DEFAULT_BLOCK_SLOTS, reserve=config.reserve,
                        make_session=make)
    apply_memory_limits(plan)
    print(plan.line())
    args.memory_plan = plan
    return make(replace(config, capacity=plan.capacity))


def model_path(args) -> str:
    """The local checkpoint folder (ModelPathError, a ValueError, when there is none)."""
    from ..model_path import resolve_model_path

    if args.model:
        return str(resolve_model_path(args.model))
    if args.backend == "reference":  # the original HF weights; no mlx import on torch-only machines
        from ..reference.backend import DEFAULT_MODEL
    else:
        from ..mlx.backend import DEFAULT_MODEL
    return str(resolve_model_path(DEFAULT_MODEL))


def seed(args) -> None:
    """Seed the sampler of the chosen backend (greedy decoding needs none)."""
    if args.backend == "reference":
        import torch

        torch.manual_seed(args.seed)
    else:
        import mlx.core as mx

        mx.random.seed(args.seed)


def open_video(args, spec):
    """The video source within the model's limits; fit_video sizes it for the session's cap."""
    from ..video import VideoSource

    return VideoSource.for_model(args.video, spec, fps=args.fps, max_frames=args.max_frames)


def fit_video(session, source, max_pixels: int | None) -> None:
    """Size the frames and the block for the cap (StreamSession.fit_frame_size)."""
    source.frame_size = session.fit_frame_size(source.source_size, max_pixels)


def stream_video(session, source) -> None:
    """Feed every sampled frame of a VideoSource, with its timestamp, to the session."""
    chunks = ((block.frames, block.timestamps) for block in source.blocks(session.frames_per_block))
    stream_frames(session, chunks, _expected_frames(source))


def _expected_frames(source) -> int | None:
    """Sampled frames the progress bar expects, when the container says how long it is."""
    estimate = None
    if source.duration is not None and source.fps:
        estimate = int(math.ceil(source.duration * source.fps))
    if source.max_frames is not None:
        estimate = min(estimate or source.max_frames, source.max_frames)
    return estimate


def run(args) -> int:
    from ..specs import load_spec

    _blas.check_blas()
    seed(args)
    if args.demo:
        from .demo import run_demo

        return run_demo(args)
    path = model_path(args)
    source = open_video(args, load_spec(path))  # bad videos fail before the model loads
    session = open_session(args, path, source.frame_size)
    fit_video(session, source, args.max_pixels)
    for q in args.question or []:
        session.check_question(q)  # a question that can never fit fails before streaming
    stream_video(session, source)
    if args.question:
        for q in args.question:
            print(f"Q: {q}")
            print("A: ", end="")
            answer(session, q, args)
    else:
        interactive(session, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
