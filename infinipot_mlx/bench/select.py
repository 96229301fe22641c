"""Time one compression, the session's own step, in MLX and in the torch reference, beside
the physical bound: a plain copy of the same keys and values.

The timed step is room.compress_layers on a StreamCache, then the sync the session does:
score and select every layer's visual tokens, then gather the kept rows. Default shape:
Qwen2.5-VL-7B KV (28 layers, 4 KV heads, 128 dims, float32), a 100-token pinned prompt,
then 32 slots x 256 visual tokens, compressed to 24 slots' worth: the paper's block schedule
(capacity 32 slots, blocks of 8). Every layer holds its own random keys and values (the
same numbers in both backends), and a snapshot restores the cache before each repeat.

The bound is the fastest plain copy of the same bytes (every layer's live keys and values)
in this process: MLX (`x * 1`, evaluated), torch (`clone`) and numpy (`copyto` into a
preallocated buffer). Compression must read every key and value at least once, so the
bound is a floor no implementation can beat; MLX/bound and torch/bound say how far each is.
Each backend is imported only inside its own timing function.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ..contract.config import InfiniPotConfig
from ..errors import UserError
from .common import environment, require_positive

CONFIGS = {  # label -> InfiniPotConfig keyword arguments
    "infinipot_v": dict(method="infinipot_v"),
    "infinipot_v+pool": dict(method="infinipot_v", van_pooling=True),
}
PINNED = 100  # text tokens before the video (a system prompt)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m infinipot_mlx.bench select`."""
    parser.add_argument("--out", type=Path, default=Path("bench_out/select"),
                        help="output folder for select.json (default bench_out/select)")
    parser.add_argument("--repeats", type=int, default=5, help="timed compressions per backend")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--slots", type=int, default=32, help="temporal slots cached before compressing")
    parser.add_argument("--keep-slots", type=int, default=24, help="slots' worth of tokens kept")
    parser.add_argument("--grid", type=int, nargs=2, default=(16, 16), metavar=("ROWS", "COLS"),
                        help="merged grid of a slot; tokens per slot = rows * cols")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads before timing (default 0: torch's default)")


def check_args(args: argparse.Namespace) -> None:
    """UserError for a size that is not positive, or more slots kept than cached."""
    require_positive(args, "repeats", "layers", "heads", "dim", "slots", "keep_slots", "grid")
    require_positive(args, "torch_threads", strict=False)
    if args.keep_slots >= args.slots:
        raise UserError(f"--keep-slots ({args.keep_slots}) must be below --slots ({args.slots}): "
                        "a compression keeps fewer tokens than are cached")


def _timings_ms(fn, repeats: int, before=None) -> dict:
    """Median and min wall time of fn() in ms over `repeats` runs, after one warm-up run;
    before() (untimed) runs ahead of each."""
    times = []
    for i in range(repeats + 1):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        if i:
            times.append((time.perf_counter() - start) * 1e3)
    return {"median": statistics.median(times), "min": min(times)}


def kv_data(args) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Per layer (1, H, PINNED + N, D) float32 keys and values; the (L,) slot and patch labels."""
    tokens = args.grid[0] * args.grid[1]
    n = PINNED + args.slots * tokens
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((1, args.heads, n, args.dim), dtype=np.float32)
            for _ in range(2 * args.layers)]  # keys, values of layer 0, then of layer 1, ...
    visual = np.arange(args.slots * tokens)
    slot_ids = np.concatenate([np.full(PINNED, -1), visual // tokens])
    patch_ids = np.concatenate([np.full(PINNED, -1), visual % tokens])
    return data, slot_ids, patch_ids


def _fill(cache, data, slot_ids, patch_ids, to_array) -> None:
    for i, layer in enumerate(cache.layers):
        layer.label_next(slot_ids, patch_ids)
        layer.update_and_fetch(to_array(data[2 * i]), to_array(data[2 * i + 1]))


def _time_mlx(data, labels, configs: dict, args) -> tuple[dict, dict]:
    """{config: timings} of the compression step, and the timings of a plain MLX copy."""
    import mlx.core as mx

    from ..mlx.backend import MLXBackend
    from ..mlx.cache import StreamCache
    from ..stream.room import compress_layers

    backend, cache = MLXBackend(), StreamCache(args.layers)
    _fill(cache, data, *labels, mx.array)
    backend.sync(None, cache)
    snapshot, tokens = cache.snapshot(), args.grid[0] * args.grid[1]
    results = {}
    for label, config in configs.items():
        def compress():
            compress_layers(cache, backend, args.keep_slots * tokens, tokens, config, tuple(args.grid))
            backend.sync(None, cache)

        results[label] = _timings_ms(compress, args.repeats, before=lambda: cache.restore(snapshot))
    cache.restore(snapshot)
    live = [a for layer in cache.layers for a in (layer.keys, layer.values)]
    copy = _timings_ms(lambda: mx.eval([a * 1 for a in live]), args.repeats)
    return results, copy


def _time_torch(data, labels, configs: dict, args) -> tuple[dict, dict]:
    """The mirror of _time_mlx on the reference backend (CPU)."""
    import torch

    from ..reference.backend import TorchBackend
    from ..reference.cache import StreamCache
    from ..stream.room import compress_layers

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    backend, cache = TorchBackend(device="cpu"), StreamCache(args.layers)
    snapshot, tokens = None, args.grid[0] * args.grid[1]
    with torch.inference_mode():
        _fill(cache, data, *labels, torch.from_numpy)
        snapshot = cache.snapshot()
        results = {}
        for label, config in configs.items():
            def compress():
                compress_layers(cache, backend, args.keep_slots * tokens, tokens, config, tuple(args.grid))

            results[label] = _timings_ms(compress, args.repeats, before=lambda: cache.restore(snapshot))
        cache.restore(snapshot)
        live = [a for layer in cache.layers for a in (layer.keys, layer.values)]
        copy = _timings_ms(lambda: [a.clone() for a in live], args.repeats)
    return results, copy


def _time_numpy_copy(data, args) -> dict:
    out = [np.empty_like(a) for a in data]
    return _timings_ms(lambda: [np.copyto(o, a) for o, a in zip(out, data)], args.repeats)


def run(args: argparse.Namespace) -> dict:
    """Time each config in both backends and the copy bound; print, write select.json."""
    check_args(args)
    tokens = args.grid[0] * args.grid[1]
    data, slot_ids, patch_ids = kv_data(args)
    # compress_layers reads only the selection settings; the capacity is not used
    configs = {label: InfiniPotConfig(capacity=10**9, reserve=0, **kw) for label, kw in CONFIGS.items()}
    mlx_ms, mlx_copy = _time_mlx(data, (slot_ids, patch_ids), configs, args)
    torch_ms, torch_copy = _time_torch(data, (slot_ids, patch_ids), configs, args)
    copies = {"mlx": mlx_copy, "torch": torch_copy, "numpy": _time_numpy_copy(data, args)}
    bound = min(c["median"] for c in copies.values())
    results = []
    for label in CONFIGS:
        m, t = mlx_ms[label]["median"], torch_ms[label]["median"]
        results.append({"config": label, "mlx_ms_median": m, "torch_ms_median": t,
                        "bound_ms_median": bound, "mlx_ms": mlx_ms[label], "torch_ms": torch_ms[label],
                        "mlx_over_bound": m / bound, "torch_over_bound": t / bound, "mlx_over_torch": m / t})
    kv_bytes = sum(a.nbytes for a in data)
    record = {"shape": {"layers": args.layers, "heads": args.heads, "dim": args.dim,
                        "pinned": PINNED, "slots": args.slots, "tokens_per_slot": tokens,
                        "candidates": args.slots * tokens, "keep": args.keep_slots * tokens,
                        "dtype": "float32", "kv_bytes": kv_bytes},
              "step": "room.compress_layers on a StreamCache (score, select, gather every layer), synced",
              "bound": "the fastest plain copy of the same keys and values: " + ", ".join(
                  f"{k} {v['median']:.1f} ms" for k, v in copies.items()),
              "copy_ms": copies, "copy_gb_per_s": kv_bytes / bound / 1e6,
              "repeats": args.repeats, "unit": "ms per compression (all layers): median and min of the repeats",
              "results": results, **environment()}
    _report(record)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "select.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out / 'select.json'}")
    return record


def _report(record: dict) -> None:
    """Print the table and the environment."""
    s = record["shape"]
    print(f"one compression: {s['layers']} layers x {s['heads']} KV heads x {s['dim']} dims, "
          f"{s['candidates']} -> {s['keep']} visual tokens per head ({s['slots']} slots x "
          f"{s['tokens_per_slot']}), {s['kv_bytes'] / 1e9:.2f} GB of keys and values")
    print(f"bound: {record['bound']} ({record['copy_gb_per_s']:.1f} GB/s)")
    print(f"{'config':<18}{'mlx ms':>19}{'torch ms':>19}{'bound':>8}{'mlx/bound':>11}"
          f"{'torch/bound':>13}{'mlx/torch':>11}")
    for r in record["results"]:
        mlx_ms, torch_ms = r["mlx_ms"], r["torch_ms"]
        print(f"{r['config']:<18}{mlx_ms['median']:>10.1f} / {mlx_ms['min']:<6.1f}"
              f"{torch_ms['median']:>10.1f} / {torch_ms['min']:<6.1f}{r['bound_ms_median']:>8.1f}"
              f"{r['mlx_over_bound']:>11.2f}{r['torch_over_bound']:>13.2f}{r['mlx_over_torch']:>11.2f}")
    print(f"BLAS (MLX): {record['blas']}")
    threads = record["threads"]
    print(f"threads: torch {threads['torch']}, os.cpu_count {threads['os_cpu_count']}; "
          f"load average (1 min) {record['load_average_1m']:.1f}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    print(f"machine: {record['machine']['platform']} ({record['machine']['processor']})")
