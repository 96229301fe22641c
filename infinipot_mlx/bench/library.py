"""python -m infinipot_mlx.bench library: ranked search over a library of organism videos.

A library of N held-out organism videos (test split, default 50; no one tuned the score or
the organism on them) is written as lossless FFV1 files and indexed once by `python -m
infinipot_mlx.library index` (the real command, in a child process, with the library's
default settings). 50 videos give only about 30 questions with one answer, so the run
builds --libraries disjoint libraries (default 4: test videos 0-199) and pools their
questions. Each question has exactly one answering video among its library's N, checked
on the generated ground truth, in the forms the organism was trained on:

- where:  "Where did the {colour} shape appear?" expecting the cell, for a (colour, cell)
  pair that occurs in one video only;
- after / before: "What colour was the shape right after (before) the {colour} one?"
  expecting the other colour, for an ordered pair of consecutive shapes that occurs in
  one video only.

Each question ranks all N memories by library/search.py's score with the expected answer
(P(its first token) after the question); the benchmark reports where the answering video
lands: hit@1, hit@5, mean rank and mean reciprocal rank, against a random ranking (hit@k =
k/N in expectation), simulated over as many question sets of the same size; 95% CIs:
bootstrap over questions, and the share of simulated random runs at least as good as the
search (a one-sided p-value). Time per query is measured on the first library and on
sub-libraries of its first 5, 10, 25 memories (hard links to the same memory files), split
into loading the memories and answering from them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import UserError
from .common import environment, load_average, parse_list, print_environment, require_positive, write_json

BOOTSTRAP = 2000
FOURCC = "FFV1"  # lossless: the organism sees the colours it was trained on


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=50, help="videos in the library (default 50)")
    p.add_argument("--libraries", type=int, default=4,
                   help="disjoint libraries of --n videos each, for more questions (default 4)")
    p.add_argument("--seed-offset", type=int, default=0, help="index of the first test video")
    p.add_argument("--questions", type=int, default=100, help="at most this many questions per library")
    p.add_argument("--sizes", default="5,10,25", help="smaller libraries timed (plus --n itself)")
    p.add_argument("--timing-queries", type=int, default=5, help="queries timed per library size")
    p.add_argument("--kv-budget", type=int, default=None, help="index with this cap (default: the library's)")
    p.add_argument("--weights", type=Path, default=None, help="an organism checkpoint (default: the shipped one)")
    p.add_argument("--out", type=Path, default=Path("bench_out/library"))


def check(args) -> list[int]:
    require_positive(args, "n", "libraries", "questions", "timing_queries", "kv_budget")
    require_positive(args, "seed_offset", strict=False)
    if args.n < 2:
        raise UserError(f"--n must be at least 2 (a ranking needs two videos), got {args.n}")
    if args.seed_offset + args.n * args.libraries > 10**6:
        raise UserError("--seed-offset + --n x --libraries must be at most 1000000 (videos in the split), "
                        f"got {args.seed_offset + args.n * args.libraries}")
    if args.weights is not None and not (args.weights / "config.json").is_file():
        raise UserError(f"--weights {args.weights} is not a checkpoint folder (no config.json)")
    sizes = parse_list(args.sizes, "sizes", kind=int)
    if any(s < 1 for s in sizes):
        raise UserError(f"--sizes must be positive, got {args.sizes}")
    return sorted({s for s in sizes if s < args.n} | {args.n})


def video_name(index: int) -> str:
    return f"test_{index:06d}.avi"


def write_videos(folder: Path, n: int, offset: int) -> dict:
    """{file name: episode} of test videos offset..offset+n-1, written once (cached)."""
    import cv2

    from ..organism import episode_for

    folder.mkdir(parents=True, exist_ok=True)
    episodes = {}
    for i in range(offset, offset + n):
        ep, path = episode_for("test", i), folder / video_name(i)
        episodes[path.name] = ep
        if path.is_file() and path.stat().st_size > 0:
            continue
        part = folder / f".part-{path.name}"
        size = ep.frames.shape[2], ep.frames.shape[1]
        writer = cv2.VideoWriter(str(part), cv2.VideoWriter_fourcc(*FOURCC), ep.fps, size)
        if not writer.isOpened():
            raise UserError(f"this OpenCV build cannot write {FOURCC} to {part}")
        for frame in ep.frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # RGB -> BGR
        writer.release()
        part.replace(path)
    return episodes


def index(videos: Path, library: Path, weights: Path, kv_budget: int | None) -> float:
    """Index the folder with the library command (child process); its wall seconds."""
    from .inputs import child_env

    cmd = [sys.executable, "-m", "infinipot_mlx.library", "index", str(videos), "--library", str(library),
           "--model", str(weights), "--fps", "2"] + (["--kv-budget", str(kv_budget)] if kv_budget else [])
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), stdin=subprocess.DEVNULL)
    if done.returncode != 0 or ", 0 failed" not in done.stdout:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"indexing the benchmark videos failed: {last}")
    print(done.stdout.strip().splitlines()[-1])
    return time.perf_counter() - start


def unique_questions(episodes: dict, most: int) -> list[dict]:
    """Questions with exactly one answering video (module docstring), interleaved by type."""
    from ..organism import CELLS, QUESTIONS

    keys = {}  # (qtype, a, b) -> the videos where it holds
    for name, ep in episodes.items():
        facts = {("where", e.colour, CELLS[e.cell]) for e in ep.events}
        for first, then in zip(ep.events, ep.events[1:]):
            facts |= {("after", first.colour, then.colour), ("before", then.colour, first.colour)}
        for fact in facts:
            keys.setdefault(fact, []).append(name)
    by_type = {t: [] for t in ("where", "after", "before")}
    for (qtype, about, answer), names in sorted(keys.items()):
        if len(names) == 1:
            by_type[qtype].append(dict(qtype=qtype, question=QUESTIONS[qtype].format(colour=about),
                                       expect=answer, video=names[0]))
    spread = [_spread(qs) for qs in by_type.values()]
    longest = max(map(len, spread), default=0)
    return [qs[k] for k in range(longest) for qs in spread if k < len(qs)][:most]


def _spread(items: list) -> list:
    """The items reordered so that any prefix spreads over the sorted list (a fixed stride)."""
    n = len(items)
    stride = next((s for s in (7, 11, 13, 17, 19, 23) if n % s), 1) if n > 1 else 1
    return [items[(k * stride) % n] for k in range(n)]


def rank_questions(ranker, questions: list[dict], n: int) -> list[dict]:
    """Each question's rank of its answering video, the hit's answer and the query's seconds."""
    rows = []
    for q in questions:
        start = time.perf_counter()
        hits = ranker.ask(q["question"], top=n, expect=q["expect"])
        seconds = time.perf_counter() - start
        (hit,) = [h for h in hits if h.name == q["video"]]
        first = (hit.answer.strip().lower().split() or [""])[0].strip(".,!?;:")
        rows.append(dict(q, rank=hit.rank, score=hit.score, top=hits[0].name, top_score=hits[0].score,
                         answer=hit.answer, answer_right=first == q["expect"], seconds=seconds,
                         moment=hit.seconds))
        print(f"  rank {hit.rank:>3}/{len(hits)}  {q['question']} -> {q['expect']} ({q['video']}, "
              f"answered {hit.answer!r})", flush=True)
    return rows


