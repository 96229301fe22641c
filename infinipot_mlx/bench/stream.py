"""Stream a synthetic video through a random model (Qwen2.5-VL by default): memory, ms per frame, decode speed.

`python -m infinipot_mlx.bench stream [--size tiny|mid] [--model-type TYPE] [--out DIR]` streams
the same frames, block by block, through the same loop (session.StreamSession: our adapter,
explicit positions) once per method, from 1x to 10x the visual capacity:
- full: our StreamCache, never compressed (the uncapped reference);
- infinipot_v, uniform, sliding_window: our StreamCache under InfiniPotConfig(capacity);
- infinipot_v_kv8 / infinipot_v_kv4: the same at --kv-bits 8 / 4 (same token cap, fewer bytes;
  mlx-lm's comparison then runs over its own QuantizedKVCache holding the same packed rows);
- mlx_vlm_rotating / mlx_vlm_quant8: mlx-vlm's RotatingKVCache at the same token cap and
  QuantizedKVCache at 8 bits with no cap (vlm_caches.py), run with method "full".
At each point (a multiple of the visual capacity) it records memory (peak while streaming,
reset per point; active), cached tokens, ms per sampled frame of vision, prefill and
compression since the previous point, the compression share of stream time, then asks a
question: time to first token and decode tokens/s, and, on the same language model and a
KV cache of the same length, the decode rate of mlx-lm's generate_step (its pipelined loop)
for the same number of tokens. Decoding is greedy and the bench's
backend reports no end-of-sequence id, so every answer is exactly answer_tokens long.
The question and answer stay pinned in the cache, as in a real multi-turn stream; the
capacity leaves room for all of them (text_room) besides the visual capacity.
--model-type (default qwen2_5_vl; specs.MODEL_TYPES) builds that model at the preset's sizes
(random_model.model_config) with the same token grid per slot; a slot's own text (Qwen3-VL's
timestamp and markers) counts in the visual capacity, as the session counts it (slot_cost).
Writes stream.json and three PNGs under --out and prints a table. Absolute times are
this machine's wall clock; compare methods through ratios from the same run.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from pathlib import Path

from ..contract.config import METHODS as METHODS_REGISTRY
from ..contract.config import InfiniPotConfig
from ..contract.specs import DEFAULT_SYSTEM, MODEL_TYPES
from ..door import DEFAULT_FPS
from . import random_model
from .common import (
    environment,
    load_average,
    print_environment,
    require_positive,
    write_json,
)
from .stream_report import plot_stream, print_table, summarize

mx = vlm_caches = StreamSession = None  # bound by _import_mlx (the flags parse without mlx)


def _import_mlx() -> None:
    """Bind mx, vlm_caches and StreamSession here (run() calls it first)."""
    global mx, vlm_caches, StreamSession
    import mlx.core as mx

    from ..stream.session import StreamSession
    from . import vlm_caches

QUANTIZED = {"infinipot_v_kv8": 8, "infinipot_v_kv4": 4}  # infinipot_v under the same cap, --kv-bits
OUR_METHODS = ("full", *(m for m in METHODS_REGISTRY if m != "full"), *QUANTIZED)  # config.METHODS, full first
VLM_METHODS = ("mlx_vlm_rotating", "mlx_vlm_quant8")
METHODS = OUR_METHODS + VLM_METHODS
QUESTION = "What happened in the video?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m infinipot_mlx.bench stream`."""
    parser.add_argument("--out", type=Path, default=Path("bench_out/stream"),
                        help="output folder for stream.json and the PNGs (default bench_out/stream)")
    parser.add_argument("--size", choices=sorted(random_model.SIZES), default="mid",
                        help="model and stream preset (default mid)")
    parser.add_argument("--model-type", choices=tuple(MODEL_TYPES), default="qwen2_5_vl",
                        help="the random model's type, at the preset's sizes (default qwen2_5_vl)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--points", type=float, nargs="+", default=[1, 2, 4, 6, 8, 10],
                        help="measure after this many times the visual capacity has streamed")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="sampling rate of the frames")
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="tokens decoded per question (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-plots", action="store_true", help="write JSON and the table only")


