"""The KV cache and its compression alone, at Qwen2.5-VL-7B KV shape, over a long stream.

`python -m infinipot_mlx.bench kv [--minutes 60 | --slots N]` appends blocks of random
keys and values to our StreamCache (no model) as the session would, compressing with
the session's compression step (room.compress_layers) whenever a block would pass
capacity - reserve (ALGORITHM.md section 3):
28 layers, 4 KV heads, 128 dims, T = 256 tokens per slot, float16, blocks of 8 slots,
capacity = 32 slots' worth + prompt + reserve, 1 slot per second for an hour (3600
slots). A slot is one temporal step of the vision grid, T tokens (ALGORITHM.md section 12).

Keys and values: each block draws, per layer and head, T tokens at random (with
replacement) from a fixed bank of random normal vectors per head (--bank-tokens); fresh
normal draws of 59M values per block take seconds on these CPUs, the gather a fraction.

Full KV grows by T x layers x 2 x H x D x 2 bytes (14.7 MB) per slot, ~53 GB at one hour:
it is measured only while it stays under --full-limit-gb, and the analytic figure is
reported at every point, labelled as such.

Notation: L layers, H KV heads, D head dim, T tokens per slot, S slots per block.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..contract import plan
from ..contract.budget import format_bytes
from ..contract.config import DEFAULT_RESERVE, METHODS, InfiniPotConfig
from ..errors import UserError
from ..stream.room import compress_layers
from .common import (
    environment,
    load_average,
    parse_list,
    print_environment,
    require_positive,
    write_json,
)
from .plots import Line, Panel, line_panels

GB = 1e9
DTYPES: dict = {}  # "float16" -> mx.float16, ...: filled by _import_mlx (the flags parse without mlx)


def _import_mlx() -> None:
    """Bind mx, StreamCache and MLXBackend in this module (run() calls it first)."""
    global mx, StreamCache, MLXBackend
    import mlx.core as mx

    from ..mlx.backend import MLXBackend
    from ..mlx.cache import StreamCache

    DTYPES.update(float16=mx.float16, bfloat16=mx.bfloat16, float32=mx.float32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m infinipot_mlx.bench kv`."""
    parser.add_argument("--out", type=Path, default=Path("bench_out/kv"))
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=60.0, help="video length (default 60)")
    length.add_argument("--slots", type=int, default=None, help="video length in temporal slots")
    parser.add_argument("--fps", type=float, default=1.0, help="temporal slots per second of video")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--tokens-per-slot", type=int, default=256, help="T; a square grid")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="float16")
    parser.add_argument("--block-slots", type=int, default=8)
    parser.add_argument("--capacity-slots", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64, help="pinned text before the video")
    parser.add_argument("--reserve", type=int, default=DEFAULT_RESERVE)
    parser.add_argument("--method", choices=[m for m, method in METHODS.items() if method.bounded],
                        default="infinipot_v")
    parser.add_argument("--full-limit-gb", type=float, default=2.0,
                        help="measure full KV only while its keys and values fit in this many GB "
                             "(default 2; the peak runs higher during buffer growth)")
    parser.add_argument("--points", type=int, default=12, help="measurement points (log-spaced)")
    parser.add_argument("--bank-tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--capacity", type=int, default=None, metavar="TOKENS",
                        help="the cap in tokens (default: prompt + reserve + --capacity-slots x T)")
    parser.add_argument("--kv-bits", default="16", help="cache widths to stream at the same cap: 16 "
                        "(--dtype), 8 and/or 4 (e.g. 16,8,4); each reports its KV bytes, compression time "
                        "and memory-file size")
    parser.add_argument("--kv-group-size", type=int, default=64, help="quantization group (default 64)")


class Source:
    """Random keys and values drawn per block, layer and head from a fixed per-head bank."""

    def __init__(self, args, dtype):
        mx.random.seed(args.seed)
        shape = (args.kv_heads, args.bank_tokens, args.head_dim)  # (H, bank, D)
        self.keys = mx.random.normal(shape).astype(dtype)
        self.values = mx.random.normal(shape).astype(dtype)
        mx.eval(self.keys, self.values)

    def draw(self, n: int) -> tuple[mx.array, mx.array]:
        """(1, H, n, D) keys and values."""
        idx = mx.random.randint(0, self.keys.shape[1], (self.keys.shape[0], n))[..., None]  # (H, n, 1)
        take = lambda bank: mx.take_along_axis(bank, idx, axis=1)[None]  # noqa: E731
        return take(self.keys), take(self.values)


def _append(cache: StreamCache, source: Source, n: int, labels=None) -> None:
    """Append n tokens to every layer (labels (slot_ids, patch_ids) or pinned), then sync."""
    if labels is not None:
        cache.label_next(*labels)
    for layer in cache.layers:
        layer.update_and_fetch(*source.draw(n))
    mx.eval([a for layer in cache.layers for a in (layer.keys, layer.values)])


