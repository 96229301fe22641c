"""The one door: the session flags, opening a session, and streaming a source into it.

Every front end (chat, the server, the library, the benchmarks, the examples) goes through
here, as mlx-lm's generate/chat/server all call one load() and one stream_generate():

- add_session_flags(parser) adds the flags they share; check_session_args(args) refuses bad
  values with one line each, before anything heavy is imported; check_output_path does the
  same for a file to be written (--save, --memory-map).
- model_path, session_config, read_memory and use_memory_settings, open_session (with the
  --memory plan, MLX), load_model (the server's shared model) and open_stream (chat's whole
  opening: a fresh session, a saved memory, or a memory plus a new video) open sessions.
- stream_source(session, source, ...) and feed(session, chunks, ...) stream frames, with hooks
  for progress (`on_chunk`) and for work between blocks that may stop the stream (`between`).

Nothing here prints except through the `say` hooks, and mlx, torch and the video decoder are
imported only inside the functions that need them (`--help` and bad flags stay light).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from .contract.budget import parse_budget, parse_size  # noqa: F401  (parse_size: the one size parser)
from .contract.config import (DEFAULT_CAPACITY, DEFAULT_FPS, DEFAULT_KV_GROUP_SIZE, DEFAULT_RESERVE,
                              KV_BITS, KV_GROUP_SIZES, METHODS)
from .errors import UserError
# the one streaming loop lives with the session, so StreamSession.add_video (the Python API) and
# every front end feed a source the same way; the door hands it on
from .stream.feed import feed, stream_source  # noqa: F401

MIN_PIXELS = 28 * 28  # one merged visual token of every supported model
MAX_CAPACITY = 2**31 - 1  # cache rows and positions are 32-bit integers; the model's own range is checked too


# ----- flags -----------------------------------------------------------------------------------
def add_session_flags(p: argparse.ArgumentParser, *, model_help: str | None = None,
                      fps_help: str | None = None, stream_flags: bool = True) -> None:
    """Add the flags every front end shares: the checkpoint, backend, cap, block, sampling and
    method. `stream_flags`: also --max-frames (a front end that streams whole files)."""
    p.add_argument("--model", default=None, help=model_help or (
        "local checkpoint folder or hub repo (default: mlx-community/Qwen2.5-VL-7B-Instruct-4bit; "
        "with --backend reference: Qwen/Qwen2.5-VL-7B-Instruct)"))
    p.add_argument("--backend", choices=("mlx", "reference"), default="mlx",
                   help="mlx (default) or the PyTorch reference")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="reference backend device")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="reference backend dtype (default: the checkpoint's)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--kv-budget", type=int, default=None, metavar="TOKENS",
                        help=f"KV cache capacity in tokens per layer (default {DEFAULT_CAPACITY})")
    budget.add_argument("--memory", default=None, metavar="SIZE|PCT",
                        help="memory budget (MLX), e.g. 6GB, 512MB or 60%% of memory; sets the capacity "
                             "(a bare number is refused: give its unit)")
    p.add_argument("--reserve", type=int, default=DEFAULT_RESERVE, metavar="TOKENS",
                   help=f"room kept free under the cap for a question and its answer (default {DEFAULT_RESERVE})")
    p.add_argument("--block-slots", "--block-frames", type=int, default=None, metavar="N",
                   help="temporal slots per block (Qwen2.5-VL: 2 sampled frames each); default: the "
                        "largest block, up to 8, that keeps at least as many slots as it brings; "
                        "--block-frames is its name before 0.2")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS,
                   help=fps_help or f"sampling rate in frames per second (default {DEFAULT_FPS:g})")
    if stream_flags:
        p.add_argument("--max-frames", type=int, default=None, help="stop after this many sampled frames")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="pixel budget per frame (default 448x448 = 200704, shrunk to fit the cap)")
    p.add_argument("--method", choices=METHODS, default="infinipot_v",
                   help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    p.add_argument("--kv-bits", type=int, choices=KV_BITS, default=None,
                   help="store the cached keys and values at 4 or 8 bits (mlx-lm's affine quantization; "
                        "a 4-bit cache holds ~3.5x the tokens of a 16-bit one in the same memory); "
                        "default: the model's dtype")
    p.add_argument("--kv-group-size", type=int, choices=KV_GROUP_SIZES, default=DEFAULT_KV_GROUP_SIZE,
                   help=f"elements per quantization group along the head dimension (default {DEFAULT_KV_GROUP_SIZE})")
    p.add_argument("--quantized-kv-start", type=int, default=0, metavar="TOKENS",
                   help="with --kv-bits: quantize once the cache holds this many tokens (default 0: "
                        "from the first token, which a --memory plan needs)")


def check_session_args(args) -> None:
    """Refuse impossible values of the shared flags, one line each, before anything loads."""
    if not args.fps > 0:
        raise UserError(f"--fps must be positive, got {args.fps}")
    for name in ("block_slots", "kv_budget", "max_frames", "max_pixels"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.reserve < 0:
        raise UserError(f"--reserve must be 0 or more tokens, got {args.reserve}")
    if args.kv_budget is not None and args.kv_budget > MAX_CAPACITY:
        raise UserError(f"--kv-budget {args.kv_budget} is beyond any cache (at most {MAX_CAPACITY} tokens, "
                        "and no model places that many); give the cap in tokens per layer, e.g. 6144")
    if args.kv_budget is not None and METHODS[args.method].bounded and args.kv_budget <= args.reserve:
        raise UserError(f"--kv-budget {args.kv_budget} must be above the reserve (--reserve {args.reserve}, "
                        "the room kept for a question and its answer); raise --kv-budget or lower --reserve")
    if args.max_pixels is not None and args.max_pixels < MIN_PIXELS:
        raise UserError(f"--max-pixels {args.max_pixels} is below one visual token ({MIN_PIXELS} pixels, "
                        "28 x 28); use at least that")
    if getattr(args, "quantized_kv_start", 0) < 0:
        raise UserError(f"--quantized-kv-start must be 0 or more tokens, got {args.quantized_kv_start}")
    if args.memory is not None:
        if args.backend != "mlx" or not METHODS[args.method].bounded:
            raise UserError("--memory plans an MLX session with a compression method; otherwise use --kv-budget")
        if getattr(args, "kv_bits", None) is not None and getattr(args, "quantized_kv_start", 0):
            raise UserError("--memory plans a cache quantized from its first token; drop --quantized-kv-start "
                            "or give the cap with --kv-budget")
        parse_budget(args.memory, machine_memory())


def check_output_path(flag: str, path: str, suffix: str | None = None) -> str:
    """`path` for a file to be written (with `suffix` added when it has none), refused now, not
    after streaming, when it names a folder or its folder is missing or not writable."""
    out = Path(path).expanduser()
    if suffix and not out.suffix:
        out = out.with_name(out.name + suffix)
    folder = out.resolve().parent
    if out.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path in it")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"{flag} {path}: the folder {folder} does not exist or is not writable; "
                        "choose a writable path")
    return str(out)


def machine_memory() -> int:
    """Bytes of memory on this machine (what a percentage is of), read without mlx."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# ----- opening a session -------------------------------------------------------------------------
