"""python -m infinipot_mlx.bench accuracy: answers under a KV cap, on the model organism.

Each held-out synthetic video is streamed through the real StreamSession (block loop,
lazy compression, the real selection) on the bundled organism, then every standard
question is asked in turn (multi-turn, greedy, the answer's first word is compared with
the truth). Methods run unchanged: the same configs a user gets, nothing tuned here.

Budget b means the cap leaves b x (the video's visual tokens) for visual tokens
(capacity = pinned prompt + reserve + b x N_video). The newest block is always whole, so
the smallest room is two slots (one block + one kept slot); a budget below that is
raised to it and the JSON records the budget actually used.

Statistics: 95% CIs by a cluster bootstrap over videos (questions of one video are not
independent); differences against infinipot_v are paired by video.

--kv-bits 16,8,4 compares at equal bytes: budget b is the share a 16-bit cache gets, and a
cache quantized to q bits gets the same bytes, b x 2 / kv_element_bytes(2, q, group) of
the video's tokens (capped at all of them): 1.78x at 8 bits and 3.2x at 4 bits with the
organism's groups of 32 (its head dim; 1.88x and 3.56x with a 7B's groups of 64). Each
quantized run is paired by video with the 16-bit run of the same method and budget.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from ..contract import config
from ..errors import UserError
from .common import environment, parse_list, require_positive, write_json

METHODS = {  # name -> (method, config overrides): every registered method, and two ablations
    **{name: (name, {}) for name in config.METHODS},
    "tar_only": ("infinipot_v", {"tar_ratio": 1.0}),
    "van_only": ("infinipot_v", {"tar_ratio": 0.0}),
}
BOOTSTRAP = 2000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=100, help="held-out videos per split")
    p.add_argument("--seed-offset", type=int, default=0, help="index of the first test video")
    p.add_argument("--budgets", default="1.0,0.5,0.25,0.1", help="shares of the video's tokens")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--splits", default="test", help="test and/or stress splits: pan,texture,flicker,repeat")
    p.add_argument("--weights", type=Path, default=None,
                   help="an organism checkpoint folder (default: the shipped one)")
    p.add_argument("--kv-bits", default="16", help="cache bits to compare at equal bytes: 16 (the "
                   "model's dtype, counted as 2 bytes), 8 and/or 4 (e.g. 16,8,4)")
    p.add_argument("--kv-group-size", type=int, default=32, help="quantization group (default 32, the "
                   "organism's head dim)")
    p.add_argument("--out", type=Path, default=Path("bench_out/accuracy"))


def selection(args) -> tuple[list[float], list[str], list[str]]:
    """(budgets, methods, splits) from the flags; UserError for any that is not usable."""
    from ..organism import SPLITS

    require_positive(args, "n")
    if args.weights is not None and not (args.weights / "config.json").is_file():
        raise UserError(f"--weights {args.weights} is not a checkpoint folder (no config.json); "
                        "give a folder written by python -m infinipot_mlx.organism.train")
    require_positive(args, "seed_offset", strict=False)
    if args.seed_offset + args.n > 10**6:
        raise UserError(f"--seed-offset + --n must be at most 1000000 (videos per split), "
                        f"got {args.seed_offset + args.n}")
    budgets = parse_list(args.budgets, "budgets", kind=float)
    if not all(math.isfinite(b) and 0 < b <= 1 for b in budgets):
        raise UserError(f"--budgets must be shares in (0, 1], got {args.budgets!r}")
    methods = list(dict.fromkeys(parse_list(args.methods, "methods", choices=METHODS)))
    splits = list(dict.fromkeys(parse_list(args.splits, "splits", choices=SPLITS)))
    args.bits = list(dict.fromkeys(parse_list(getattr(args, "kv_bits", "16"), "kv_bits", kind=int,
                                              choices=(16, 8, 4))))
    args.kv_group_size = getattr(args, "kv_group_size", 32)  # a Namespace built without the new flags
    return budgets, methods, splits


def equal_bytes_share(budget: float, bits: int, group_size: int) -> float:
    """The share of the video's tokens a cache at `bits` holds in the bytes that a 16-bit cache
    spends on `budget` of them (at most all of them)."""
    from ..contract.budget import kv_element_bytes

    return min(1.0, budget * 2 / kv_element_bytes(2, None if bits == 16 else bits, group_size))


def run_one(model_bundle, frames: np.ndarray, qa, method: str, budget: float,
            first_frames: tuple[int, int] | None = None, quantization: dict | None = None) -> dict:
    """Stream one video under one config (`quantization`: kv_bits and kv_group_size, for a
    quantized cache); per-question correctness and cache facts, and
    whether the evidence of "what colour was the first shape?" (its top moment, evidence.py)
    falls within the first shape's frames [start, stop)."""
    from ..organism.session import first_word, organism_config
    from ..stream.session import StreamSession

    model, tok, spec, pinned = model_bundle
    name, overrides = METHODS[method]
    config = organism_config(len(frames), budget, name, pinned, **overrides, **(quantization or {}))
    session = StreamSession(model, tok, spec, config, fps=2.0)
    session.record_evidence = True
    session.add_frames(frames)
    session.flush()
    visual_at_question = session.cache.n_visual
    correct, evidence_hit = [], None
    for question, truth, qtype in qa:
        reply = "".join(session.ask(question, max_tokens=2))  # one answer word (one token) + eos
        correct.append(first_word(reply) == truth)
        if qtype == "first" and first_frames is not None and session.evidence:
            top = session.evidence[0].slot  # slot s holds frames 2s and 2s + 1
            per = spec.frames_per_slot
            evidence_hit = bool(top * per < first_frames[1] and first_frames[0] < (top + 1) * per)
    return dict(correct=correct, visual_tokens=visual_at_question, compressions=session.counters.compressions,
                max_cached=session.cache.n_cached, evidence_first_hit=evidence_hit)


