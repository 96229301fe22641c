"""Train the model organism in PyTorch: python -m infinipot_mlx.organism.train_torch.

The same model (transformers' Qwen2_5_VLForConditionalGeneration, loaded from a checkpoint
folder in the published hub layout), the same batches (organism.prompts), the same loss
as organism.train's MLX loss_fn, and a checkpoint written back in the published layout,
which mlx_vlm.load opens with its unmodified classes. On the shared 2-core machine a step
at 1 thread took about as long as MLX's at 2 (1.2 s against 0.9-1.5 s; at 2 threads torch's
OpenMP spins against other work and is slower): `python -m infinipot_mlx.bench train-step`,
figures in docs/ORGANISM_TRAINING.md. Run it with OMP_NUM_THREADS=1 on a shared machine.

Run it in a process where the optimized BLAS for MLX is not preloaded (INFINIPOT_BLAS=off):
a system OpenBLAS loaded with RTLD_GLOBAL slows torch's matmuls 1.3-12x. main() re-executes
itself with INFINIPOT_BLAS=off when it finds the BLAS loaded. This module never imports mlx.

Notation: B videos, V video tokens per video, L sequence length, A answer tokens, E hidden.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data, weights_dir
from .prompts import PromptBuilder, batch_arrays, episode_prompts

HUB_NAMES = (("model.visual.", "visual."), ("model.language_model.", "model."))
LONG = ("ids", "pos", "t_idx", "t_ids", "aux", "q_idx", "q_ids", "grid_thw", "answer_idx", "answer_ids")


def load_model(folder: str | Path, scratch: bool = False):
    """transformers' Qwen2.5-VL, float32, from a hub-layout folder, in training mode
    (scratch: the folder's config with freshly initialized weights)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    if scratch:
        config = AutoConfig.from_pretrained(str(folder))
        return Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32).train()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32)
    return model.train()


def load_tokenizer(folder: str | Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """prompts.batch_arrays' numpy arrays as torch tensors (indices int64, mask bool)."""
    out = {}
    for k, v in arrays.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.long() if k in LONG else t
    return out


def hidden_states(model, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision tower, video features spliced at video_at, LM body -> (B, L, E), and the
    video features (B, V, E). The mirror of organism.model.hidden_states."""
    lm, at = model.model.language_model, int(t["video_at"])
    B = t["ids"].shape[0]
    vis = model.model.visual(t["pixels"], grid_thw=t["grid_thw"]).pooler_output  # (B*V, E)
    vis = vis.reshape(B, -1, vis.shape[-1])  # (B, V, E)
    emb = lm.embed_tokens(t["ids"])  # (B, L, E)
    emb = torch.cat([emb[:, :at], vis, emb[:, at + vis.shape[1]:]], dim=1)
    mask = {"full_attention": t["mask"]} if "mask" in t else None  # None: plain causal
    out = lm(inputs_embeds=emb, position_ids=t["pos"], attention_mask=mask, use_cache=False)
    return out.last_hidden_state, vis


def logits_at(model, hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Logits (tied embedding) at sequence positions idx (B, A). -> (B, A, vocab)."""
    h = torch.take_along_dim(hidden, idx[..., None], dim=1)  # (B, A, E)
    return h @ model.model.language_model.embed_tokens.weight.T


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2), ids.flatten(), reduction="none").view(ids.shape)


def word_loss(model, states: torch.Tensor, t: dict, rows: tuple[int, int]) -> torch.Tensor:
    """Mean weighted -log p of each video token's words t["aux"][:, rows]. states (B, V, E)."""
    logp = torch.log_softmax(states @ model.model.language_model.embed_tokens.weight.T, -1)  # (B, V, vocab)
    targets = t["aux"][:, list(rows)].transpose(1, 2)  # (B, V, 2)
    picked = torch.take_along_dim(logp, targets, dim=-1).mean(-1)  # (B, V)
    return -(picked * t["aux_w"]).sum() / t["aux_w"].sum()


def loss_fn(model, t: dict, aux_weight: float = 0.5, input_aux_weight: float = 0.0,
            asked_weight: float = 0.0) -> torch.Tensor:
    """organism.model.loss_fn in torch: answer cross-entropy plus the same auxiliary losses."""
    hidden, vis = hidden_states(model, t)
    loss = (_ce(logits_at(model, hidden, t["t_idx"]), t["t_ids"]) * t["t_w"]).sum() / t["t_w"].sum()
    at, V = int(t["video_at"]), t["aux"].shape[-1]
    if aux_weight:
        loss = loss + aux_weight * word_loss(model, hidden[:, at:at + V], t, (0, 1))
    if input_aux_weight:
        loss = loss + input_aux_weight * word_loss(model, vis, t, (2, 1))
    if asked_weight and float(t["q_w"].sum()) > 0:
        ce = _ce(logits_at(model, hidden, t["q_idx"]), t["q_ids"])
        loss = loss + asked_weight * (ce * t["q_w"]).sum() / t["q_w"].sum()
    return loss


def answer_arrays(prompts) -> dict[str, np.ndarray]:
    """(B, Q) index predicting each answer's first token, that token, its qtype index (-1 pad)."""
    Q = max(len(p.answers) for p in prompts)
    idx, ids, qt = (np.full((len(prompts), Q), v, np.int64) for v in (0, 0, -1))
    for b, p in enumerate(prompts):
        first = dict(p.targets)  # index -> token id
        for a, (i, qtype) in enumerate(p.answers):
            idx[b, a], ids[b, a], qt[b, a] = i, first[i], data.QTYPES.index(qtype)
    return {"answer_idx": idx, "answer_ids": ids, "answer_qtype": qt}


