"""python -m infinipot_mlx.chat --demo: the offline demo on the bundled model organism.

The organism is a ~1M-parameter Qwen2.5-VL (mlx-vlm's classes, the published layout)
trained here on synthetic streaming video (infinipot_mlx.organism). The demo generates a
held-out video, streams it under a KV cap with a progress bar, asks the standard
questions and prints each answer beside the truth, then opens the interactive prompt.
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
    chunks = ((frames[i:i + block], None) for i in range(0, len(frames), block))  # (n, H, W, 3) uint8
    stream_frames(session, len(frames), partial(feed, session, chunks))
    right = 0
    for question, truth, _qtype in qa:
        print(f"Q: {question}\nA: ", end="")
        reply = answer(session, question, args)
        right += first_word(reply) == truth
        print(f"   truth: {truth}  {'(right)' if first_word(reply) == truth else '(wrong)'}")
    print(f"{right}/{len(qa)} right; cached {session.cache.n_cached} tokens, "
          f"{session.counters.compressions} compressions")
    if args.question:
        for q in args.question:
            print(f"Q: {q}\nA: ", end="")
            answer(session, q, args)
    elif sys.stdin.isatty():
        interactive(session, args)
    return 0