def _compress(cache: StreamCache, keep: int, T: int, config: InfiniPotConfig, grid) -> float:
    """The session's own compression step (room.compress_layers) on every layer, synced; ms."""
    start = time.perf_counter()
    compress_layers(cache, MLXBackend(), keep, T, config, grid)
    mx.eval([a for layer in cache.layers for a in (layer.keys, layer.values)])
    return (time.perf_counter() - start) * 1e3


def _points(total: int, first: int, block: int, count: int) -> list[int]:
    """About `count` log-spaced slot counts from `first` to `total`, on block boundaries."""
    raw = np.geomspace(max(first, block), total, count)
    return sorted({min(total, block * max(1, round(x / block))) for x in raw} | {total})


def _point(cache: StreamCache, slots: int, fps: float, times: list[float], appends: list[float]) -> dict:
    """Memory and cache at a point; compression and append ms since the previous point."""
    return dict(slots=slots, minutes=slots / fps / 60, tokens_cached=cache.n_cached,
                kv_bytes=cache.nbytes, active_memory_bytes=mx.get_active_memory(),
                peak_memory_bytes=mx.get_peak_memory(), compressions_in_interval=len(times),
                compress_ms_mean=statistics.fmean(times) if times else None,
                compress_ms_max=max(times) if times else None,
                append_ms_per_block=statistics.fmean(appends) if appends else None)


def stream(args, config: InfiniPotConfig | None, total: int, points: list[int],
           byte_limit: float | None = None) -> tuple[list[dict], list[float], object]:
    """Stream `total` slots (compressing under `config`, or never when None, at its kv_bits);
    the points, every compression's ms, and the cache as it ended.

    Stops early, at a point, when the next block would take the cache past byte_limit.
    """
    T, S, dtype = args.tokens_per_slot, args.block_slots, DTYPES[args.dtype]
    grid = (int(round(T ** 0.5)),) * 2
    source = Source(args, dtype)
    cache = StreamCache(args.layers, *((config.kv_bits, config.kv_group_size) if config else ()))
    mx.reset_peak_memory()
    _append(cache, source, args.prompt_tokens)
    results, all_times, times, appends, slots = [], [], [], [], 0
    while slots < total:
        n = min(S, total - slots)
        if byte_limit is not None and (cache.n_cached + n * T) * bytes_per_token(args) > byte_limit:
            break
        if config is not None and plan.needs_compression(cache.n_cached, n * T, config.capacity,
                                                         config.reserve):
            keep = plan.keep_target(config.capacity, config.reserve, cache.n_pinned, n * T)
            times.append(_compress(cache, keep, T, config, grid))
        start = time.perf_counter()
        labels = (np.repeat(np.arange(slots, slots + n, dtype=np.int32), T),
                  np.tile(np.arange(T, dtype=np.int32), n))  # (n*T,) each
        _append(cache, source, n * T, labels)
        appends.append((time.perf_counter() - start) * 1e3)
        slots += n
        if slots in points:
            results.append(_point(cache, slots, args.fps, times, appends))
            all_times += times
            times, appends = [], []
            mx.reset_peak_memory()
    if slots and (not results or results[-1]["slots"] != slots):  # stopped by byte_limit
        results.append(_point(cache, slots, args.fps, times, appends))
    return results, all_times + times, cache


def memory_file_bytes(cache) -> int:
    """Bytes of the cache's tensors written as a memory file writes them (memory_file.cache_tensors,
    safetensors), without the session's JSON (a few KB)."""
    import tempfile

    from safetensors.numpy import save_file

    from ..stream.memory_file import cache_tensors

    tensors, _ = cache_tensors(cache, MLXBackend())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cache.safetensors"
        save_file(tensors, str(path))
        return path.stat().st_size


def bytes_per_token(args) -> int:
    """L x 2 (K, V) x H x D x bytes (ALGORITHM.md section 8)."""
    itemsize = np.dtype(args.dtype).itemsize if args.dtype != "bfloat16" else 2
    return args.layers * 2 * args.kv_heads * args.head_dim * itemsize


def analytic_full(args, slots: int) -> int:
    """Bytes of an uncompressed cache after `slots` slots (prompt included)."""
    return (args.prompt_tokens + slots * args.tokens_per_slot) * bytes_per_token(args)


