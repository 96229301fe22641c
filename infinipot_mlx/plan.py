"""Capacity arithmetic of ALGORITHM.md section 3 and 5, in pure Python.

Terms (per layer; every layer holds the same number of tokens):
  capacity  the hard cap on cached tokens, pinned + visual
  reserve   room kept free for a question and its answer
  pinned    text tokens, never compressed
  T         visual tokens per frame (one temporal slot of the vision grid)
  block     block_frames * T tokens prefilled at once
  K         visual tokens kept by a compression
"""

from __future__ import annotations


def block_tokens(block_frames: int, tokens_per_frame: int) -> int:
    """Tokens one block of frames adds to the cache."""
    return block_frames * tokens_per_frame


def needs_compression(n_cached: int, incoming: int, capacity: int, reserve: int) -> bool:
    """True when prefilling `incoming` tokens would pass capacity - reserve."""
    return n_cached + incoming > capacity - reserve


def keep_target(capacity: int, reserve: int, n_pinned: int, incoming: int) -> int:
    """K: visual tokens to keep so that the incoming block still fits under the cap."""
    return capacity - reserve - n_pinned - incoming


def check_keep(keep: int, tokens_per_frame: int) -> None:
    """Reject a K that cannot hold even one frame of visual tokens (section 3)."""
    if keep < tokens_per_frame:
        raise ValueError(
            f"the KV budget leaves room for {max(keep, 0)} visual tokens after the prompt, "
            f"the reserve and the incoming block, less than one frame ({tokens_per_frame} "
            "tokens); raise the capacity (--kv-budget/--memory) or lower --block-frames"
        )


def min_capacity(tokens_per_frame: int, block_frames: int, reserve: int, n_pinned: int = 0) -> int:
    """Smallest capacity that keeps one frame besides a block, the prompt and the reserve."""
    return n_pinned + reserve + block_tokens(block_frames, tokens_per_frame) + tokens_per_frame


def tar_share(keep: int, tar_ratio: float) -> int:
    """K_tar = K - round((1 - tar_ratio) * K), Python's round (half to even)."""
    return keep - round((1.0 - tar_ratio) * keep)


def recent_count(n_frames: int, recent_ratio: float) -> int:
    """r = max(1, floor(F * recent_ratio)) recent frames, before the whole-frame clamp."""
    return max(1, int(n_frames * recent_ratio))
