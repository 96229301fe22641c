"""Capacity arithmetic of ALGORITHM.md section 3 and 5, in pure Python.

Terms (per layer; every layer holds the same number of tokens):
  capacity  the hard cap on cached tokens, pinned + visual
  reserve   room kept free for a question and its answer
  pinned    text tokens, never compressed
  T         visual tokens per slot (one temporal slot of the vision grid)
  block     block_slots * T tokens prefilled at once
  K         visual tokens kept by a compression
"""

from __future__ import annotations

from ..errors import UserError


def block_tokens(block_slots: int, tokens_per_slot: int) -> int:
    """Tokens one block of slots adds to the cache."""
    return block_slots * tokens_per_slot


def needs_compression(n_cached: int, incoming: int, capacity: int, reserve: int) -> bool:
    """True when prefilling `incoming` tokens would pass capacity - reserve."""
    return n_cached + incoming > capacity - reserve


def keep_target(capacity: int, reserve: int, n_pinned: int, incoming: int) -> int:
    """K: visual tokens to keep so that the incoming block still fits under the cap."""
    return capacity - reserve - n_pinned - incoming


DEFAULT_BLOCK_SLOTS = 8  # the paper's block (8 of what it calls frames); the automatic block never exceeds it


class CapacityError(UserError):
    """A cap that cannot hold what was asked of it; the message gives the numbers and the fixes."""


def check_keep(keep: int, tokens_per_slot: int) -> None:
    """Reject a K that cannot hold even one slot of visual tokens (section 3)."""
    if keep < tokens_per_slot:
        raise CapacityError(
            f"the KV budget leaves room for {max(keep, 0)} visual tokens after the prompt, "
            f"the reserve and the incoming block, less than one slot ({tokens_per_slot} "
            "tokens); raise the capacity (--kv-budget/--memory) or lower --block-slots"
        )


def auto_block_slots(room: int, tokens_per_slot: int) -> int:
    """The automatic block: the largest that keeps at least as many slots as it brings.

    room = capacity - reserve - pinned, the visual tokens the cap leaves. Returns
    min(DEFAULT_BLOCK_SLOTS, room // 2T), so a compression always keeps at least a block's
    worth of slots; 0 when not even one slot and one kept slot fit.
    """
    return min(DEFAULT_BLOCK_SLOTS, room // (2 * tokens_per_slot))


def visual_floor(capacity: int, reserve: int, n_system: int, incoming: int, tokens_per_slot: int) -> int:
    """The least visual memory questions and answers may squeeze the video to.

    Half of what the cap leaves for kept slots beside the system prompt, the reserve and
    one block, and never less than one slot. Below it, the oldest conversation turns leave
    the cache instead.
    """
    return max(tokens_per_slot, (capacity - reserve - n_system - incoming) // 2)


def does_not_fit(capacity: int, reserve: int, n_pinned: int, block_slots: int, tokens_per_slot: int,
                 fixed_frame_size: bool = False) -> CapacityError:
    """The error for a cap that cannot hold one block and one kept slot, with the numbers."""
    block = block_tokens(block_slots, tokens_per_slot)
    needed = n_pinned + reserve + block + tokens_per_slot
    lower = ([] if fixed_frame_size else ["--max-pixels"]) + (["--block-slots"] if block_slots > 1 else []) \
        + (["--reserve"] if reserve else [])
    fix = "raise --kv-budget (or --memory)"
    if lower:
        fix += ", or lower " + (", ".join(lower[:-1]) + " or " if len(lower) > 1 else "") + lower[-1]
    return CapacityError(
        f"a KV cap of {capacity} tokens cannot hold the prompt ({n_pinned}), the reserve ({reserve}), "
        f"a block of {block_slots} slot{'s' * (block_slots > 1)} x {tokens_per_slot} tokens ({block}) "
        f"and one kept slot ({tokens_per_slot}): {needed} tokens needed; {fix}")


def min_capacity(tokens_per_slot: int, block_slots: int, reserve: int, n_pinned: int = 0) -> int:
    """Smallest capacity that keeps one slot besides a block, the prompt and the reserve."""
    return n_pinned + reserve + block_tokens(block_slots, tokens_per_slot) + tokens_per_slot


def tar_share(keep: int, tar_ratio: float) -> int:
    """K_tar = K - round((1 - tar_ratio) * K), Python's round (half to even)."""
    return keep - round((1.0 - tar_ratio) * keep)


def recent_count(n_slots: int, recent_ratio: float) -> int:
    """r = max(1, floor(F * recent_ratio)) recent slots, before the whole-slot clamp."""
    return max(1, int(n_slots * recent_ratio))
