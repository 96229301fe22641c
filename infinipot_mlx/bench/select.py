"""Time one compression (select_tokens over every layer) in MLX and in the torch reference.

Default shape: Qwen2.5-VL-7B KV (28 layers, 4 KV heads, 128 dims), 32 frames x 256 tokens
cached, keep 24 frames' worth: the paper's block schedule (capacity 32 frames, blocks of
8). One layer's random float32 KV is reused for every layer (the work per layer is the
same; it keeps the benchmark's memory small); layer_idx still varies, so VaN pooling
runs its layer-adaptive kernels. MLX is timed with mx.eval inside the clock. Each backend
is imported only inside its own timing function.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from ..errors import UserError
from .common import environment, require_positive

CONFIGS = {  # label -> select_tokens keyword arguments
    "infinipot_v": dict(method="infinipot_v"),
    "infinipot_v+pool": dict(method="infinipot_v", van_pooling=True),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m infinipot_mlx.bench select`."""
    parser.add_argument("--out", type=Path, default=Path("bench_out/select"),
                        help="output folder for select.json (default bench_out/select)")
    parser.add_argument("--repeats", type=int, default=5, help="timed compressions per backend")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--frames", type=int, default=32, help="frames cached before compressing")
    parser.add_argument("--keep-frames", type=int, default=24, help="frames' worth kept")
    parser.add_argument("--grid", type=int, nargs=2, default=(16, 16), metavar=("ROWS", "COLS"),
                        help="merged grid of a frame; tokens per frame = rows * cols")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch.set_num_threads before timing (default 0: torch's default)")


def check_args(args: argparse.Namespace) -> None:
    """UserError for a size that is not positive, or more frames kept than cached."""
    require_positive(args, "repeats", "layers", "heads", "dim", "frames", "keep_frames", "grid")
    require_positive(args, "torch_threads", strict=False)
    if args.keep_frames > args.frames:
        raise UserError(f"--keep-frames ({args.keep_frames}) must be at most --frames ({args.frames}): "
                        "a compression keeps some of the cached frames")


def _timings_ms(fn, repeats: int) -> dict:
    """Median and min wall time of fn() in ms over `repeats` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median": statistics.median(times), "min": min(times)}


def _time_mlx(keys: np.ndarray, values: np.ndarray, kw: dict, layers: int, repeats: int) -> dict:
    import mlx.core as mx

    from ..mlx.select import select_tokens

    keys, values = mx.array(keys), mx.array(values)
    mx.eval(keys, values)

    def compress():
        mx.eval([select_tokens(keys, values, layer_idx=i, num_layers=layers, **kw)
                 for i in range(layers)])

    return _timings_ms(compress, repeats)


def _time_torch(keys: np.ndarray, values: np.ndarray, kw: dict, layers: int, repeats: int,
                threads: int) -> dict:
    import torch

    from ..reference.select import select_tokens

    keys, values = torch.from_numpy(keys), torch.from_numpy(values)
    if threads > 0:
        torch.set_num_threads(threads)

    def compress():
        with torch.inference_mode():
            [select_tokens(keys, values, layer_idx=i, num_layers=layers, **kw)
             for i in range(layers)]

    return _timings_ms(compress, repeats)


def run(args: argparse.Namespace) -> dict:
    """Time each config in both backends, print a table, write select.json; returns the record."""
    check_args(args)
    tokens = args.grid[0] * args.grid[1]
    n_cand, keep = args.frames * tokens, args.keep_frames * tokens
    rng = np.random.default_rng(0)
    shape = (args.heads, n_cand, args.dim)
    keys, values = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    base = dict(tokens_per_frame=tokens, keep=keep, grid_hw=tuple(args.grid))
    results = []
    for label, config in CONFIGS.items():
        kw = {**base, **config}
        mlx_ms = _time_mlx(keys, values, kw, args.layers, args.repeats)
        torch_ms = _time_torch(keys, values, kw, args.layers, args.repeats, args.torch_threads)
        results.append({"config": label, "mlx_ms": mlx_ms, "torch_ms": torch_ms,
                        "torch_over_mlx": torch_ms["median"] / mlx_ms["median"]})
    record = {"shape": {"layers": args.layers, "heads": args.heads, "dim": args.dim,
                        "frames": args.frames, "tokens_per_frame": tokens, "candidates": n_cand,
                        "keep": keep, "dtype": "float32", "kv_reused_across_layers": True},
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
          f"{s['candidates']} -> {s['keep']} visual tokens per head "
          f"({s['frames']} frames x {s['tokens_per_frame']})")
    print(f"{'config':<18}{'mlx ms':>19}{'torch ms':>19}{'torch/mlx':>11}")
    print(f"{'':<18}{'median / min':>19}{'median / min':>19}{'(median)':>11}")
    for r in record["results"]:
        mlx_ms, torch_ms = r["mlx_ms"], r["torch_ms"]
        print(f"{r['config']:<18}{mlx_ms['median']:>10.1f} / {mlx_ms['min']:<6.1f}"
              f"{torch_ms['median']:>10.1f} / {torch_ms['min']:<6.1f}{r['torch_over_mlx']:>11.2f}")
    print(f"BLAS (MLX): {record['blas']}")
    threads = record["threads"]
    print(f"threads: torch {threads['torch']}, os.cpu_count {threads['os_cpu_count']}; "
          f"load average (1 min) {record['load_average_1m']:.1f}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    print(f"machine: {record['machine']['platform']} ({record['machine']['processor']})")