STATS = {"hit@1": lambda r: (r <= 1).mean(-1), "hit@5": lambda r: (r <= 5).mean(-1),
         "mean_rank": lambda r: r.mean(-1), "mrr": lambda r: (1.0 / r).mean(-1)}


def summarize(ranks: np.ndarray, rng: np.random.Generator) -> dict:
    """hit@1, hit@5, mean rank, MRR with bootstrap 95% CIs over questions."""
    boot = ranks[rng.integers(0, len(ranks), size=(BOOTSTRAP, len(ranks)))]  # (B, Q)
    return {name: dict(value=float(f(ranks)), ci95=[float(v) for v in np.percentile(f(boot), [2.5, 97.5])])
            for name, f in STATS.items()}


def random_ranking(n_questions: int, n: int, observed: dict, rng: np.random.Generator) -> dict:
    """The same statistics for a random ranking (the answering video's rank uniform in 1..n),
    over BOOTSTRAP simulated question sets of the same size: their mean, 95% range, and the
    share of them at least as good as the search's (a one-sided p-value)."""
    sims = rng.integers(1, n + 1, size=(BOOTSTRAP, n_questions)).astype(np.float64)
    out = {}
    for name, f in STATS.items():
        values, seen = f(sims), observed[name]["value"]
        better = values <= seen if name == "mean_rank" else values >= seen
        out[name] = dict(value=float(values.mean()), ci95=[float(v) for v in np.percentile(values, [2.5, 97.5])],
                         p_search_by_chance=float(better.mean()))
    return out


