"""python -m infinipot_mlx.parity: run the MLX and the PyTorch backends on the same frames and compare.

ALGORITHM.md section 9 is the contract: same checkpoint, frames, prompts and configuration
give the same kept (frame, patch) set per layer and head at every compression, logits within
1e-4 in float32, and the same greedy tokens. The video is read once (one VideoSource, one
resize), and the same numpy frames go to both sessions. The frames are split into one chunk
of whole blocks per question; each chunk is streamed and then its question is asked, so
every question after the first comes with new frames in between (multi-turn).

A kept-set difference of one or two tokens on a head, with logits still within 1e-4, is
the signature of a near-tie (two scores within float rounding, as in flat image regions);
the table says how many tokens differ per (layer, head).

This is the one module that loads both backends, each through its own session module.

Notation: H = KV heads, K = kept visual tokens per head, V = vocabulary.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..contract.config import DEFAULT_RESERVE, METHODS, InfiniPotConfig
from ..door import DEFAULT_FPS

EXIT_MISMATCH, EXIT_BAD_INPUT = 1, 2
LOGIT_TOL = 1e-4  # float32 contract
DEFAULT_QUESTIONS = ("What happened in the video?", "What changed after that?")
CRITERIA = """\
pass criteria:
  float32 (default): every compression keeps the same (frame, patch) set on every layer and
  head; the logits at every question and at every step of its answer agree within 1e-4;
  every greedy answer has the same tokens (--max-tokens of them, or up to the same end of
  answer). Any miss exits 1. Flat image regions (sky, walls, a plain background) give
  near-tied scores (value norms equal to ~1e-7 in layer 0), and float rounding can then swap
  one token for its twin: "differ: L0H1:1" (layer 0, head 1, one token) with every logit
  within 1e-4 is that case, not a selection bug; textured or noisy video avoids it.
  float16/bfloat16: the two backends round differently, so a near-tie in a score can keep
  another token and the answers can then drift apart. That is expected, so the differences
  are reported and do not fail the run; it exits 1 only on structural differences (not the
  same number of compressions, or not the same number of kept tokens per head).
"""


@dataclass
class Trace:
    """What one backend did: kept sets, question logits, greedy tokens and their logits."""

    kept_log: list  # per compression, per layer: (H, K, 2) int (frame, patch)
    question_logits: list = field(default_factory=list)  # per question: (V,)
    tokens: list = field(default_factory=list)  # per question: sampled ids (EOS included)
    step_logits: list = field(default_factory=list)  # per question: (steps, V)
    frames_before: list = field(default_factory=list)  # per question: frames streamed so far
    seconds: float = 0.0


class RecordingBackend:
    """Wraps a session's backend and records every sampled token and the logits it came from."""

    def __init__(self, inner):
        self.inner = inner
        self.tokens: list[int] = []
        self.logits: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def make_sampler(self, temperature: float, top_p: float):
        sample = self.inner.make_sampler(temperature, top_p)

        def record(logits) -> int:
            token = sample(logits)
            self.tokens.append(int(token))
            self.logits.append(self.inner.to_numpy(logits))
            return token

        return record

    def take(self) -> tuple[list[int], np.ndarray]:
        """The tokens and (steps, V) logits recorded since the last take."""
        tokens, logits = self.tokens, np.stack(self.logits) if self.logits else np.zeros((0, 0))
        self.tokens, self.logits = [], []
        return tokens, logits