def stream_plan(spec, tokenizer, size, points: list[float], answer_tokens: int) -> dict:
    """Capacity arithmetic and the slot counts to measure at (slots = 2 sampled frames)."""
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    p = spec.pieces
    T = random_model.tokens_per_slot(spec, size)
    slot_text = p.slot_text_bound(lambda text: tokenizer.encode(text, add_special_tokens=False))  # as room.slot_cost
    question = count(p.user_open + QUESTION + p.question_close)
    per_turn = count(p.user_open) + count(p.video_open) + count(p.video_close) + question \
        + answer_tokens + count(p.answer_close) + 8  # 8: tokenization margin
    text_room = count(p.system.format(system=DEFAULT_SYSTEM)) + len(points) * per_turn
    reserve = question + answer_tokens + count(p.video_close) + 8  # no compression at ask
    visual = size.capacity_slots * (T + slot_text)
    block = size.block_slots
    targets = [block * math.ceil(x * size.capacity_slots / block) for x in sorted(points)]
    return dict(T=T, slot_text_tokens=slot_text, capacity=text_room + reserve + visual,
                capacity_visual=visual, reserve=reserve, text_room=text_room, block_slots=block,
                target_slots=targets, frame_side=random_model.frame_side(spec, size))


def make_session(method: str, model, tokenizer, spec, plan: dict, fps: float) -> StreamSession:
    """A session on `method`'s cache, with the shared block size and fps."""
    block = plan["block_slots"]
    if method in VLM_METHODS or (method not in QUANTIZED and not METHODS_REGISTRY[method].bounded):
        config = InfiniPotConfig(capacity=None, method="full", block_slots=block, reserve=0)
    else:
        config = InfiniPotConfig(capacity=plan["capacity"], method=method.partition("_kv")[0], block_slots=block,
                                 reserve=plan["reserve"], kv_bits=QUANTIZED.get(method))
    factory = {"mlx_vlm_rotating": vlm_caches.rotating(plan["capacity"]),
               "mlx_vlm_quant8": vlm_caches.quantized(bits=8)}.get(method)
    return StreamSession(model, tokenizer, spec, config, vlm_caches.BenchBackend(factory), fps=fps)


def _stream_until(session, target_slots: int, size, seed: int) -> int:
    """Add blocks of frames until target_slots slots streamed; the most tokens cached after any block."""
    block = size.block_slots * session.spec.frames_per_slot
    side = random_model.frame_side(session.spec, size)
    most = session.cache.n_cached
    while session.counters.slots_seen < target_slots:
        start = session.counters.frames_seen
        session.add_frames(random_model.moving_frames(start, block, side, seed))
        most = max(most, session.cache.n_cached)
    return most


def _rate(stamps: list[float]) -> float | None:
    """Tokens per second between the first and the last of one stamp per token."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None


def _ask(session, answer_tokens: int, compare: bool) -> dict:
    """Time to first token and decode rate of one question (exactly answer_tokens tokens);
    with `compare`, mlx-lm's decode rate on the same LM and a cache of the same length."""
    mx.reset_peak_memory()
    decoded = session.counters.tokens_decoded
    session.backend.stamps = stamps = []
    start = time.perf_counter()
    pieces = iter(session.ask(QUESTION, max_tokens=answer_tokens))
    first = next(pieces, "")  # the question's prefill and the first token
    first_at = last_at = time.perf_counter()
    for _ in pieces:  # the last answer token is always yielded, before the closing piece is pinned
        last_at = time.perf_counter()
    stamps.append(last_at)
    decoded = session.counters.tokens_decoded - decoded  # tokens fed back: all but the last
    assert decoded == answer_tokens - 1, "eos is ignored, so every answer has answer_tokens"
    assert len(stamps) == answer_tokens + 1 and first is not None
    point = dict(ttft_ms=(first_at - start) * 1e3, decode_tokens_per_s=_rate(stamps[1:]),
                 answer_tokens=decoded + 1, question_peak_memory_bytes=mx.get_peak_memory(),
                 tokens_cached_after_answer=session.cache.n_cached)
    if compare:
        point["mlx_lm_decode_tokens_per_s"] = mlx_lm_decode_rate(session, answer_tokens)
        point["decode_vs_mlx_lm"] = point["decode_tokens_per_s"] / point["mlx_lm_decode_tokens_per_s"]
    return point