def _summary(args, total: int, points: list[dict], times: list[float]) -> dict:
    """Compression cost against the video's real time, and memory against full KV."""
    video_seconds = total / args.fps
    peak = max(p["peak_memory_bytes"] for p in points)
    return dict(
        compressions=len(times),
        compress_ms_median=statistics.median(times) if times else None,
        compress_ms_mean=statistics.fmean(times) if times else None,
        compress_ms_p90=float(np.percentile(times, 90)) if times else None,
        compress_ms_max=max(times) if times else None,
        compress_ms_per_frame=sum(times) / total,
        compress_share_of_real_time=sum(times) / 1e3 / video_seconds,
        peak_memory_bytes=peak, kv_bytes_end=points[-1]["kv_bytes"],
        full_kv_bytes_end_analytic=analytic_full(args, total),
        full_over_peak=analytic_full(args, total) / peak,
    )


def checked_config(args, capacity: int) -> InfiniPotConfig:
    """The compression config of the flags; UserError when its capacity cannot hold a block."""
    try:
        config = InfiniPotConfig(capacity=capacity, block_slots=args.block_slots,
                                 reserve=args.reserve, method=args.method, kv_group_size=args.kv_group_size)
        config.check_head_dim(args.head_dim)
        config.check_fits(args.tokens_per_slot, args.prompt_tokens)
    except ValueError as err:
        problem = str(err).split(";")[0]  # the advice after ";" names the chat's flags
        raise UserError(f"{problem}; raise --capacity-slots, or lower --block-slots or --reserve") from None
    return config


def run(args: argparse.Namespace) -> dict:
    """Stream full KV (up to the limit) and the compressed cache; table, kv.json, PNGs."""
    require_positive(args, "minutes", "slots", "fps", "layers", "kv_heads", "head_dim", "tokens_per_slot",
                     "block_slots", "capacity_slots", "points", "bank_tokens")
    require_positive(args, "prompt_tokens", "reserve", "full_limit_gb", strict=False)
    env, started = environment(), time.perf_counter()
    T = args.tokens_per_slot
    total = args.slots or round(args.minutes * 60 * args.fps)
    if total < 1:
        raise UserError(f"--minutes {args.minutes:g} at --fps {args.fps:g} is no slot; stream a longer video")
    capacity = args.capacity or args.prompt_tokens + args.reserve + args.capacity_slots * T
    config = checked_config(args, capacity)
    widths = parse_list(args.kv_bits, "kv_bits", kind=int, choices=(16, 8, 4))
    config = replace(config, kv_bits=None if widths[0] == 16 else widths[0])
    config.check_head_dim(args.head_dim)
    _import_mlx()  # the flags are checked
    points = _points(total, args.capacity_slots, args.block_slots, args.points)
    print(f"kv bench: {total} slots x {T} tokens, {args.layers} layers x {args.kv_heads} heads x "
          f"{args.head_dim} dims {args.dtype}, capacity {capacity} tokens, {args.method}", flush=True)
    full, _, _ = stream(args, None, total, points, byte_limit=args.full_limit_gb * GB)
    gc.collect()
    mx.clear_cache()  # the compressed run starts from an empty allocator cache
    by_bits = {}
    for bits in widths:  # the first width is the record's main series
        gc.collect()
        mx.clear_cache()
        width_points, width_times, cache = stream(args, replace(config, kv_bits=None if bits == 16 else bits),
                                                  total, points)
        by_bits[bits] = dict(points=width_points, summary=_summary(args, total, width_points, width_times),
                             compress_ms=width_times, tokens_held=cache.n_cached,
                             memory_file_bytes=memory_file_bytes(cache))
        del cache
    method, times = by_bits[widths[0]]["points"], by_bits[widths[0]]["compress_ms"]
    for p in full + [q for b in by_bits.values() for q in b["points"]]:
        p["full_kv_bytes_analytic"] = analytic_full(args, p["slots"])
    record = dict(
        benchmark="kv",
        shape=dict(layers=args.layers, kv_heads=args.kv_heads, head_dim=args.head_dim,
                   tokens_per_slot=T, dtype=args.dtype, bytes_per_token=bytes_per_token(args)),
        stream=dict(slots=total, fps=args.fps, minutes=total / args.fps / 60,
                    block_slots=args.block_slots, prompt_tokens=args.prompt_tokens,
                    bank_tokens=args.bank_tokens, seed=args.seed),
        capacity=dict(tokens=capacity, slots=args.capacity_slots, reserve=args.reserve),
        method=args.method, points=method, full_measured=full,
        full_limit_bytes=args.full_limit_gb * GB,
        summary=by_bits[widths[0]]["summary"], compress_ms=times,
        kv_bits=widths, kv_group_size=args.kv_group_size, by_bits=by_bits,
        note="full KV is measured only up to full_limit_bytes; full_kv_bytes_analytic is "
             "(prompt + slots x T) x bytes_per_token, not a measurement. Times are this "
             "machine's wall clock, shared with other work.",
        **env, load_average_start=env["load_average"], load_average_end=load_average(),
        wall_seconds=time.perf_counter() - started,
    )
    _print(record)
    print_environment(record)
    record["plots"] = [str(p) for p in _plot(record, args.out)]
    write_json(args.out, "kv.json", record)
    return record