def split_frames(frames: np.ndarray, n_parts: int, block: int) -> list[np.ndarray]:
    """Split (n, H, W, 3) frames into n_parts chunks of whole blocks (the last takes the rest)."""
    n_blocks = -(-len(frames) // block)
    bounds = [min(len(frames), block * (n_blocks * i // n_parts)) for i in range(n_parts + 1)]
    bounds[-1] = len(frames)
    return [frames[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def run_session(session, chunks: list[np.ndarray], questions: list[str], max_tokens: int) -> Trace:
    """Stream each chunk, then ask its question greedily; record everything parity needs."""
    recorder = RecordingBackend(session.backend)
    session.backend = recorder
    trace, seen, start = Trace(kept_log=session.kept_log), 0, time.perf_counter()
    for chunk, question in zip(chunks, questions):
        if len(chunk):
            session.add_frames(chunk)
            seen += len(chunk)
        trace.frames_before.append(seen)
        "".join(session.ask(question, max_tokens=max_tokens))
        trace.question_logits.append(np.asarray(session.question_logits, np.float32))
        tokens, logits = recorder.take()
        trace.tokens.append(tokens)
        trace.step_logits.append(logits)
    trace.seconds = time.perf_counter() - start
    session.backend = recorder.inner
    return trace


# ----- comparison -------------------------------------------------------------------------
def _as_sets(kept: np.ndarray) -> list[set]:
    """(H, K, 2) (frame, patch) -> one set of pairs per head."""
    return [set(map(tuple, head.tolist())) for head in kept]


def compare_kept(mlx_log: list, ref_log: list) -> list[dict]:
    """One row per compression: K per head, and the (layer, head) pairs that keep different sets,
    as 'L{layer}H{head}:{tokens kept by MLX only}'."""
    rows = []
    for i in range(max(len(mlx_log), len(ref_log))):
        if i >= len(mlx_log) or i >= len(ref_log):
            rows.append(dict(index=i + 1, keep=None, layers=0, differ=["missing on one backend"]))
            continue
        differ, keep = [], {layer.shape[1] for layer in mlx_log[i] + ref_log[i]}
        for layer_idx, (a, b) in enumerate(zip(mlx_log[i], ref_log[i])):
            if a.shape != b.shape:
                differ.append(f"L{layer_idx}: shapes {a.shape} vs {b.shape}")
                continue
            differ += [f"L{layer_idx}H{h}:{len(x - y)}" for h, (x, y) in enumerate(zip(_as_sets(a), _as_sets(b)))
                       if x != y]
        rows.append(dict(index=i + 1, keep=sorted(keep), layers=len(mlx_log[i]), differ=differ))
    return rows


def compare_question(mlx: Trace, ref: Trace, q: int) -> dict:
    """Logit gap at the question, greedy agreement, and the logit gap along the shared answer."""
    a, b = mlx.tokens[q], ref.tokens[q]
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    steps = mlx.step_logits[q][:same + 1], ref.step_logits[q][:same + 1]  # up to the first split
    n = min(len(steps[0]), len(steps[1]))
    return dict(
        index=q + 1, frames=mlx.frames_before[q],
        logit_diff=float(np.abs(mlx.question_logits[q] - ref.question_logits[q]).max()),
        answer_diff=float(np.abs(steps[0][:n] - steps[1][:n]).max()) if n else 0.0,
        agree=same, tokens=(len(a), len(b)), equal=a == b,
    )


@dataclass
class Report:
    compressions: list
    questions: list
    dtype: str
    ok: bool
    strict: bool


def compare(mlx: Trace, ref: Trace, dtype: str = "float32", tol: float = LOGIT_TOL) -> Report:
    """Compare two traces; strict (float32) checks everything, half precision only structure."""
    rows = compare_kept(mlx.kept_log, ref.kept_log)
    questions = [compare_question(mlx, ref, q) for q in range(len(mlx.tokens))]
    structural = all(r["keep"] is not None and len(r["keep"]) == 1 for r in rows)
    strict = dtype == "float32"
    exact = all(not r["differ"] for r in rows) and all(
        q["equal"] and q["logit_diff"] <= tol and q["answer_diff"] <= tol for q in questions)
    return Report(rows, questions, dtype, structural and (exact or not strict), strict)


def format_report(report: Report, mlx: Trace, ref: Trace) -> str:
    """The tables printed by the CLI."""
    yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
    lines = [f"compressions ({len(report.compressions)}): kept (frame, patch) sets, MLX vs reference",
             f"  {'#':>3}  {'K/head':>7}  {'layers':>6}  same on every layer and head"]
    for r in report.compressions:
        keep = "?" if r["keep"] is None else "/".join(map(str, r["keep"]))
        detail = "" if not r["differ"] else f"  differ: {', '.join(r['differ'][:8])}"
        lines.append(f"  {r['index']:>3}  {keep:>7}  {r['layers']:>6}  {yes(not r['differ'])}{detail}")
    lines += ["questions (multi-turn; frames = sampled frames streamed before the question)",
              f"  {'#':>3}  {'frames':>6}  {'max|dlogit| q':>13}  {'max|dlogit| ans':>15}  greedy tokens"]
    for q in report.questions:
        greedy = f"{q['agree']}/{max(q['tokens'])} same" + ("" if q["equal"] else f" (lengths {q['tokens']})")
        lines.append(f"  {q['index']:>3}  {q['frames']:>6}  {q['logit_diff']:>13.2e}  "
                     f"{q['answer_diff']:>15.2e}  {greedy}")
    rule = "within 1e-4, same sets and tokens" if report.strict else "structure only (see --help)"
    lines.append(f"time: MLX {mlx.seconds:.1f}s, reference {ref.seconds:.1f}s | dtype {report.dtype} | "
                 f"criterion: {rule} | {'PASS' if report.ok else 'FAIL'}")
    return "\n".join(lines)


# ----- running both backends ----------------------------------------------------------------
def make_config(args) -> InfiniPotConfig:
    capacity = None if not METHODS[args.method].bounded else args.kv_budget
    return InfiniPotConfig(capacity=capacity, block_slots=args.block_slots, method=args.method,
                           reserve=args.reserve, tar_ratio=args.tar_ratio, van_pooling=args.van_pooling)


def open_sessions(args, config: InfiniPotConfig):
    """(MLX session, reference session) on the same checkpoint, both recording kept sets."""
    from ..mlx import backend as mlx_session
    from ..reference import backend as ref_session
    from ..stream.session import StreamSession

    kwargs = dict(fps=args.fps, record_kept=True)
    model, tokenizer, spec, _ = mlx_session.load_model(args.model)
    if args.dtype is not None:
        _cast_mlx_model(model, args.dtype)
    mlx = StreamSession(model, tokenizer, spec, config, mlx_session.MLXBackend(), **kwargs)
    ref = ref_session.load(args.model, config, device=args.device, dtype=args.dtype, **kwargs)
    return mlx, ref


def _cast_mlx_model(model, dtype: str) -> None:
    """Cast the mlx-vlm model's floating weights to dtype (what --dtype does to the reference)."""
    import mlx.core as mx

    model.set_dtype(getattr(mx, dtype))


def open_video(args, spec):
    """The video source (a bad video fails here, before the models load); not yet read."""
    from ..video.source import VideoSource

    return VideoSource.for_model(args.video, spec, fps=args.fps, max_frames=args.max_frames)


def read_frames(source, sessions, max_pixels: int | None) -> np.ndarray:
    """Every sampled frame, sized for the cap as chat sizes it (fit_frame_size, the same in
    both sessions), read and resized once: (n, H, W, 3) uint8 RGB."""
    sizes = {session.fit_frame_size(source.source_size, max_pixels) for session in sessions}
    assert len(sizes) == 1, f"the backends fit different frame sizes: {sizes}"
    source.frame_size = sizes.pop()
    frames, _ = source.read()
    return frames


def build_parser() -> argparse.ArgumentParser:
    from ..errors import OneLineParser

    p = OneLineParser(
        prog="python -m infinipot_mlx.parity", epilog=CRITERIA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the MLX and the PyTorch reference backends on the same video frames and "
                    "compare kept sets, logits and greedy answers (ALGORITHM.md section 9).")
    p.add_argument("--model", required=True, help="checkpoint folder in the Hugging Face layout (float32 for exact parity)")
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--kv-budget", type=int, default=1024, metavar="N", help="KV capacity in tokens per layer")
    p.add_argument("--reserve", type=int, default=DEFAULT_RESERVE, metavar="N", help="room kept for a question and its answer")
    p.add_argument("--method", choices=METHODS, default="infinipot_v",
                   help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()))
    p.add_argument("--tar-ratio", type=float, default=0.5, help="TaR share (1: TaR only, 0: VaN only)")
    p.add_argument("--van-pooling", action="store_true", help="layer-adaptive VaN pooling")
    p.add_argument("--block-slots", "--block-frames", type=int, default=2, metavar="N",
                   help="temporal slots per block (--block-frames: its name before 0.2)")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help="sampling rate in frames per second")
    p.add_argument("--max-frames", type=int, default=32, metavar="N", help="sampled frames to use")
    p.add_argument("--max-pixels", type=int, default=None, help="pixel budget per frame")
    p.add_argument("--questions", nargs="+", default=list(DEFAULT_QUESTIONS),
                   help="questions, asked in turn with new frames streamed before each")
    p.add_argument("--max-tokens", type=int, default=20, help="greedy tokens compared per answer")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="reference device")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="both backends' dtype (default: the checkpoint's)")
    return p


def run(args) -> int:
    from ..contract.model_path import resolve_model_path
    from ..contract.specs import load_spec

    config = make_config(args)
    spec = load_spec(resolve_model_path(args.model))
    source = open_video(args, spec)  # a bad video fails before the models load
    mlx_session, ref_session = open_sessions(args, config)
    frames = read_frames(source, (mlx_session, ref_session), args.max_pixels)
    block = mlx_session.frames_per_block
    chunks = split_frames(frames, len(args.questions), block)
    print(f"{len(frames)} frames of {frames.shape[1]}x{frames.shape[2]}, {len(chunks)} turns, "
          f"capacity {config.capacity}, method {config.method}", flush=True)
    mlx = run_session(mlx_session, chunks, args.questions, args.max_tokens)
    ref = run_session(ref_session, chunks, args.questions, args.max_tokens)
    dtype = args.dtype or str(ref_session.adapter.lm.embed_tokens.weight.dtype).removeprefix("torch.")
    report = compare(mlx, ref, dtype)
    print(format_report(report, mlx, ref))
    return 0 if report.ok else EXIT_MISMATCH


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on parity, 1 on a mismatch, 2 (one line on stderr) on input the user can fix."""
    from .._blas import check_blas
    from ..errors import UserError, report

    args = build_parser().parse_args(argv)
    try:
        check_blas()
        if args.max_tokens < 1 or args.block_slots < 1 or args.max_frames < 1 or args.fps <= 0 \
                or (args.max_pixels is not None and args.max_pixels < 1):
            raise UserError("--max-tokens, --block-slots, --max-frames, --fps and --max-pixels "
                            "must be positive")
        if any(not q.strip() for q in args.questions):
            raise UserError("a question is empty; write a question about the video")
        return run(args)
    except (UserError, OSError) as err:  # anything else is a bug: keep its traceback
        return report(err)


if __name__ == "__main__":
    sys.exit(main())