@torch.no_grad()
def answer_hits(model, t: dict) -> dict[str, list[bool]]:
    """Greedy first-answer-token hits per question type (teacher-forced, one forward)."""
    was = model.training
    model.eval()
    hidden, _ = hidden_states(model, t)
    model.train(was)
    pred = logits_at(model, hidden, t["answer_idx"]).argmax(-1)  # (B, Q)
    hits: dict[str, list[bool]] = {q: [] for q in data.QTYPES}
    for ok, q in zip((pred == t["answer_ids"]).flatten().tolist(), t["answer_qtype"].flatten().tolist()):
        if q >= 0:
            hits[data.QTYPES[q]].append(bool(ok))
    return hits


def accuracy(hits: dict[str, list[bool]]) -> dict[str, float]:
    acc = {q: float(np.mean(v)) for q, v in hits.items() if v}
    acc["mean"] = float(np.mean(list(acc.values())))
    return acc


class Step:
    """Model, AdamW and one training step (clip at 1.0), as organism.train.Trainer.train_step."""

    def __init__(self, model, lr: float = 2e-3, weight_decay: float = 0.01, **loss_kw):
        self.model, self.loss_kw = model, loss_kw
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def __call__(self, t: dict, lr: float | None = None) -> float:
        if lr is not None:
            for group in self.opt.param_groups:
                group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss = loss_fn(self.model, t, **self.loss_kw)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return float(loss.detach())


def soften_attention(model, factor: float) -> None:
    """Scale every LM layer's attention logits by factor (q_proj and k_proj, weights and
    biases, by sqrt(factor); M-RoPE is linear, so the logits scale by exactly factor)."""
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.mul_(factor ** 0.5)
                proj.bias.mul_(factor ** 0.5)


def hub_state(model) -> dict[str, torch.Tensor]:
    """Parameters under the published checkpoint's names (lm_head left out: tied)."""
    out = {}
    for name, value in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        for ours, theirs in HUB_NAMES:
            if name.startswith(ours):
                name = theirs + name[len(ours):]
                break
        out[name] = value.detach().to(torch.float32).contiguous().clone()
    return out


def save_checkpoint(model, source: str | Path, out_dir: str | Path) -> Path:
    """Write model's weights as model.safetensors beside a copy of source's other files
    (config, tokenizer, processor configs), atomically (a sibling temp folder, then rename)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json",
                                                               "README.md", "organism_training.json"))
    save_file(hub_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def video_batch(builder: PromptBuilder, pad_id: int, seeds: list[int], opts: data.VideoOptions,
                rich: bool, independent: bool) -> dict[str, torch.Tensor]:
    """Tensors of the episodes of seeds, with answer_arrays for accuracy."""
    prompts, frames = episode_prompts(builder, seeds, opts, rich, independent)
    arrays = batch_arrays(prompts, frames, pad_id, builder.word_id["no"])
    return tensors({**arrays, **answer_arrays(prompts)})


def lr_at(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak (organism.train.lr_at)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def ensure_blas_off(argv: list[str], module: str) -> None:
    """Re-run `python -m module argv` with INFINIPOT_BLAS=off if the package preloaded a BLAS."""
    from .. import _blas

    if _blas.loaded_blas and os.environ.get("INFINIPOT_BLAS") != "off":
        env = {**os.environ, "INFINIPOT_BLAS": "off"}
        os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", type=Path, default=weights_dir(), help="checkpoint folder to start from")
    p.add_argument("--out", type=Path, default=Path("runs/organism_torch"))
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aux-weight", type=float, default=1.0)
    p.add_argument("--independent", type=float, default=0.5, help="share of batches with independent turns")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-videos", type=int, default=64)
    p.add_argument("--soften-attention", type=float, default=1.0,
                   help="scale the LM's attention logits by this at the start (0.01 un-saturates the shipped weights)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Train on fresh 32-frame training videos; evaluate on "val" (independent turns)."""
    if argv is None:  # a command: never leave an OpenBLAS preloaded under torch
        argv = sys.argv[1:]
        ensure_blas_off(argv, "infinipot_mlx.organism.train_torch")
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model, tok = load_model(args.init), load_tokenizer(args.init)
    if args.soften_attention != 1.0:
        soften_attention(model, args.soften_attention)
    builder, pad = PromptBuilder(tok), tok.token_to_id("<|endoftext|>")
    step, rng, t0, history, best = Step(model, args.lr, aux_weight=args.aux_weight), np.random.default_rng(args.seed), time.time(), [], -1.0
    val = [video_batch(builder, pad, [data.split_seed("val", i) for i in range(lo, min(lo + 16, args.eval_videos))],
                       data.VideoOptions(), False, True) for lo in range(0, args.eval_videos, 16)]
    for k in range(1, args.steps + 1):
        progress = max((time.time() - t0) / (60 * args.minutes), k / args.steps)
        seeds = [int(s) for s in rng.integers(0, data.SPLIT_BASE["test"], size=args.batch)]
        loss = step(video_batch(builder, pad, seeds, data.VideoOptions(), True, rng.random() < args.independent),
                    lr_at(k - 1, progress, args.lr, args.warmup))
        if k % args.eval_every == 0 or progress >= 1:
            hits = [answer_hits(model, v) for v in val]
            acc = accuracy({q: sum((h[q] for h in hits), []) for q in data.QTYPES})
            history.append({"step": k, "minutes": (time.time() - t0) / 60, "loss": loss, **acc})
            print(json.dumps(history[-1]), flush=True)
            save_checkpoint(model, args.init, args.out / "checkpoint")
            if acc["mean"] > best:
                best = acc["mean"]
                save_checkpoint(model, args.init, args.out / "best")
            (args.out / "history.json").write_text(json.dumps(history, indent=1))
        if progress >= 1:
            break


if __name__ == "__main__":
    main()
