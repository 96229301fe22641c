"""Overfit check: can the organism fit a few training videos, every question type?

`python -m infinipot_mlx.organism.overfit --videos 64 --minutes 8 --out runs/overfit/NAME`

Trains (organism.train_torch: transformers' Qwen2.5-VL, the same loss and batches as the MLX
trainer) on a fixed pool of --videos training videos with their fixed rich question sets
(data.training_questions: every type each video can answer), every turn independent (each
question sees only the video). Every --eval-every steps it records the teacher-forced
accuracy of the first answer token per question type on the pool ("train") and on
--val-videos held-out videos ("val"). Writes out/history.json, out/curves.png (one line per
question type) and the final weights in the published layout under out/weights.

A model that cannot drive a question type to ~100% on 64 videos cannot learn it from the
data at all; the curves say which types fail and when the others are learnt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data, weights_dir
from . import train_torch as tt
from .prompts import PromptBuilder, batch_arrays, episode_prompts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", type=Path, default=weights_dir(), help="checkpoint folder (config, tokenizer, weights)")
    p.add_argument("--scratch", action="store_true", help="re-initialize the weights (keep config and tokenizer)")
    p.add_argument("--out", type=Path, default=Path("runs/overfit"))
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--val-videos", type=int, default=32)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--eval-every", type=int, default=40)
    p.add_argument("--aux-weight", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--soften-attention", type=float, default=1.0,
                   help="multiply the LM's attention logits by this (q and k projections by its root)")
    p.add_argument("--tie-colour-words", action="store_true",
                   help="start each question colour token (' red') at its answer token's ('red') embedding")
    return p.parse_args(argv)


class Pool:
    """Fixed videos and their prompts; batches of any subset, as tensors."""

    def __init__(self, builder: PromptBuilder, pad: int, seeds: list[int], n_frames: int, rich: bool):
        self.builder, self.pad = builder, pad
        self.prompts, self.frames = episode_prompts(builder, seeds, data.VideoOptions(n_frames=n_frames),
                                                    rich, independent=True)

    def batch(self, rows) -> dict[str, torch.Tensor]:
        prompts = [self.prompts[i] for i in rows]
        arrays = batch_arrays(prompts, self.frames[list(rows)], self.pad, self.builder.word_id["no"])
        return tt.tensors({**arrays, **tt.answer_arrays(prompts)})

    def accuracy(self, model, per: int = 16) -> dict[str, float]:
        hits = [tt.answer_hits(model, self.batch(range(lo, min(lo + per, len(self.prompts)))))
                for lo in range(0, len(self.prompts), per)]
        return tt.accuracy({q: sum((h[q] for h in hits), []) for q in data.QTYPES})


def tie_colour_words(model, builder: PromptBuilder) -> None:
    """Copy each answer colour token's embedding onto the question's colour token."""
    emb = model.model.language_model.embed_tokens.weight
    with torch.no_grad():
        for colour, qid in builder.question_word_id.items():
            emb[qid] = emb[builder.word_id[colour]]


def plot(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, split in zip(axes, ("train", "val")):
        for q in data.QTYPES:
            ax.plot([h["step"] for h in history], [h[split].get(q, np.nan) for h in history], label=q)
        ax.set_title(f"{split} ({'pool' if split == 'train' else 'held out'})")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (first answer token)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None) -> None:
    if argv is None:  # a command: never leave an OpenBLAS preloaded under torch
        argv = sys.argv[1:]
        tt.ensure_blas_off(argv, "infinipot_mlx.organism.overfit")
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model, tok = tt.load_model(args.init, args.scratch), tt.load_tokenizer(args.init)
    builder, pad = PromptBuilder(tok), tok.token_to_id("<|endoftext|>")
    if args.tie_colour_words:
        tie_colour_words(model, builder)
    if args.soften_attention != 1.0:
        tt.soften_attention(model, args.soften_attention)
    pool = Pool(builder, pad, [data.split_seed("train", i) for i in range(args.videos)], args.frames, True)
    val = Pool(builder, pad, [data.split_seed("val", i) for i in range(args.val_videos)], args.frames, False)
    step, rng, t0, history = tt.Step(model, args.lr, aux_weight=args.aux_weight), np.random.default_rng(args.seed), time.time(), []
    args.out.mkdir(parents=True, exist_ok=True)
    order = []
    for k in range(args.steps + 1):
        done = k == args.steps or time.time() - t0 > 60 * args.minutes
        if k % args.eval_every == 0 or done:
            history.append({"step": k, "minutes": (time.time() - t0) / 60, "loss": loss if k else None,
                            "train": pool.accuracy(model), "val": val.accuracy(model)})
            print(json.dumps(history[-1]), flush=True)
            (args.out / "history.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                                "history": history}, indent=1))
        if done:
            break
        if len(order) < args.batch:
            order = list(rng.permutation(args.videos))
        rows, order = order[:args.batch], order[args.batch:]
        loss = step(pool.batch(rows))
    plot(history, args.out / "curves.png", f"{args.videos} videos, {args.out.name}")
    tt.save_checkpoint(model, args.init, args.out / "weights")


if __name__ == "__main__":
    main()
