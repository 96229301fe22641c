"""A StreamSession on the shipped organism under a cap sized to the video (MLX).

The library side of `chat --demo` and `bench accuracy`: the cap that leaves a chosen
share of a video's tokens, a session on the shipped weights, and how answers are graded.
"""

from __future__ import annotations

from ..contract.config import METHODS, InfiniPotConfig

DEMO_BLOCK_SLOTS = 1  # one temporal slot (2 frames, 9 tokens) per block
DEMO_RESERVE = 256  # room for all the standard questions and answers
DEMO_VISUAL_SHARE = 0.25  # visual tokens the cap leaves: 25% of the video's


def organism_config(n_frames: int, share: float, method: str = "infinipot_v", pinned: int = 0,
                    **overrides) -> InfiniPotConfig:
    """The cap for an organism stream: pinned + reserve + `share` of the video's tokens.

    The visual room never goes below two slots (the newest block plus one kept slot),
    the least the capacity rule of ALGORITHM.md section 3 allows.
    """
    from .data import GRID

    T = GRID * GRID
    video_tokens = n_frames // 2 * T
    room = max(round(share * video_tokens), (DEMO_BLOCK_SLOTS + 1) * T)
    capacity = None if not METHODS[method].bounded else pinned + DEMO_RESERVE + room
    kwargs = dict(capacity=capacity, block_slots=DEMO_BLOCK_SLOTS, reserve=DEMO_RESERVE, method=method)
    return InfiniPotConfig(**{**kwargs, **overrides})


def open_organism(config: InfiniPotConfig | None = None, share: float = DEMO_VISUAL_SHARE,
                  n_frames: int = 32, method: str = "infinipot_v", weights=None, **overrides):
    """A StreamSession on the bundled organism (or the checkpoint folder `weights`) with the
    demo's cap (or `config`)."""
    from ..mlx.backend import load_model
    from ..stream.session import StreamSession
    from . import weights_dir

    model, tokenizer, spec, _ = load_model(str(weights or weights_dir()))
    probe = StreamSession(model, tokenizer, spec, InfiniPotConfig(capacity=None, method="full"), fps=2.0)
    pinned = probe.cache.n_pinned + len(tokenizer.encode(spec.pieces.user_open + spec.pieces.video_open,
                                                         add_special_tokens=False))
    config = config or organism_config(n_frames, share, method, pinned, **overrides)
    return StreamSession(model, tokenizer, spec, config, fps=2.0)


def first_word(text: str) -> str:
    """The organism answers in one word; compare on that word, case and punctuation aside."""
    words = text.strip().lower().split()
    return words[0].strip(".,!?;:") if words else ""
