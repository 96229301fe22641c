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
import os
import sys
from pathlib import Path

from .. import _blas  # noqa: F401  (optimized BLAS before mlx)
from ..stream import memory_file as memories
from ..contract.config import METHODS
from ..errors import OneLineParser, UserError, run_command
from .console import PromptLines, answer, handle, interactive, stream_frames

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
    p.add_argument("--block-slots", "--block-frames", type=int, default=None, metavar="N",
                   help="temporal slots per block (Qwen2.5-VL: 2 sampled frames each); default: the "
                        "largest block, up to 8, that keeps at least as many slots as it brings; "
                        "--block-frames is its name before 0.2")
    p.add_argument("--fps", type=float, default=2.0, help="sampling rate in frames per second")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    p.add_argument("--realtime", action="store_true",
                   help="play a file at its own speed, as a camera would: frames the model cannot keep up "
                        "with are dropped (cameras and stream URLs always are)")
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
    p.add_argument("--save", default=None, metavar="MEM",
                   help="save the video memory to MEM after streaming and after every answer")
    p.add_argument("--load", default=None, metavar="MEM",
                   help="continue from a saved video memory: ask with no video, or stream more")
    p.add_argument("--evidence", action="store_true",
                   help="after each answer, print the moments (mm:ss) it rests on, with their share")
    p.add_argument("--memory-map", default=None, metavar="PNG",
                   help="draw what the memory keeps (kept tokens per second and layer) after streaming")
    return p


def check_args(args) -> None:
    """Reject impossible flag values before anything heavy is loaded."""
    if not args.demo and args.video is None and args.load is None:
        raise UserError("give a video (file, camera index or URL), --load MEM (a saved memory), "
                        "or --demo for the offline demo")
    if args.save is not None:  # found out before streaming, so that nothing streamed is lost
        folder = Path(args.save).expanduser().resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"--save {args.save}: the folder {folder} does not exist or is not writable; "
                            "choose a writable path")
    if args.load is not None and (args.memory is not None or args.demo):
        raise UserError("--load continues a saved memory with its own settings; drop --memory / --demo")
    for name in ("fps",):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive")
    for name in ("block_slots", "max_tokens", "kv_budget", "max_frames", "max_pixels"):
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
    return run_command(lambda: check_args(args) or run(args))  # check_args returns None


# ----- running a session ---------------------------------------------------------------
def open_session(args, path: str, frame_hw: tuple[int, int] | None = None, saved: dict | None = None):
    """A StreamSession on the chosen backend, with the capacity from the flags (or --memory),
    or with a saved memory's settings (`saved`: its metadata)."""
    from ..contract.config import InfiniPotConfig

    capacity = None if not METHODS[args.method].bounded else (args.kv_budget or DEFAULT_CAPACITY)
    config = InfiniPotConfig(capacity=capacity, block_slots=args.block_slots, method=args.method,
                             reserve=args.reserve)
    if saved is not None:
        config, args.fps = InfiniPotConfig(**saved["config"]), saved["fps"]
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

    from ..contract.budget import parse_budget
    from ..mlx.backend import load_model
    from ..mlx.memory_probe import apply_memory_limits, memory_probe, plan_session
    from ..contract.plan import DEFAULT_BLOCK_SLOTS
    from ..stream.session import StreamSession

    if args.backend != "mlx" or not config.bounded or frame_hw is None:
        raise UserError("--memory plans an MLX session of a video with a compression method; "
                        "otherwise use --kv-budget")
    parse_budget(args.memory, memory_probe().total)  # a misspelt budget fails before loading
    model, tokenizer, spec, model_dir = load_model(path)
    make = partial(StreamSession, model, tokenizer, spec, fps=args.fps)  # make(InfiniPotConfig)
    plan = plan_session(args.memory, model, tokenizer, spec,
                        json.loads((Path(model_dir) / "config.json").read_text()), frame_hw=frame_hw,
                        block_slots=config.block_slots or DEFAULT_BLOCK_SLOTS, reserve=config.reserve,
                        make_session=make)
    apply_memory_limits(plan)
    print(plan.line())
    args.memory_plan = plan
    return make(replace(config, capacity=plan.capacity))