def model_path(args, saved: dict | None = None) -> str:
    """The local checkpoint folder (ModelPathError, a UserError, when there is none); with a
    saved memory and no --model, the folder the memory was made with."""
    from .contract.model_path import DEFAULT_MODELS, resolve_model_path

    if args.model:
        return str(resolve_model_path(args.model))
    if saved is not None:
        return str(resolve_model_path(saved["model_path"], flag="--model"))
    return str(resolve_model_path(DEFAULT_MODELS[args.backend]))  # reference: the original HF weights


def session_config(args):
    """The InfiniPotConfig of the flags (the default cap when --kv-budget is not given)."""
    from .contract.config import InfiniPotConfig

    capacity = (args.kv_budget or DEFAULT_CAPACITY) if METHODS[args.method].bounded else None
    return InfiniPotConfig(capacity=capacity, block_slots=args.block_slots, method=args.method,
                           reserve=args.reserve, kv_bits=getattr(args, "kv_bits", None),
                           kv_group_size=getattr(args, "kv_group_size", DEFAULT_KV_GROUP_SIZE),
                           quantized_kv_start=getattr(args, "quantized_kv_start", 0))


def settings_key(args, config) -> str:
    """The library's settings key (library.settings_json) of a session opened with these flags:
    under --memory the capacity is the budget's plan, so the budget is recorded instead."""
    from dataclasses import asdict

    from .library import settings_json

    recorded = dict(asdict(config), capacity=None) if args.memory is not None else asdict(config)
    return settings_json(recorded, args.fps, args.max_pixels, args.backend, dtype=args.dtype,
                         memory=args.memory, max_frames=getattr(args, "max_frames", None))


