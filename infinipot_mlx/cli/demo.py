"""python -m infinipot_mlx.chat --demo: the offline demo on the bundled model organism.

The organism is a ~1M-parameter Qwen2.5-VL (mlx-vlm's classes, the published layout)
trained here on synthetic streaming video (infinipot_mlx.organism). The demo generates a
held-out video, streams it under a KV cap with a progress bar, asks the standard
questions and prints each answer beside the answer with the full cache (the same video,
every token kept) and the truth, then opens the interactive prompt.
It is a small trained organism, not Qwen2.5-VL-7B: its world is coloured shapes on a
striped 3 x 3 grid.
"""

from __future__ import annotations

import sys
from functools import partial

from ..contract.config import InfiniPotConfig
from ..door import feed
from ..organism.session import DEMO_BLOCK_SLOTS, first_word, open_organism
from .console import answer, interactive, stream_frames

def run_demo(args) -> int:
    """Generate a held-out video, stream it under the cap, ask the standard questions."""
    from ..organism import make_episode

    frames, fps, qa = make_episode(args.seed, split="test")
    overrides = {"method": args.method}
    session = open_organism(**overrides) if not args.kv_budget else open_organism(
        InfiniPotConfig(capacity=args.kv_budget, block_slots=DEMO_BLOCK_SLOTS,
                        reserve=min(args.reserve, args.kv_budget - 1), method=args.method))
    session.record_evidence = True  # cheap: the question's last token only (evidence.py)
    print(f"demo: held-out synthetic video #{args.seed}, {len(frames)} frames at {fps:g} fps, "
          f"{session.config.method} with a cap of {session.config.capacity or 'no'} tokens "
          "(the bundled organism, a ~1M-parameter Qwen2.5-VL trained on synthetic video)")
    block = 2 * DEMO_BLOCK_SLOTS
    chunks = [(frames[i:i + block], None) for i in range(0, len(frames), block)]  # (n, H, W, 3) uint8
    stream_frames(session, len(frames), partial(feed, session, iter(chunks)))
    full = None if session.config.capacity is None else open_organism(method="full")
    if full is not None:  # the same video with every token kept: what the cap costs, question by question
        feed(full, iter(chunks))
    right = right_full = agree = 0
    for question, truth, _qtype in qa:
        print(f"Q: {question}\nA: ", end="")
        said = first_word(answer(session, question, args))
        right += said == truth
        if full is None:
            print(f"   truth: {truth}  {'(right)' if said == truth else '(wrong)'}")
            continue
        said_full = first_word("".join(full.ask(question, max_tokens=args.max_tokens, temperature=args.temperature,
                                                top_p=args.top_p)))
        right_full, agree = right_full + (said_full == truth), agree + (said_full == said)
        print(f"   full cache: {said_full or '-'}   truth: {truth}   "
              f"(cap {_mark(said, truth)}, full {_mark(said_full, truth)})")
    n = len(qa)
    summary = f"{right}/{n} right" if full is None else (
        f"under the cap {right}/{n} right, with the full cache {right_full}/{n}; the two agree on {agree}/{n}")
    print(f"{summary}; cached {session.cache.n_cached} tokens, {session.counters.compressions} compressions")
    if args.question:
        for q in args.question:
            print(f"Q: {q}\nA: ", end="")
            answer(session, q, args)
    elif sys.stdin.isatty():
        interactive(session, args)
    return 0


def _mark(said: str, truth: str) -> str:
    return "right" if said == truth else "wrong"