def model_path(args, saved: dict | None = None) -> str:
    """The local checkpoint folder (ModelPathError, a ValueError, when there is none); with a
    saved memory and no --model, the folder the memory was made with."""
    from ..contract.model_path import DEFAULT_MODELS, resolve_model_path

    if args.model:
        return str(resolve_model_path(args.model))
    if saved is not None:
        return str(resolve_model_path(saved["model_path"], flag="--model"))
    return str(resolve_model_path(DEFAULT_MODELS[args.backend]))  # reference: the original HF weights


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
    from ..video.source import VideoSource

    return VideoSource.for_model(args.video, spec, fps=args.fps, max_frames=args.max_frames)


def fit_video(session, source, max_pixels: int | None) -> None:
    """Size the frames and the block for the cap (StreamSession.fit_frame_size)."""
    source.frame_size = session.fit_frame_size(source.source_size, max_pixels)


def stream_video(session, source, name=None, realtime: bool = False, between=None) -> None:
    """Feed every sampled frame of a VideoSource, with its timestamp, to the session, as a
    video segment of its own (named, with its content hash, in a saved memory). A reader
    thread decodes ahead (reader.py); a live source drops what the model cannot keep up with."""
    from ..video.reader import FrameReader

    session.begin_video(name if name is not None else source)
    block = session.frames_per_block
    reader = FrameReader(source, live=source.kind != "file", realtime=realtime, depth=2 * block)
    stream_frames(session, reader.chunks(block), _expected_frames(source), reader, between)


def answer_typed(session, args, lines, after_answer):
    """`between` for stream_video: answer the lines typed so far (console.handle), then let
    the stream go on; False (stop streaming) after /quit. The end of input does not stop it."""
    ended = []

    def between(bar) -> bool:
        for line in [] if ended else lines.typed():
            if line is None or line in ("/quit", "/exit"):
                lines.queue.put(line)  # the prompt after the stream sees it too, and leaves
                ended.append(line)
                return line is None
            bar.clear()
            print(f"Q (at frame {session.counters.frames_seen}): {line}")
            handle(session, line, args, after_answer)
            bar.refresh()
        return True
    return between


def _expected_frames(source) -> int | None:
    """Sampled frames the progress bar expects, when the container says how long it is."""
    estimate = None
    if source.duration is not None and source.fps:
        estimate = int(math.ceil(source.duration * source.fps))
    if source.max_frames is not None:
        estimate = min(estimate or source.max_frames, source.max_frames)
    return estimate


def run(args) -> int:
    from ..contract.specs import load_spec

    _blas.check_blas()
    if args.demo:
        from .demo import run_demo

        seed(args)
        return run_demo(args)
    saved = tensors = None
    if args.load is not None:  # a damaged or foreign file fails before the model loads
        saved, tensors = memories.read(args.load)
        memories.check_backend(saved, args.backend, args.load)
    path = model_path(args, saved)
    source = open_video(args, load_spec(path)) if args.video is not None else None
    seed(args)  # the first mlx (or torch) import: after the memory, checkpoint and video are checked
    session = open_session(args, path, source.frame_size if source else None, saved)
    session.record_evidence = True  # cheap: the question's last token only (evidence.py)
    if saved is not None:
        memories.check_model(saved, memories.identity(session), args.load)
        memories.restore(session, saved, tensors)
        print(memories.summary(saved, args.load))
    if source is not None:
        fit_video(session, source, args.max_pixels)
    for q in args.question or []:
        session.check_question(q)  # a question that can never fit fails before streaming
    live = source is not None and (source.kind != "file" or args.realtime or sys.stdin.isatty())
    lines = PromptLines() if live and not args.question else None  # questions typed while streaming
    if source is not None:
        between = answer_typed(session, args, lines, lambda: save_memory(session, args)) if lines else None
        stream_video(session, source, args.video, args.realtime, between)
    save_memory(session, args)
    if args.memory_map is not None:
        from ..stream.evidence import memory_map

        print(f"memory map drawn to {memory_map(session, args.memory_map)}", file=sys.stderr)
    if args.question:
        for q in args.question:
            print(f"Q: {q}")
            print("A: ", end="")
            answer(session, q, args)
            save_memory(session, args)
    else:
        interactive(session, args, after_answer=lambda: save_memory(session, args), lines=lines)
    return 0


def save_memory(session, args, path: str | None = None) -> None:
    """Save the session's memory to `path` (or --save, when given) and say so."""
    path = path or args.save
    if path is not None:
        saved = session.save(path)
        print(f"memory saved to {saved} ({saved.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