def _print(record: dict) -> None:
    """One row per point: the compressed cache, full KV measured where it fit, full analytic."""
    full = {p["slots"]: p for p in record["full_measured"]}
    print(f"{'slots':>7}{'min':>7}{'cached':>8}{'KV GB':>8}{'peak GB':>9}{'full peak GB':>13}"
          f"{'full GB (analytic)':>19}{'compr':>7}{'ms/compr':>10}")
    for p in record["points"]:
        f = full.get(p["slots"])
        full_peak = f"{f['peak_memory_bytes'] / GB:.3f}" if f else "n/a"
        print(f"{p['slots']:>7}{p['minutes']:>7.1f}{p['tokens_cached']:>8}{p['kv_bytes'] / GB:>8.3f}"
              f"{p['peak_memory_bytes'] / GB:>9.3f}"
              f"{full_peak:>13}"
              f"{p['full_kv_bytes_analytic'] / GB:>19.2f}{p['compressions_in_interval']:>7}"
              f"{(p['compress_ms_mean'] or 0):>10.1f}")
    s = record["summary"]
    last = record["full_measured"][-1]
    print(f"full KV measured up to {last['slots']} slots (peak {last['peak_memory_bytes'] / GB:.2f} GB); "
          f"beyond that only the analytic figure")
    print(f"{s['compressions']} compressions: median {s['compress_ms_median']:.0f} ms, p90 "
          f"{s['compress_ms_p90']:.0f} ms, max {s['compress_ms_max']:.0f} ms; "
          f"{100 * s['compress_share_of_real_time']:.2f}% of the video's real time")
    print(f"peak {format_bytes(s['peak_memory_bytes'])} vs full KV {format_bytes(s['full_kv_bytes_end_analytic'])} "
          f"(analytic) at the end: {times_fewer(s['full_over_peak'])}")
    print(f"{'KV bits':>8}{'tokens held':>12}{'KV held':>10}{'memory file':>13}{'ms/compr (median)':>19}")
    for bits, b in record["by_bits"].items():
        label = record["shape"]["dtype"] if bits == 16 else f"{bits}"
        print(f"{label:>8}{b['tokens_held']:>12,}{format_bytes(b['points'][-1]['kv_bytes']):>10}"
              f"{format_bytes(b['memory_file_bytes']):>13}{(b['summary']['compress_ms_median'] or 0):>19.1f}")


def times_fewer(full_over_peak: float) -> str:
    """How the peak compares with full KV, from full / peak: "77x less", "1.4x less", or, when
    the peak is the larger (a short stream, where the cap and the buffers outweigh full KV),
    "2.5x more" (never "0x less")."""
    if full_over_peak >= 1:
        return f"{full_over_peak:.{0 if full_over_peak >= 10 else 1}f}x less"
    more = 1 / full_over_peak
    return f"{more:.{0 if more >= 10 else 1}f}x more"


def _plot(record: dict, out: Path) -> list[Path]:
    """kv_memory.png (GB vs minutes, log-log) and kv_compress.png (ms per compression)."""
    method, shape = record["method"], record["shape"]
    series = [  # (label, points, bytes key, style)
        (f"{method}: peak (measured)", record["points"], "peak_memory_bytes", dict(color="tab:red")),
        (f"{method}: KV held (measured)", record["points"], "kv_bytes",
         dict(color="tab:red", alpha=0.5)),
        ("full KV: peak (measured)", record["full_measured"], "peak_memory_bytes",
         dict(color="black")),
        ("full KV (analytic)", record["points"], "full_kv_bytes_analytic",
         dict(color="black", linestyle="--")),
    ]
    lines = [Line(label, [dict(p, gb=p[key] / GB) for p in points], style)
             for label, points, key, style in series]
    title = (f"KV only: {shape['layers']} layers x {shape['kv_heads']} heads x {shape['head_dim']} "
             f"dims {shape['dtype']}, T={shape['tokens_per_slot']}, {record['stream']['fps']} "
             "slot/s; this machine")
    minutes = lambda p: p["minutes"]  # noqa: E731
    memory = [Panel("memory (GB)", lambda p: p["gb"], logy=True)]
    compress = [Panel("ms per compression (mean over interval)", lambda p: p["compress_ms_mean"])]
    return [line_panels(out / "kv_memory.png", lines, minutes, "minutes of video", memory, title,
                        logx=True),
            line_panels(out / "kv_compress.png", [Line(method, record["points"], series[0][3])],
                        minutes, "minutes of video", compress, title, logx=True)]
