"""One framework's side of `bench train-step` (train_step.py) in its own process.

`python -m infinipot_mlx.bench.train_step_child {mlx,torch} BATCH.npz WEIGHTS --steps N`
loads the checkpoint folder, computes the loss of the batch (no update), then times N
training steps (AdamW, clip 1.0, organism.train's and organism.train_torch's steps) on
that same batch, and prints one line: MARKER + JSON. The torch side is started with
INFINIPOT_BLAS=off and imports no mlx until its timings are taken (the environment record
at the end reads mlx's version).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

MARKER = "TRAIN_STEP_RESULT "


def mlx_side(arrays: dict, weights: str, steps: int, aux_weight: float) -> tuple[float, list[float]]:
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from ..organism import model as om
    from ..organism.train import load_checkpoint

    model, _, _ = load_checkpoint(Path(weights))
    model.train()
    batch = om.batch_from_arrays(arrays)
    loss0 = om.loss_fn(model, batch, aux_weight).item()
    opt = optim.AdamW(learning_rate=1e-3, weight_decay=0.01)
    loss_and_grad = nn.value_and_grad(model, om.loss_fn)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss, grads = loss_and_grad(model, batch, aux_weight)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        times.append(time.perf_counter() - t)
    return loss0, times


def torch_side(arrays: dict, weights: str, steps: int, aux_weight: float) -> tuple[float, list[float]]:
    import torch

    from ..organism import train_torch as tt

    model = tt.load_model(weights)
    t = tt.tensors(arrays)
    with torch.no_grad():
        loss0 = float(tt.loss_fn(model, t, aux_weight))
    step = tt.Step(model, 1e-3, aux_weight=aux_weight)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(t)
        times.append(time.perf_counter() - t0)
    return loss0, times


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("framework", choices=("mlx", "torch"))
    p.add_argument("batch")
    p.add_argument("weights")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--aux-weight", type=float, default=1.0)
    args = p.parse_args(argv)
    with np.load(args.batch) as f:
        arrays = dict(f)
    side = mlx_side if args.framework == "mlx" else torch_side
    loss0, times = side(arrays, args.weights, args.steps, args.aux_weight)
    from .common import environment

    env = environment()
    if args.framework == "torch":  # environment()["blas"] is MLX's; torch brings its own
        import re

        import torch

        env["blas"] = "torch: " + ",".join(re.findall(r"BLAS_INFO=([^,\s]+)", torch.__config__.show()) or ["unknown"])
    print(MARKER + json.dumps({"framework": args.framework, "loss": loss0, "step_s": times,
                               "environment": env}), flush=True)


if __name__ == "__main__":
    main()
