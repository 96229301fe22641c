"""Why "was there X?" and "where" fail: tokens, attention and linear probes of a checkpoint.

`python -m infinipot_mlx.organism.diagnose [--weights DIR] [--videos 64] [--split val] [--out FILE.json]`

Every video is asked "Was there a {c} shape?" for each of the 6 colours, one question per
prompt (plain causal, transformers' eager attention), so each answer sees only the video:
- tokens: the question's colour token against the answer's (ids, embedding cosine);
- attention: per layer, the answer position's attention (mean over heads) on the question's
  colour token, on the video tokens that show the asked colour, and on an average video
  token, and its entropy per head (0: all on one token);
- probes (logistic regression fitted on the first half of the videos, scored on the rest):
  each video token's colour (7 classes) from the LM input and from every layer's output at
  video tokens: is the colour in the video tokens? And the yes/no answer from every layer's
  output at the question's colour token and at the answer position: does the fact reach
  the place the answer is read from? Beside them, the model's own yes/no accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import data, weights_dir
from . import train_torch as tt
from .prompts import PromptBuilder, batch_arrays


def presence_prompts(builder: PromptBuilder, n_videos: int, split: str = "val", n_frames: int = 32):
    """Per (video, colour): a one-question prompt; frames; truth; token colours (S*9,)."""
    rows = []
    for i in range(n_videos):
        ep = data.generate(data.split_seed(split, i), data.VideoOptions(n_frames=n_frames))
        seen = {e.colour for e in ep.events}
        colours = [c for slot in data.token_events(ep.events, n_frames) for c in slot]
        for c in data.COLOURS:
            qa = [(data.QUESTIONS["present"].format(colour=c), "yes" if c in seen else "no", "present")]
            p = builder.build(n_frames // 2, qa)
            p.aux = builder.aux_targets(data.token_events(ep.events, n_frames))
            rows.append((i, c, p, ep.frames, c in seen, colours))
    return rows


def fit_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, steps: int = 300) -> float:
    """Balanced held-out accuracy of a logistic-regression probe (standardized x)."""
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    classes = np.unique(y)
    yi = np.searchsorted(classes, y)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(yi)
    w = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.Adam(w.parameters(), lr=0.05, weight_decay=1e-3)
    tr = torch.tensor(train)
    counts = torch.bincount(yt[tr], minlength=len(classes)).float().clamp(min=1)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(w(xt[tr]), yt[tr], weight=counts.sum() / counts).backward()
        opt.step()
    with torch.no_grad():
        pred = w(xt[~tr]).argmax(-1).numpy()
    truth = yi[~train]
    return float(np.mean([np.mean(pred[truth == k] == k) for k in np.unique(truth)]))


@torch.no_grad()
def collect(model, builder, pad, rows, per: int = 12):
    """Hidden states (layers+1, ...) at video tokens, colour token, answer position; attention
    shares and entropies at the answer position; the model's answer."""
    lm = model.model.language_model
    out = {"video": [], "colour_tok": [], "answer": [], "pred": [], "att": [], "entropy": []}
    for lo in range(0, len(rows), per):
        chunk = rows[lo:lo + per]
        arrays = batch_arrays([r[2] for r in chunk], np.stack([r[3] for r in chunk]), pad, builder.word_id["no"])
        t = tt.tensors(arrays)
        at, V = int(t["video_at"]), t["aux"].shape[-1]
        vis = model.model.visual(t["pixels"], grid_thw=t["grid_thw"]).pooler_output.reshape(len(chunk), V, -1)
        emb = lm.embed_tokens(t["ids"])
        emb = torch.cat([emb[:, :at], vis, emb[:, at + V:]], 1)
        res = lm(inputs_embeds=emb, position_ids=t["pos"], output_hidden_states=True, output_attentions=True,
                 use_cache=False)
        hs = torch.stack(res.hidden_states)  # (layers+1, B, L, E); the last is after the final norm
        for b, (_, colour, p, _, _, _) in enumerate(chunk):
            ans = p.answers[0][0]
            ctok = max(j for j, tid in enumerate(p.ids[:ans + 1]) if tid == builder.question_word_id[colour])
            out["video"].append(hs[:, b, at:at + V].numpy())
            out["colour_tok"].append(hs[:, b, ctok].numpy())
            out["answer"].append(hs[:, b, ans].numpy())
            shown = np.array([c == colour for c in chunk[b][5]])
            heads = np.stack([a[b, :, ans].numpy() for a in res.attentions])  # (layers, H, L)
            att = heads.mean(1)  # (layers, L)
            out["entropy"].append(-(heads * np.log(heads + 1e-12)).sum(-1).mean(-1))  # (layers,) nats
            out["att"].append([att[:, ctok], att[:, at:at + V][:, shown].sum(1) if shown.any() else
                               np.full(len(att), np.nan), att[:, at:at + V].mean(1)])
        logits = tt.logits_at(model, hs[-1], torch.tensor([[r[2].answers[0][0]] for r in chunk]))
        out["pred"] += logits[:, 0].argmax(-1).tolist()
    return out


