"""One training step of the model organism in MLX and in PyTorch, same batch, same weights.

`python -m infinipot_mlx.bench train-step [--rounds 2] [--steps 4] [--threads 1,2] [--out DIR]`

One batch of training videos (organism.prompts: the batching both trainers use, rich
shuffled questions, 32 frames) is written to out/train_step_batch.npz. Each round then
starts one process per framework (alternating which goes first): it loads the checkpoint
folder (the shipped organism unless --weights), computes the loss of the batch without an
update, and times --steps AdamW steps on it (MLX: organism.train's step with the preloaded
OpenBLAS; torch: transformers' Qwen2_5_VLForConditionalGeneration with its own BLAS, in a
process started with INFINIPOT_BLAS=off, because a preloaded OpenBLAS slows torch 1.3-12x).
The first step of each process is warm-up and left out of the median. Each framework runs
at every --threads count: on a shared 2-core machine torch's OpenMP at 2 threads spins
against the other jobs and can be several times slower than at 1.

The two losses must agree (float32, same weights: within --tolerance), else the timings
compare different work: the run then reports the mismatch and exits 1.
Writes out/train_step.json with every step time, the load average before and after each
process and the machine/versions header (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from .common import THREAD_ENV, environment, load_average, parse_list, print_environment, require_positive, write_json
from .inputs import child_env
from .train_step_child import MARKER


def add_arguments(p) -> None:
    p.add_argument("--out", type=Path, default=Path("bench_out/train_step"))
    p.add_argument("--weights", type=Path, default=None, help="checkpoint folder (default: the shipped organism)")
    p.add_argument("--batch", type=int, default=8, help="videos per batch (training default 8)")
    p.add_argument("--frames", type=int, default=32, help="frames per video (even)")
    p.add_argument("--steps", type=int, default=4, help="steps timed per process (the first is warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="processes per framework and thread count, alternating")
    p.add_argument("--threads", default="1,2",
                   help="thread counts to time (OMP/OPENBLAS/MKL_NUM_THREADS of each process)")
    p.add_argument("--independent", action="store_true", help="independent turns (a 4-D mask)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |loss_mlx - loss_torch|")


def write_batch(path: Path, weights: Path, n: int, n_frames: int, independent: bool, seed: int) -> dict:
    """The batch as numpy arrays in path (.npz); returns its shapes."""
    from tokenizers import Tokenizer

    from ..organism import data
    from ..organism.prompts import PromptBuilder, batch_arrays, episode_prompts

    tok = Tokenizer.from_file(str(weights / "tokenizer.json"))
    builder = PromptBuilder(tok)
    seeds = [int(s) for s in np.random.default_rng(seed).integers(0, data.SPLIT_BASE["test"], size=n)]
    prompts, frames = episode_prompts(builder, seeds, data.VideoOptions(n_frames=n_frames), True, independent)
    arrays = batch_arrays(prompts, frames, tok.token_to_id("<|endoftext|>"), builder.word_id["no"])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return {"seeds": seeds, "ids": list(arrays["ids"].shape), "pixels": list(arrays["pixels"].shape),
            "mask": "independent turns" if "mask" in arrays else "causal"}


def run_side(framework: str, threads: int, batch: Path, weights: Path, steps: int) -> dict:
    """One child process with `threads` threads; its JSON, with the load average before and after it."""
    env = child_env() | {name: str(threads) for name in THREAD_ENV}
    if framework == "torch":
        env["INFINIPOT_BLAS"] = "off"  # no OpenBLAS preloaded into torch's process
    cmd = [sys.executable, "-m", "infinipot_mlx.bench.train_step_child", framework, str(batch), str(weights),
           "--steps", str(steps)]
    before = load_average()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{framework} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len(MARKER):])
    result.update(threads=threads, load_before=before, load_after=load_average())
    return result


def summarize(runs: list[dict]) -> dict:
    """Per framework and thread count ("mlx@2"): median step time (warm-up steps left out),
    every step, the loss; the best of each framework; the loss difference."""
    out: dict = {"configs": {}}
    for key in dict.fromkeys(f"{r['framework']}@{r['threads']}" for r in runs):
        mine = [r for r in runs if f"{r['framework']}@{r['threads']}" == key]
        steady = [s for r in mine for s in r["step_s"][1:]]
        out["configs"][key] = {"median_step_s": statistics.median(steady), "min_step_s": min(steady),
                               "steps": steady, "loss": mine[0]["loss"],
                               "loads": [[r["load_before"][0], r["load_after"][0]] for r in mine],
                               "threads": mine[0]["environment"]["threads"],
                               "blas": mine[0]["environment"]["blas"]}
    for fw in ("mlx", "torch"):
        best = min((k for k in out["configs"] if k.startswith(fw + "@")),
                   key=lambda k: out["configs"][k]["median_step_s"])
        out[fw] = {"best": best, **out["configs"][best]}
    out["torch_faster_by"] = out["mlx"]["median_step_s"] / out["torch"]["median_step_s"]
    out["loss_difference"] = abs(out["mlx"]["loss"] - out["torch"]["loss"])
    return out


def run(args) -> None:
    require_positive(args, "batch", "frames", "rounds", "tolerance")
    require_positive(args, "steps", minimum=2, strict=False)
    threads = parse_list(args.threads, "threads", kind=int)
    require_positive(argparse.Namespace(threads=threads), "threads")
    from ..organism import weights_dir

    weights = args.weights or weights_dir()
    record = {"environment": environment(), "weights": str(weights), "rounds": args.rounds,
              "steps_per_process": args.steps, "batch_videos": args.batch, "frames": args.frames}
    record["load_average_start"] = record["environment"]["load_average"]
    batch = args.out / "train_step_batch.npz"
    record["batch"] = write_batch(batch, weights, args.batch, args.frames, args.independent, args.seed)
    runs = []
    for r in range(args.rounds):
        for n in threads:
            for fw in ("mlx", "torch") if r % 2 == 0 else ("torch", "mlx"):
                runs.append(run_side(fw, n, batch, weights, args.steps))
                print(f"round {r} {fw}@{n}: loss {runs[-1]['loss']:.6f}, steps "
                  + ", ".join(f"{s * 1000:.0f}" for s in runs[-1]["step_s"]) + " ms", flush=True)
    record.update(runs=runs, summary=summarize(runs), load_average_end=load_average())
    s = record["summary"]
    record["losses_agree"] = s["loss_difference"] <= args.tolerance
    print_environment(record["environment"] | {"load_average_start": record["load_average_start"],
                                                 "load_average_end": record["load_average_end"]})
    print(f"loss: mlx {s['mlx']['loss']:.6f}, torch {s['torch']['loss']:.6f} "
          f"(difference {s['loss_difference']:.2e}, tolerance {args.tolerance:g})")
    for key, c in s["configs"].items():
        print(f"median step {key} threads: {c['median_step_s'] * 1000:.0f} ms (min {c['min_step_s'] * 1000:.0f}; "
              f"load 1 min before/after {c['loads']})")
    print(f"best: {s['mlx']['best']} {s['mlx']['median_step_s'] * 1000:.0f} ms, {s['torch']['best']} "
          f"{s['torch']['median_step_s'] * 1000:.0f} ms (torch faster by {s['torch_faster_by']:.2f}x)")
    write_json(args.out, "train_step.json", record)
    if not record["losses_agree"]:
        print("the losses differ: the two steps do not compute the same thing", file=sys.stderr)
        sys.exit(1)