def time_sizes(library: Path, sizes: list[int], questions: list[dict], weights: Path, k: int) -> list[dict]:
    """Seconds per query, per memory load and per memory answer, for libraries of each size."""
    from ..library import Catalogue
    from ..library.search import Ranker

    rows = []
    with Catalogue(library) as whole:
        entries = whole.entries("done")
        for size in sizes:
            sub = library.parent / f"sub_{size}"
            shutil.rmtree(sub, ignore_errors=True)
            with Catalogue(sub, create=True) as part:
                for e in entries[:size]:
                    os.link(whole.memory_path(e), part.memories / e.memory)
                    part.record(e)
            ranker = Ranker(sub, str(weights))
            ranker.ask(questions[0]["question"], top=1, expect=questions[0]["expect"])  # warm: model opened
            ranker.timings.__init__()
            for q in questions[:k]:
                ranker.ask(q["question"], top=5, expect=q["expect"])
            t = ranker.timings
            rows.append(dict(memories=size, query_s=float(np.mean(t.per_query)), load_s=t.load / t.memories,
                             answer_s=t.score / t.memories, queries=len(t.per_query)))
            print(f"  {size:>4} memories: {rows[-1]['query_s']:.2f} s per query (per memory: load "
                  f"{rows[-1]['load_s'] * 1e3:.0f} ms, answer {rows[-1]['answer_s'] * 1e3:.0f} ms)", flush=True)
            shutil.rmtree(sub, ignore_errors=True)
    return rows