def mlx_lm_decode_rate(session, answer_tokens: int) -> float:
    """mlx-lm's generate_step, greedy, on the session's language model from a KVCache holding
    the same keys and values as the session's cache (same length; a QuantizedKVCache of the same
    packed rows when the session's cache is quantized): tokens per second."""
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    caches = []
    for layer in session.cache.layers:  # their fields, not `state` (it changed in mlx-lm 0.29)
        if session.cache.quantized:  # the same packed rows, scales and biases
            cache = QuantizedKVCache(group_size=layer.group_size, bits=layer.bits)
            cache.keys, cache.values = (tuple(mx.array(a) for a in kv) for kv in (layer.keys, layer.values))
        else:
            cache = KVCache()
            cache.keys, cache.values = mx.array(layer.keys), mx.array(layer.values)  # copies
        cache.offset = layer.n_cached
        caches.append(cache)
    mx.eval([(c.keys, c.values) for c in caches])
    lm = session.adapter.lm

    def logits(inputs, cache=None, **_):  # mlx-vlm's language model returns an output object
        return lm(inputs, cache=cache).logits

    stamps = [time.perf_counter() for _ in generate_step(mx.array([1]),  # any token: speed only
                                                          logits, prompt_cache=caches,
                                                          max_tokens=answer_tokens)]
    return _rate(stamps)


def _interval(session, before: dict, frames_before: int, plan: dict, most: int) -> dict:
    """The point's record: memory, cache, and per-frame times since the previous point."""
    s, cache = session.counters, session.cache
    frames = s.frames_seen - frames_before
    phases = ("vision", "prefill", "compress")
    ms = {k: (s.seconds[k] - before[k]) * 1e3 / frames for k in phases}
    stream_seconds = sum(s.seconds[k] for k in phases)
    return dict(
        frames=s.frames_seen, slots=s.slots_seen, visual_tokens_streamed=s.slots_seen * plan["T"],
        x_capacity=s.slots_seen * (plan["T"] + plan["slot_text_tokens"]) / plan["capacity_visual"],
        tokens_cached=cache.n_cached, max_tokens_cached=most, tokens_visual=cache.n_visual,
        kv_bytes=cache.nbytes, active_memory_bytes=mx.get_active_memory(),
        peak_memory_bytes=mx.get_peak_memory(), ms_per_frame=ms,
        stream_ms_per_frame=sum(ms.values()), compressions=s.compressions,
        compress_share=s.seconds["compress"] / stream_seconds if stream_seconds else 0.0,
        seconds=dict(s.seconds),
    )


def run_method(method: str, model, tokenizer, spec, plan: dict, size, args) -> list[dict]:
    """Stream to every target, measuring each interval and asking one question after it."""
    session = make_session(method, model, tokenizer, spec, plan, args.fps)
    points = []
    for target in plan["target_slots"]:
        before, frames_before = dict(session.counters.seconds), session.counters.frames_seen
        mx.reset_peak_memory()
        most = _stream_until(session, target, size, args.seed)
        point = _interval(session, before, frames_before, plan, most)
        point.update(_ask(session, args.answer_tokens, compare=method in OUR_METHODS))
        point["max_tokens_cached"] = max(most, point["tokens_cached_after_answer"])
        points.append(point)
        print(f"  {method:<17} {point['frames']:>5} frames  {point['tokens_cached']:>6} cached  "
              f"{point['stream_ms_per_frame']:>8.1f} ms/frame  "
              f"{point['decode_tokens_per_s']:>7.1f} tok/s", flush=True)
    del session
    gc.collect()
    mx.clear_cache()
    return points


