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

from .config import InfiniPotConfig

DEMO_BLOCK_SLOTS = 1  # one temporal slot (2 frames, 9 tokens) per block
DEMO_RESERVE = 256  # room for all the standard questions and answers
DEMO_VISUAL_SHARE = 0.25  # visual tokens the cap leaves: 25% of the video's


def organism_config(n_frames: int, share: float, method: str = "infinipot_v", pinned: int = 0,
                    **overrides) -> InfiniPotConfig:
    """The cap for an organism stream: pinned + reserve + `share` of the video's tokens.

    The visual room never goes below two slots (the newest block plus one kept frame),
    the least the capacity rule of ALGORITHM.md section 3 allows.
    """
    from .organism.data import GRID

    T = GRID * GRID
    video_tokens = n_frames // 2 * T
    room = max(round(share * video_tokens), (DEMO_BLOCK_SLOTS + 1) * T)
    capacity = None if method == "full" else pinned + DEMO_RESERVE + room
    kwargs = dict(capacity=capacity, block_frames=DEMO_BLOCK_SLOTS, reserve=DEMO_RESERVE, method=method)
    return InfiniPotConfig(**{**kwargs, **overrides})


def open_organism(config: InfiniPotConfig | None = None, share: float = DEMO_VISUAL_SHARE,
                  n_frames: int = 32, method: str = "infinipot_v", **overrides):
    """A StreamSession on the bundled organism with the demo's cap (or `config`)."""
    from .organism import weights_dir
    from .session import StreamSession, load_model

    model, tokenizer, spec, _ = load_model(str(weights_dir()))
    probe = StreamSession(model, tokenizer, spec, InfiniPotConfig(capacity=None, method="full"), fps=2.0)
    pinned = probe.cache.n_pinned + len(tokenizer.encode(spec.pieces.user_open + spec.pieces.video_open,
                                                         add_special_tokens=False))
    config = config or organism_config(n_frames, share, method, pinned, **overrides)
    return StreamSession(model, tokenizer, spec, config, fps=2.0)


def first_word(text: str) -> str:
    """The organism answers in one word; compare on that word, case and punctuation aside."""
    words = text.strip().lower().split()
    return words[0].strip(".,!?;:") if words else ""


def run_demo(args) -> int:
    """Generate a held-out video, stream it under the cap, ask the standard questions."""
    from .chat import answer, interactive, stream_frames
    from .organism import make_episode

    frames, fps, qa = make_episode(args.seed, split="test")
    overrides = {"method": args.method}
    session = open_organism(**overrides) if not args.kv_budget else open_organism(
        InfiniPotConfig(capacity=args.kv_budget, block_frames=DEMO_BLOCK_SLOTS,
                        reserve=min(args.reserve, args.kv_budget - 1), method=args.method))
    print(f"demo: held-out synthetic video #{args.seed}, {len(frames)} frames at {fps:g} fps, "
          f"{session.config.method} with a cap of {session.config.capacity or 'no'} tokens "
          "(the bundled organism, a ~1M-parameter Qwen2.5-VL trained on synthetic video)")
    block = 2 * DEMO_BLOCK_SLOTS
    stream_frames(session, ((frames[i:i + block], None) for i in range(0, len(frames), block)), len(frames))
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