def diagnose(folder: Path, n_videos: int, split: str = "val") -> dict:
    model, tok = tt.load_model(folder).eval(), tt.load_tokenizer(folder)
    model.set_attn_implementation("eager")
    builder, pad = PromptBuilder(tok), tok.token_to_id("<|endoftext|>")
    emb = model.model.language_model.embed_tokens.weight.detach()
    unit = emb / emb.norm(dim=1, keepdim=True)
    tokens = {c: {"question_token": tok.id_to_token(q), "answer_token": tok.id_to_token(builder.word_id[c]),
                  "same_id": q == builder.word_id[c], "cosine": float(unit[q] @ unit[builder.word_id[c]])}
              for c, q in builder.question_word_id.items()}
    rows = presence_prompts(builder, n_videos, split)
    got = collect(model, builder, pad, rows)
    truth = np.array([r[4] for r in rows])
    pred = np.array(got["pred"]) == builder.word_id["yes"]
    first_half = np.array([r[0] < n_videos // 2 for r in rows])
    att = np.array(got["att"])  # (N, 3, layers)
    yes = truth[:, None]
    report = {"weights": str(folder), "split": split, "videos": n_videos, "tokens": tokens,
              "model_present_accuracy": float(np.mean(pred == truth)), "said_yes": float(pred.mean()),
              "attention_from_answer": {
                  "question_colour_token": np.nanmean(att[:, 0], 0).round(4).tolist(),
                  "asked_colour_video_tokens_sum (shown)": np.nanmean(att[truth][:, 1], 0).round(4).tolist(),
                  "mean_video_token": np.nanmean(att[:, 2], 0).round(5).tolist(),
                  "entropy_nats (uniform over the prompt: ln L)": np.mean(got["entropy"], 0).round(3).tolist(),
                  "note": f"per layer; {int(yes.sum())} shown / {int((~yes).sum())} absent questions"}}
    video = np.stack(got["video"][::6])  # one prompt per video: (n, layers+1, V, E)
    colours = np.array([c or "none" for r in rows[::6] for c in r[5]])
    tok_train = np.repeat(np.arange(n_videos) < n_videos // 2, video.shape[2])
    report["probe_video_token_colour"] = [fit_probe(video[:, k].reshape(-1, video.shape[-1]), colours, tok_train)
                                          for k in range(video.shape[1])]
    for where in ("colour_tok", "answer"):
        h = np.stack(got[where])  # (N, layers+1, E)
        report[f"probe_present_at_{where}"] = [fit_probe(h[:, k], truth, first_half) for k in range(h.shape[1])]
    return report


def main(argv=None) -> None:
    if argv is None:
        argv = sys.argv[1:]
        tt.ensure_blas_off(argv, "infinipot_mlx.organism.diagnose")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=weights_dir())
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--split", default="val", help="videos to ask (val: held out from every training run)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    report = diagnose(args.weights, args.videos, args.split)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