def read_memory(path: str, backend: str):
    """(metadata, tensors) of a saved memory; a damaged or foreign file fails before any model loads."""
    from .stream import memory_file as memories

    saved, tensors = memories.read(path)
    memories.check_backend(saved, backend, path)
    return saved, tensors


def use_memory_settings(args, saved: dict) -> None:
    """A saved memory's settings win over the flags: its cap, block, method, reserve and fps
    (so a new video is sampled at the memory's rate)."""
    config = saved["config"]
    args.kv_budget, args.block_slots = config["capacity"], config["block_slots"]
    args.method, args.reserve, args.fps = config["method"], config["reserve"], saved["fps"]
    args.kv_bits = config.get("kv_bits")  # a memory from before 0.4 has full-precision KV
    args.kv_group_size = config.get("kv_group_size", DEFAULT_KV_GROUP_SIZE)
    args.quantized_kv_start = config.get("quantized_kv_start", 0)
    args.saved_config = config


def check_against_model(args, spec) -> None:
    """Refuse, before the model loads, flags this model cannot honour: a --kv-budget beyond the
    positions it can give (its max_position_embeddings), and a --kv-group-size that does not
    divide its head dimension (with --kv-bits)."""
    capacity = args.kv_budget
    if capacity is not None and spec.max_positions and capacity > spec.max_positions:
        raise UserError(f"--kv-budget {capacity} is more than the {spec.max_positions} positions this model can "
                        f"place, so the cap could never be reached; use at most {spec.max_positions}")
    if getattr(args, "kv_bits", None) is not None:
        session_config(args).check_head_dim(spec.head_dim)


def seed(args) -> None:
    """Seed the sampler of the chosen backend (the first mlx or torch import)."""
    if args.backend == "reference":
        from .reference.backend import seed as seed_reference

        seed_reference(args.seed)
    else:
        from .mlx.backend import seed as seed_mlx

        seed_mlx(args.seed)


def open_session(args, path: str, frame_hw: tuple[int, int] | None = None, say=print):
    """A StreamSession on the chosen backend with the flags' settings (or a saved memory's, after
    use_memory_settings); --memory plans the capacity for frames of `frame_hw` (default: square
    frames of the default pixel budget, or the model's fixed size), MLX only."""
    from .contract.config import InfiniPotConfig

    config = session_config(args)
    if getattr(args, "saved_config", None) is not None:
        config = InfiniPotConfig(**args.saved_config)
    if args.memory is not None:
        return open_budgeted_session(args, path, config, frame_hw or default_frame_hw(path, args.max_pixels), say)
    return open_with(args.backend, path, config, args.fps, args.device, args.dtype)


def open_with(backend: str, path, config, fps: float, device: str = "auto", dtype: str | None = None):
    """A StreamSession of `config` on `backend` for the checkpoint folder `path` (no planning)."""
    if backend == "reference":
        from .reference.backend import load as load_reference

        return load_reference(str(path), config, fps=fps, device=device, dtype=dtype)
    from .mlx.backend import load

    return load(str(path), config, fps=fps)


