"""Train the model organism on CPU in MLX: python -m infinipot_mlx.organism.train.

AdamW on the answer tokens only, a curriculum of short videos first (STAGES), periodic
held-out evaluation on the "val" split, and a checkpoint in the published hub layout
(safetensors with hub names, config.json, tokenizer, processor configs) written to
--out/checkpoint at every evaluation and to --out/best when validation accuracy improves,
so a usable model exists even if the run is stopped early.

Notation: B videos per batch, F frames per video, A answer tokens per video.
"""

from __future__ import annotations

import argparse
import json
import math
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import infinipot_mlx  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from tqdm import tqdm

from . import data
from . import model as om
from .prompts import episode_prompts
from .save import save_checkpoint


@dataclass(frozen=True, order=True)
class Stage:
    """A curriculum stage: from `start` (fraction of the run) on, videos look like this."""

    start: float
    n_frames: int
    max_events: int
    max_distractors: int


CURRICULUM = "0:8:1:0,0.1:16:2:1,0.3:32:4:2"  # start:frames:max_events:max_distractors,...


def parse_curriculum(text: str) -> tuple[Stage, ...]:
    """"0:8:1:0,0.3:32:4:2" -> stages sorted by start; the first must start at 0."""
    stages = sorted(Stage(float(a), int(b), int(c), int(d))
                    for a, b, c, d in (part.split(":") for part in text.split(",")))
    if not stages or stages[0].start != 0:
        raise ValueError(f"curriculum {text!r} must have a stage starting at 0")
    return tuple(stages)


STAGES = parse_curriculum(CURRICULUM)


def stage_at(progress: float, stages: tuple[Stage, ...] = STAGES) -> Stage:
    return [s for s in stages if s.start <= progress][-1]


def make_batch(builder: om.PromptBuilder, seeds: list[int], opts: data.VideoOptions,
               pad_id: int, rich: bool = False, independent: bool = False) -> om.Batch:
    """The batch of the episodes of `seeds`, rendered with `opts`.

    rich: data.training_questions instead of the test set's; independent: every question
    sees only the video, not the earlier turns (see PromptBuilder.build).
    """
    prompts, frames = episode_prompts(builder, seeds, opts, rich, independent)
    return om.make_batch(prompts, frames, pad_id, builder.word_id["no"])