METHOD_NOTES = {
    "full": "our StreamCache, never compressed",
    "infinipot_v": "our StreamCache, InfiniPot-V (TaR + VaN) under the cap",
    "uniform": "our StreamCache, uniform frame subsampling under the cap",
    "sliding_window": "our StreamCache, newest frames under the cap",
    "infinipot_v_kv8": "our StreamCache at 8 bits (--kv-bits 8), InfiniPot-V under the same cap",
    "infinipot_v_kv4": "our StreamCache at 4 bits (--kv-bits 4), InfiniPot-V under the same cap",
    "mlx_vlm_rotating": "mlx-vlm RotatingKVCache(max_size=capacity, keep=4) (--max-kv-size)",
    "mlx_vlm_quant8": "mlx-vlm QuantizedKVCache(bits=8, group_size=64), no cap (--kv-bits 8)",
}


def run(args: argparse.Namespace) -> dict:
    """Run every method, print the table, write stream.json and the plots; returns the record."""
    require_positive(args, "points", "fps")
    _import_mlx()
    require_positive(args, "answer_tokens", minimum=1, strict=False)
    env, started = environment(), time.perf_counter()
    size = random_model.SIZES[args.size]
    args.answer_tokens = args.answer_tokens or size.answer_tokens
    model, tokenizer, spec, _ = random_model.build_model(size, args.seed, args.model_type)
    plan = stream_plan(spec, tokenizer, size, args.points, args.answer_tokens)
    print(f"stream bench ({args.size}, {args.model_type}): T={plan['T']} tokens/slot, capacity {plan['capacity']} tokens "
          f"({plan['capacity_visual']} visual), blocks of {plan['block_slots']} slot(s), "
          f"to {plan['target_slots'][-1]} slots", flush=True)
    methods = {m: dict(description=METHOD_NOTES[m],
                       points=run_method(m, model, tokenizer, spec, plan, size, args))
               for m in dict.fromkeys(args.methods)}  # each method once, in the order given
    record = _record(args, size, spec, model, plan, methods)
    record.update(env, load_average_start=env["load_average"], load_average_end=load_average(),
                  wall_seconds=time.perf_counter() - started)
    record["summary"] = summarize(record)
    print_table(record)
    print_environment(record)
    if not args.no_plots:
        record["plots"] = [str(p) for p in plot_stream(record, args.out)]
    write_json(args.out, "stream.json", record)
    return record


def _record(args, size, spec, model, plan: dict, methods: dict) -> dict:
    """Configuration, model sizes, question protocol and every measured point."""
    return dict(
        benchmark="stream",
        model_type=args.model_type,
        size=dict(name=args.size, **size.describe(), tokens_per_slot=plan["T"], dtype="float32",
                  vocab=random_model.VOCAB, weights_bytes=random_model.weights_bytes(model),
                  kv_bytes_per_token=spec.kv_bytes_per_token(4)),
        stream=dict(fps=args.fps, frames_per_slot=spec.frames_per_slot, frame_size=plan["frame_side"],
                    frames="moving squares over a drifting gradient (random_model.moving_frames)",
                    points_x_capacity=sorted(args.points), seed=args.seed),
        plan=plan,
        question=dict(text=QUESTION, answer_tokens=args.answer_tokens,
                      decoding="greedy; the bench backend reports no end-of-sequence id, so every "
                               "answer is exactly answer_tokens tokens; decode tokens/s = "
                               "(answer_tokens - 1) / wall time from the second token's step to the last "
                               "token's arrival (the closing piece excluded); "
                               "mlx_lm_decode_tokens_per_s: mlx_lm.generate_step on the same "
                               "language model from a KVCache copy of the same keys and values, "
                               "the same number of tokens, measured the same way"),
        methods=methods,
        note="absolute times (ms, tokens/s) are wall clock on this machine, shared with other work; "
             "compare methods through the ratios to full measured in the same run",
    )