def plot(summary: dict, random: dict, timing: list[dict], n: int, n_q: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    names = ["hit@1", "hit@5", "mrr"]
    x = np.arange(len(names))
    for shift, (label, s) in zip((-0.2, 0.2), (("search (P(expected answer))", summary), ("random", random))):
        values = [s[k]["value"] for k in names]
        errs = np.array([[s[k]["value"] - s[k]["ci95"][0], s[k]["ci95"][1] - s[k]["value"]] for k in names]).T
        left.bar(x + shift, values, 0.4, yerr=errs, capsize=3, label=label)
    left.set(xticks=x, xticklabels=names, ylim=(0, 1), ylabel="share of questions",
             title=f"{n_q} questions, one answering video among {n}")
    left.legend()
    sizes = [r["memories"] for r in timing]
    right.plot(sizes, [r["query_s"] for r in timing], "o-", label="per query")
    right.plot(sizes, [r["load_s"] * r["memories"] for r in timing], "s--", label="loading memories")
    right.plot(sizes, [r["answer_s"] * r["memories"] for r in timing], "^--", label="answering from them")
    right.set(xlabel="memories in the library", ylabel="seconds", title="time per query", ylim=(0, None))
    right.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def one_library(args, j: int, weights: Path) -> tuple[Path, list[dict], float]:
    """Write, index and query library j (videos offset + j n ...): (its folder, rows, index s)."""
    from ..library.search import Ranker

    work = args.out / "work"
    offset = args.seed_offset + j * args.n
    videos = work / f"videos_{offset}"
    questions = unique_questions(write_videos(videos, args.n, offset), args.questions)
    library = work / f"library_{offset}"
    shutil.rmtree(library, ignore_errors=True)  # indexed afresh: the measured library is this run's
    index_s = index(videos, library, weights, args.kv_budget)
    print(f"library {j + 1}/{args.libraries}: test videos {offset}-{offset + args.n - 1} indexed in "
          f"{index_s:.1f} s; {len(questions)} questions ({dict(Counter(q['qtype'] for q in questions))})")
    rows = rank_questions(Ranker(library, str(weights)), questions, args.n)
    return library, [dict(r, library=j) for r in rows], index_s


def run(args) -> int:
    from ..organism import weights_dir

    sizes = check(args)
    weights = (args.weights or weights_dir()).resolve()
    env = environment()
    print_environment(env)
    rows, index_s, first = [], [], None
    for j in range(args.libraries):
        library, found, seconds = one_library(args, j, weights)
        rows, index_s, first = rows + found, index_s + [seconds], first or (library, found)
    if not rows:
        raise UserError(f"no question has exactly one answering video among {args.n}; raise --n")
    rng = np.random.default_rng(0)
    ranks = np.array([r["rank"] for r in rows], np.float64)
    summary = summarize(ranks, rng)
    random = random_ranking(len(rows), args.n, summary, rng)
    per_type = {}
    for t in ("where", "after", "before"):
        keep = np.array([r["qtype"] == t for r in rows])
        if keep.any():
            stats = {k: v["value"] for k, v in summarize(ranks[keep], rng).items()}
            right = float(np.mean([r["answer_right"] for r in rows if r["qtype"] == t]))
            per_type[t] = dict(questions=int(keep.sum()), **stats, answer_right=right)
    timing = time_sizes(first[0], sizes, first[1], weights, args.timing_queries)
    print_table(summary, random, per_type, len(rows), args.n)
    env.update(load_average_start=env["load_average"], load_average_end=load_average())
    write_json(args.out, "library.json", dict(
        environment=env, n_videos=args.n, libraries=args.libraries, seed_offset=args.seed_offset,
        weights=str(weights), kv_budget=args.kv_budget, index_seconds=index_s, summary=summary, random=random,
        random_expected={"hit@1": 1 / args.n, "hit@5": min(5, args.n) / args.n, "mean_rank": (args.n + 1) / 2},
        per_type=per_type, timing=timing, questions=rows))
    plot(summary, random, timing, args.n, len(rows), args.out / "library.png")
    print(f"wrote {args.out / 'library.png'}")
    return 0


def print_table(summary: dict, random: dict, per_type: dict, n_q: int, n: int) -> None:
    print(f"\n{n_q} questions, each with one answering video among {n}; 95% CIs")
    print(f"{'':<10}{'hit@1':>19}{'hit@5':>19}{'mean rank':>22}{'MRR':>19}")
    for label, s in (("search", summary), ("random", random)):
        print(f"{label:<10}" + "".join(f"{s[k]['value']:>7.3f} [{s[k]['ci95'][0]:.2f}, {s[k]['ci95'][1]:.2f}]"
                                       for k in STATS))
    print("a random ranking as good as the search's: " +
          ", ".join(f"{k} p = {random[k]['p_search_by_chance']:.4f}" for k in STATS))
    for t, r in per_type.items():
        print(f"  {t:<7} {r['questions']:>3} questions: hit@1 {r['hit@1']:.2f}, hit@5 {r['hit@5']:.2f}, mean rank "
              f"{r['mean_rank']:.1f}; the answering video's own answer right {r['answer_right']:.2f}")