def load_bundle(weights: Path | None = None):
    """(model, tokenizer, spec, pinned prompt tokens before the first frame) of the organism
    (the shipped weights, or the checkpoint folder `weights`)."""
    from ..organism.session import open_organism

    probe = open_organism(method="full", weights=weights)
    a = probe.adapter
    pinned = probe.cache.n_pinned + len(a.tokenizer.encode(
        a.spec.pieces.user_open + a.spec.pieces.video_open, add_special_tokens=False))
    return a.model, a.tokenizer, a.spec, pinned


def bootstrap_ci(per_video: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% CI of the mean of per-video values (V,) by resampling videos."""
    idx = rng.integers(0, len(per_video), size=(BOOTSTRAP, len(per_video)))
    means = per_video[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(records: list[dict], rng: np.random.Generator) -> list[dict]:
    """Accuracy with CIs per (split, budget, method, qtype), and paired deltas vs infinipot_v."""
    rows = []
    keys = sorted({(r["split"], r["budget"], r["method"], r.get("kv_bits", 16)) for r in records})
    by_key = {k: sorted([r for r in records if (r["split"], r["budget"], r["method"], r.get("kv_bits", 16)) == k],
                        key=lambda r: r["video"]) for k in keys}
    for split, budget, method, bits in keys:
        recs = by_key[(split, budget, method, bits)]
        refs = dict(vs_infinipot_v=by_key.get((split, budget, "infinipot_v", bits)) if method != "infinipot_v" else None,
                    vs_16bit=by_key.get((split, budget, method, 16)) if bits != 16 else None)
        for qtype in ["all", *sorted({q for r in recs for q in r["qtypes"]})]:
            acc = np.array([_mean(r, qtype) for r in recs])
            row = dict(split=split, budget=budget, method=method, kv_bits=bits, qtype=qtype,
                       n_videos=int(np.isfinite(acc).sum()), accuracy=float(np.nanmean(acc)))
            row["ci95"] = bootstrap_ci(acc[np.isfinite(acc)], rng)
            for name, ref in refs.items():  # paired by video
                if ref:
                    diff = acc - np.array([_mean(r, qtype) for r in ref])
                    diff = diff[np.isfinite(diff)]
                    row[name], row[name + "_ci95"] = float(diff.mean()), bootstrap_ci(diff, rng)
            row["budget_used"] = float(np.mean([r["budget_used"] for r in recs]))
            hits = [r["evidence_first_hit"] for r in recs if r.get("evidence_first_hit") is not None]
            if qtype == "all" and hits:  # the top moment of "first colour?" within the first shape
                row["evidence_first_hit_rate"] = float(np.mean(hits))
                row["evidence_first_hit_ci95"] = bootstrap_ci(np.array(hits, float), rng)
            rows.append(row)
    return rows


def _mean(record: dict, qtype: str) -> float:
    picked = [c for c, q in zip(record["correct"], record["qtypes"]) if qtype in ("all", q)]
    return float(np.mean(picked)) if picked else float("nan")


def print_table(rows: list[dict]) -> None:
    print(f"{'split':8} {'budget':>6} {'bits':>4} {'method':15} {'acc':>6} {'95% CI':>15} "
          f"{'vs infinipot_v':>22} {'vs 16-bit':>22} {'evidence hit':>12}")
    for r in rows:
        if r["qtype"] != "all":
            continue
        lo, hi = r["ci95"]
        hit = f"{r['evidence_first_hit_rate']:.2f}" if "evidence_first_hit_rate" in r else "-"
        print(f"{r['split']:8} {r['budget']:>6.2f} {r.get('kv_bits', 16):>4} {r['method']:15} {r['accuracy']:6.3f} "
              f"[{lo:.3f}, {hi:.3f}] {_delta(r, 'vs_infinipot_v'):>22} {_delta(r, 'vs_16bit'):>22} {hit:>12}")


def _delta(row: dict, name: str) -> str:
    if name not in row:
        return ""
    lo, hi = row[name + "_ci95"]
    return f"{row[name]:+.3f} [{lo:+.3f},{hi:+.3f}]"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({r["split"] for r in rows})
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits) + 2.5, 4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for color, method in enumerate(METHODS):
            for bits, marker, line in ((16, "o", "-"), (8, "s", "--"), (4, "^", ":")):
                pts = sorted((r["budget"], r["accuracy"], *r["ci95"]) for r in rows if r["split"] == split
                             and r["method"] == method and r.get("kv_bits", 16) == bits and r["qtype"] == "all")
                if pts:
                    b, acc, lo, hi = map(np.array, zip(*pts))
                    label = method if bits == 16 else f"{method}, {bits}-bit KV"
                    ax.errorbar(b * 100, acc, yerr=[acc - lo, hi - acc], marker=marker, linestyle=line,
                                color=f"C{color}", capsize=3, label=label)
        ax.set(xscale="log", xlabel="KV bytes (share of a 16-bit cache of the whole video)", ylabel="accuracy",
               title=f"organism, split {split}")
        budgets = sorted({r["budget"] * 100 for r in rows})
        ax.set_xticks(budgets, [f"{b:g}%" for b in budgets])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the data
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    from tqdm import tqdm

    from ..organism.data import episode_for

    budgets, methods, splits = selection(args)  # bad flags fail before the model loads
    bundle = load_bundle(args.weights)
    env = environment()
    start, records = time.perf_counter(), []
    jobs = [(s, i) for s in splits for i in range(args.seed_offset, args.seed_offset + args.n)]
    for split, video in tqdm(jobs, desc="videos", unit="video"):
        episode = episode_for(split, video)  # the frames, questions and events of make_episode
        frames, qa, first = episode.frames, episode.qa, episode.events[0]
        n_video = len(frames) // 2 * 9
        unbounded = {}  # a method without a cap answers the same at every budget: run it once
        for budget in budgets:
            for method in methods:
                for bits in args.bits:
                    bounded = config.METHODS[METHODS[method][0]].bounded
                    if not bounded and bits != 16:
                        continue  # the uncompressed reference point stays in the model's dtype
                    quantization = None if bits == 16 else dict(kv_bits=bits, kv_group_size=args.kv_group_size)
                    share = equal_bytes_share(budget, bits, args.kv_group_size)
                    if method in unbounded:
                        res = unbounded[method]
                    else:
                        res = run_one(bundle, frames, qa, method, share, (first.start, first.start + first.length),
                                      quantization)
                        if not bounded:
                            unbounded[method] = res
                    records.append(dict(split=split, video=video, budget=budget, method=method, kv_bits=bits,
                                        qtypes=[q for _, _, q in qa], budget_used=res["visual_tokens"] / n_video,
                                        **res))
    rows = summarize(records, np.random.default_rng(0))
    print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "accuracy.png")
    write_json(args.out, "accuracy.json", dict(
        environment=env, weights=str(args.weights or "shipped"), seconds=time.perf_counter() - start,
        n=args.n, seed_offset=args.seed_offset,
        budgets=budgets, methods=methods, splits=splits, kv_bits=args.bits, kv_group_size=args.kv_group_size,
        summary=rows, records=records))
    print(f"wrote {args.out / 'accuracy.png'}")
    return 0