def default_frame_hw(path: str, max_pixels: int | None = None) -> tuple[int, int]:
    """The frame size --memory plans for when no video is known yet: the model's fixed size,
    else a square of --max-pixels or the default pixel budget (448 x 448), in whole tokens."""
    from .contract.specs import DEFAULT_FRAME_PIXELS, load_spec

    spec = load_spec(path)
    step = spec.pixels_per_token
    side = max(step, int((max_pixels or DEFAULT_FRAME_PIXELS) ** 0.5) // step * step)
    return tuple(spec.frame_size or (side, side))


def open_budgeted_session(args, path: str, config, frame_hw: tuple[int, int] | None, say=print):
    """Load, plan --memory (weights measured, one block calibrated), say the plan, open."""
    import json
    from dataclasses import replace
    from functools import partial

    from .contract.plan import DEFAULT_BLOCK_SLOTS
    from .mlx.backend import load_model as load_mlx
    from .mlx.memory_probe import apply_memory_limits, plan_session
    from .stream.session import StreamSession

    if args.backend != "mlx" or not config.bounded:
        raise UserError("--memory plans an MLX session of a video with a compression method; "
                        "otherwise use --kv-budget")
    model, tokenizer, spec, model_dir = load_mlx(path)
    make = partial(StreamSession, model, tokenizer, spec, fps=args.fps, model_dir=model_dir)  # make(config)
    plan = plan_session(args.memory, model, tokenizer, spec,
                        json.loads((Path(model_dir) / "config.json").read_text()), frame_hw=frame_hw,
                        block_slots=config.block_slots or DEFAULT_BLOCK_SLOTS, reserve=config.reserve,
                        make_session=make, kv_bits=config.kv_bits, kv_group_size=config.kv_group_size)
    apply_memory_limits(plan)
    say(plan.line())
    args.memory_plan = plan
    return make(replace(config, capacity=plan.capacity))


def load_model(args, path: str, say=print):
    """(model, tokenizer, spec, config) shared by many sessions (the server); --memory plans
    the capacity as open_session does."""
    if args.memory is not None:
        probe = open_session(args, path, None, say)
        return probe.adapter.model, probe.adapter.tokenizer, probe.spec, probe.config
    if args.backend == "reference":
        from .reference.backend import load_model as load_reference

        model, tokenizer, spec, _ = load_reference(path, device=args.device, dtype=args.dtype)
    else:
        from .mlx.backend import load_model as load_mlx

        model, tokenizer, spec, _ = load_mlx(path)
    return model, tokenizer, spec, session_config(args)


def open_source(args, spec, video=None):
    """The VideoSource of `video` (default args.video) within the model's limits, at args.fps;
    fit_source sizes its frames once the session's cap is known."""
    from .video.source import VideoSource

    return VideoSource.for_model(args.video if video is None else video, spec, fps=args.fps,
                                 max_frames=getattr(args, "max_frames", None))


def fit_source(session, source, max_pixels: int | None) -> None:
    """Size the frames and the block for the cap (StreamSession.fit_frame_size)."""
    source.frame_size = session.fit_frame_size(source.source_size, max_pixels)


@dataclass
class Opened:
    """What open_stream opened: the session, the video source (None without a video), the
    saved memory's metadata (None without --load) and the checkpoint folder."""

    session: object
    source: object | None
    saved: dict | None
    path: str


def open_stream(args, say=print) -> Opened:
    """Chat's opening, every check before the model loads: the saved memory (--load; its
    settings win), the checkpoint, the cap against the model, the video (at the memory's fps
    when there is one); then the session, the memory restored, the frames sized for the cap."""
    from .contract.specs import load_spec
    from .stream import memory_file as memories

    saved = tensors = None
    if getattr(args, "load", None) is not None:
        saved, tensors = read_memory(args.load, args.backend)
        use_memory_settings(args, saved)
    path = model_path(args, saved)
    spec = load_spec(path)
    check_against_model(args, spec)
    source = open_source(args, spec) if args.video is not None else None
    seed(args)  # the first mlx (or torch) import: after the memory, checkpoint and video are checked
    session = open_session(args, path, source.frame_size if source else None, say)
    if saved is not None:
        memories.check_model(saved, memories.identity(session), args.load)
        memories.restore(session, saved, tensors)
    if source is not None:
        fit_source(session, source, args.max_pixels)
    return Opened(session, source, saved, path)