def batch_stream(builder, pad_id: int, batch: int, seed: int, stage_fn, rich: bool,
                 independent: float, depth: int = 2):
    """Training batches made in a background thread (numpy rendering overlaps MLX compute)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    rng = np.random.default_rng(seed)

    def work():
        while True:
            st = stage_fn()
            opts = data.VideoOptions(st.n_frames, 1, st.max_events, st.max_distractors)
            seeds = [int(s) for s in rng.integers(0, data.SPLIT_BASE["test"], size=batch)]
            q.put(make_batch(builder, seeds, opts, pad_id, rich, rng.random() < independent))

    threading.Thread(target=work, daemon=True).start()
    while True:
        yield q.get()


def evaluate(model, builder, pad_id: int, split: str = "val", n: int = 64, per_batch: int = 16,
             n_frames: int = 32, independent: bool = False) -> dict[str, float]:
    """Teacher-forced greedy accuracy of the first answer token, per question type.

    independent: each question sees only the video (else the earlier turns too, in order).
    """
    hits: dict[str, list[bool]] = {q: [] for q in data.QTYPES}
    opts = data.VideoOptions(n_frames=n_frames)
    for lo in range(0, n, per_batch):
        seeds = [data.split_seed(split, i) for i in range(lo, min(n, lo + per_batch))]
        batch = make_batch(builder, seeds, opts, pad_id, independent=independent)
        hidden = om.hidden_states(model, batch)
        for b, p in enumerate(batch.prompts):
            idx = mx.array([[i for i, _ in p.answers]])
            pred = om.logits_at(model, hidden[b:b + 1], idx).argmax(-1)[0].tolist()
            truth = [tid for i, tid in p.targets if i in {j for j, _ in p.answers}]
            for (_, qtype), yhat, y in zip(p.answers, pred, truth):
                hits[qtype].append(yhat == y)
    acc = {q: float(np.mean(v)) for q, v in hits.items() if v}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


def lr_at(step: int, progress: float, peak: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak at the end of the run."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=100000, help="step budget (whichever ends first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/organism"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-videos", type=int, default=64)
    p.add_argument("--eval-only", type=Path, default=None, help="evaluate this checkpoint and exit")
    p.add_argument("--eval-split", default="test", help="split for --eval-only (test, pan, ...)")
    p.add_argument("--curriculum", type=parse_curriculum, default=STAGES,
                   help=f"start:frames:max_events:max_distractors,... (default {CURRICULUM})")
    p.add_argument("--aux-weight", type=float, default=1.0, help="per-video-token colour/cell loss")
    p.add_argument("--input-aux-weight", type=float, default=0.0,
                   help="the same loss on the video features (the LM's input at video tokens)")
    p.add_argument("--asked-weight", type=float, default=0.0,
                   help="loss at each colour a question names: its cell, or 'no' if not shown")
    p.add_argument("--asked-span", action="store_true",
                   help="the asked target at every token from the colour to the one before the answer's")
    p.add_argument("--questions", choices=("rich", "test"), default="rich",
                   help="training questions: data.training_questions, or the test set's")
    p.add_argument("--independent", type=float, default=0.5,
                   help="share of batches whose questions cannot see earlier turns")
    p.add_argument("--init", type=Path, default=None, help="start from this checkpoint folder")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-frames", type=int, default=32)
    p.add_argument("--sizes", type=json.loads, default={}, help='JSON overrides of model.SIZES')
    return p.parse_args(argv)


def log(msg: str) -> None:
    tqdm.write(time.strftime("%H:%M:%S ") + msg)


def load_checkpoint(folder: Path):
    """(model, tokenizer, config) of a checkpoint folder written by save_checkpoint."""
    from mlx_vlm import load
    from tokenizers import Tokenizer

    model, _ = load(str(folder))
    config = json.loads((folder / "config.json").read_text())
    return model, Tokenizer.from_file(str(folder / "tokenizer.json")), config


class Trainer:
    """Model, optimizer, budget and checkpoints of one training run."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        mx.random.seed(args.seed)
        if args.init is None:
            self.tokenizer = om.build_tokenizer()
            self.config = om.make_config(self.tokenizer, args.sizes)
            self.model = om.build_model(self.config)
        else:
            self.model, self.tokenizer, self.config = load_checkpoint(args.init)
            self.model.train()
        self.builder = om.PromptBuilder(self.tokenizer, asked_span=args.asked_span)
        self.pad_id = self.tokenizer.token_to_id("<|endoftext|>")
        self.opt = optim.AdamW(learning_rate=args.lr, weight_decay=0.01)
        self.step, self.t0, self.best = 0, time.time(), -1.0
        self.history: list[dict] = []

    def progress(self) -> float:
        by_time = (time.time() - self.t0) / (60 * self.args.minutes)
        return min(1.0, max(by_time, self.step / self.args.steps))

    def train_step(self, batch: om.Batch) -> float:
        self.opt.learning_rate = lr_at(self.step, self.progress(), self.args.lr, self.args.warmup)
        loss_and_grad = nn.value_and_grad(self.model, om.loss_fn)
        loss, grads = loss_and_grad(self.model, batch, self.args.aux_weight, self.args.input_aux_weight,
                                    self.args.asked_weight)
        grads, _ = optim.clip_grad_norm(grads, 1.0)
        self.opt.update(self.model, grads)
        mx.eval(self.model.parameters(), self.opt.state, loss)
        self.step += 1
        return loss.item()

    def checkpoint(self, loss: float) -> dict:
        acc = evaluate(self.model, self.builder, self.pad_id, n=self.args.eval_videos,
                       n_frames=self.args.eval_frames, independent=True)
        seq = evaluate(self.model, self.builder, self.pad_id, n=self.args.eval_videos,
                       n_frames=self.args.eval_frames)
        acc["sequential_mean"] = seq["mean"]
        record = {"step": self.step, "minutes": (time.time() - self.t0) / 60, "loss": loss,
                  "stage_frames": stage_at(self.progress(), self.args.curriculum).n_frames, **acc}
        self.history.append(record)
        save_checkpoint(self.model, self.tokenizer, self.config, self.args.out / "checkpoint")
        if acc["mean"] > self.best:
            self.best = acc["mean"]
            save_checkpoint(self.model, self.tokenizer, self.config, self.args.out / "best")
        (self.args.out / "history.json").write_text(json.dumps(self.history, indent=1))
        log(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        return record

    def run(self) -> None:
        args = self.args
        args.out.mkdir(parents=True, exist_ok=True)
        log(f"params={om.n_params(self.model)} config={self.config.get('hidden_size')}h x "
            f"{self.config.get('num_hidden_layers')}L args={vars(args)}")
        stream = batch_stream(self.builder, self.pad_id, args.batch, args.seed,
                              lambda: stage_at(self.progress(), args.curriculum),
                              args.questions == "rich", args.independent)
        bar, ema = tqdm(total=args.steps, mininterval=10, smoothing=0.05), None
        while self.progress() < 1.0:
            loss = self.train_step(next(stream))
            ema = loss if ema is None else 0.98 * ema + 0.02 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", frames=stage_at(self.progress(), self.args.curriculum).n_frames)
            if self.step % args.eval_every == 0:
                self.checkpoint(ema)
        bar.close()
        self.checkpoint(ema if ema is not None else float("nan"))
        log(f"done: {self.step} steps in {(time.time() - self.t0) / 60:.1f} min, best val {self.best:.3f}")


def evaluate_checkpoint(folder: Path, split: str, n: int, n_frames: int) -> dict:
    """Teacher-forced accuracy of a checkpoint folder, independent and sequential questions."""
    model, tokenizer, _ = load_checkpoint(folder)
    builder, pad_id = om.PromptBuilder(tokenizer), tokenizer.token_to_id("<|endoftext|>")
    kw = dict(split=split, n=n, n_frames=n_frames)
    return {"split": split, "videos": n, "n_frames": n_frames,
            "independent": evaluate(model, builder, pad_id, independent=True, **kw),
            "sequential": evaluate(model, builder, pad_id, **kw)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.eval_only is not None:
        result = evaluate_checkpoint(args.eval_only, args.eval_split, args.eval_videos, args.eval_frames)
        print(json.dumps(result, indent=1))
        return
    Trainer(args).run()


if __name__ == "__main__":
    main()
