"""Room under the cap: the visual floor, old turns leaving, and the block and frame size fitted.

A mixin of session.StreamSession (ALGORITHM.md section 3). The session decides here
when to compress and what else may give way; the cache only stores.

- A block compresses the visual tokens so that it fits under capacity - reserve; if the
  kept video would then fall below its floor (plan.visual_floor), the oldest turns leave
  first.
- A text piece, a question or an answer token compresses the visual tokens down to the
  floor, then drops the oldest conversation turns: each turn's question, answer and
  template pieces leave the cache; its video tokens stay and compete in later
  compressions. The system prompt (turn 0) and the open turn always stay.
- Without a configured block, the block is the largest (up to 8 slots) that keeps at least
  as many slots as it brings (plan.auto_block_slots). Without an explicit max_pixels,
  frames are 448 x 448-class (specs.DEFAULT_FRAME_PIXELS) and shrink further until a
  block and one kept slot fit; only an explicit impossible combination is refused.

A turn is counted in pinned tokens: the k-th pinned slot of every head is the same text
token (pinned tokens are never compressed), so a turn is a range of pinned ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract import plan
from ..contract.specs import DEFAULT_FRAME_PIXELS


def compress_layers(cache, backend, keep: int, tokens_per_slot: int, config, grid_hw: tuple[int, int],
                    record: bool = False) -> list:
    """The compression step (ALGORITHM.md sections 4-5): keep `keep` visual tokens per head in
    every layer that holds more, with the backend's select_tokens.

    Every layer's selection is one graph, started at once (MLX computes it without a host
    round trip per layer); then each layer keeps its rows, a gather the caller's sync runs.
    The session's compress() and the benchmarks run exactly this. Returns, when `record`,
    the kept (slot, patch) pairs of every compressed layer, (H, K, 2) each.
    """
    chosen = []
    for layer_idx, layer in enumerate(cache.layers):
        _, keys, values, slot_ids, patch_ids = layer.visual()  # (H, N, D), labels (H, N)
        if keys.shape[1] <= keep:
            continue
        kept = backend.select_tokens(
            keys, values, tokens_per_slot=tokens_per_slot, keep=keep, method=config.method,
            tar_ratio=config.tar_ratio, recent_ratio=config.recent_ratio, slot_ids=slot_ids,
            patch_ids=patch_ids, van_pooling=config.van_pooling, layer_idx=layer_idx,
            num_layers=len(cache.layers), grid_hw=grid_hw)  # (H, K)
        chosen.append((layer, kept, slot_ids, patch_ids))
    if chosen:
        backend.start(*(kept for _, kept, _, _ in chosen))
    kept_sets = []
    for layer, kept, slot_ids, patch_ids in chosen:
        if record:
            kept_np = backend.to_numpy(kept)
            kept_sets.append(np.stack([np.take_along_axis(slot_ids, kept_np, 1),
                                       np.take_along_axis(patch_ids, kept_np, 1)], -1))
        layer.compress(kept)
    return kept_sets


@dataclass(frozen=True)
class Turn:
    """Where a conversation turn begins: its first pinned token's rank and transcript piece."""

    pinned_start: int
    transcript_start: int


class RoomKeeper:
    """What gives way, and when, so that every token fits under the cap."""

    def _make_room(self, n_tokens: int, slack: int = 0) -> bool:
        """Room for n_tokens more under the cap: compress the video to its floor, then drop turns.

        When compression is needed it frees `slack` more tokens where the floor allows, so
        that an answer does not compress at every token. Returns whether they fit.
        """
        cfg, cache = self.config, self.cache
        if not cfg.bounded or cache.n_cached + n_tokens <= cfg.capacity:
            return True
        if cache.n_visual:
            T = self.spec.tokens_per_slot(self.frame_hw)
            keep = max(cfg.capacity - cache.n_pinned - n_tokens - slack, self.visual_floor())
            if cache.n_visual > keep:
                self.compress(keep, T)
        while cache.n_cached + n_tokens > cfg.capacity and self._drop_oldest_turn():
            pass
        return cache.n_cached + n_tokens <= cfg.capacity

    def slot_cost(self, hw: tuple[int, int]) -> int:
        """Cache rows one slot may take: its T visual tokens and, for a model with slot text
        (Qwen3-VL), the most text tokens a slot brings (ChatPieces.slot_text_bound)."""
        if self._slot_text_bound is None:
            self._slot_text_bound = self.spec.pieces.slot_text_bound(self._encode)
        return self.spec.tokens_per_slot(hw) + self._slot_text_bound

    _slot_text_bound: int | None = None

    def visual_floor(self) -> int:
        """Visual tokens that text may squeeze the video to (plan.visual_floor); 0 before frames."""
        if self.frame_hw is None or not self.config.bounded:
            return 0
        T = self.slot_cost(self.frame_hw)
        block = plan.block_tokens(self.block_slots, T)
        return plan.visual_floor(self.config.capacity, self.config.reserve, self.n_system, block, T)

    def question_room(self) -> int:
        """The most tokens a question with its answer can take once the video is at its floor
        and every earlier turn is dropped (the open turn, and the closing of an open video, stay)."""
        if not self.config.bounded:
            return 1 << 62
        keep_turn = self.turns[-1].pinned_start if len(self.turns) > 1 and self.user_turn_open \
            else self.cache.n_pinned
        fixed = self.n_system + (self.cache.n_pinned - keep_turn)
        closing = len(self._encode(self.spec.pieces.video_close)) + 1 if self.video_start is not None else 0
        return self.config.capacity - fixed - closing - self.visual_floor()

    def _drop_oldest_turn(self) -> bool:
        """Drop the oldest turn after the system prompt, unless it is the open one."""
        if len(self.turns) < 3:
            return False
        turn, after = self.turns[1], self.turns[2]
        pinned, pieces = after.pinned_start - turn.pinned_start, after.transcript_start - turn.transcript_start
        self.cache.drop_pinned(turn.pinned_start, after.pinned_start)
        del self.transcript[turn.transcript_start:after.transcript_start]
        self.turns = [self.turns[0]] + [Turn(t.pinned_start - pinned, t.transcript_start - pieces)
                                        for t in self.turns[2:]]
        self.counters.turns_evicted += 1
        self.backend.sync(None, self.cache)
        return True

    def _begin_turn(self) -> None:
        self.turns.append(Turn(self.cache.n_pinned, len(self.transcript)))

    def fit_frame_size(self, source_hw: tuple[int, int], max_pixels: int | None = None) -> tuple[int, int]:
        """The frame size (H, W) to resize a source of size source_hw to, and the block to use.

        The default per-frame budget is DEFAULT_FRAME_PIXELS (448 x 448), within the
        checkpoint's video limits. Without an explicit max_pixels, frames shrink further
        until a block and one kept slot fit under the cap; an explicit max_pixels is kept
        as given. Raises plan.CapacityError (with the numbers and the fixes) when nothing fits.
        Once frames have been streamed, every later video is resized to the same frame size
        (a slot's token grid must not change within a session; reset() forgets it).
        """
        spec = self.spec
        if self.frame_hw is not None and self.counters.slots_seen:
            return self.frame_hw
        if spec.frame_size is not None:
            hw = tuple(spec.frame_size)
        else:
            from ..contract.pixels import smart_resize

            limit = max_pixels or min(spec.max_pixels, DEFAULT_FRAME_PIXELS)
            step = spec.pixels_per_token

            def resize(pixels: int) -> tuple[int, int]:
                return smart_resize(*source_hw, step, min(spec.min_pixels, pixels), pixels)

            hw = resize(limit)
            if max_pixels is None and self.config.bounded:
                most = self._visual_room() // ((self.config.block_slots or 1) + 1)  # tokens a slot may take
                most -= self.slot_cost(hw) - spec.tokens_per_slot(hw)  # its slot text, if any
                if spec.tokens_per_slot(hw) > most >= 1:
                    hw = resize(most * step * step)
        self._fit_block(hw)
        self.frame_hw = hw
        return hw

    def _visual_room(self) -> int:
        """capacity - reserve - pinned, counting the pieces that open a video segment."""
        opening = 0
        if self.video_start is None:
            opening = len(self._encode(self.spec.pieces.video_open))
            opening += 0 if self.user_turn_open else len(self._encode(self.spec.pieces.user_open))
        return self.config.capacity - self.config.reserve - self.cache.n_pinned - opening

    def _fit_block(self, hw: tuple[int, int]) -> None:
        """Choose the block (plan.auto_block_slots) unless configured; refuse what cannot fit."""
        T, cfg = self.slot_cost(hw), self.config
        if not cfg.bounded:
            self.block_slots = cfg.block_slots or plan.DEFAULT_BLOCK_SLOTS
            return
        room = self._visual_room()
        slots = cfg.block_slots or plan.auto_block_slots(room, T)
        if slots < 1 or room - slots * T < T:
            pinned = cfg.capacity - cfg.reserve - room
            raise plan.does_not_fit(cfg.capacity, cfg.reserve, pinned, max(slots, 1), T,
                                    fixed_frame_size=self.spec.frame_size is not None)
        self.block_slots = slots

    def _room_for_block(self, S: int, T: int, n_text: int = 0) -> None:
        """Compress before a block of S slots of T visual tokens and n_text slot text tokens
        would pass capacity - reserve (dropping old turns first when the kept video would fall
        below its floor)."""
        cfg, cache = self.config, self.cache
        incoming = S * T + n_text
        if not cfg.bounded or not plan.needs_compression(cache.n_cached, incoming, cfg.capacity, cfg.reserve):
            return
        floor = self.visual_floor()
        while plan.keep_target(cfg.capacity, cfg.reserve, cache.n_pinned, incoming) < floor \
                and self._drop_oldest_turn():
            pass
        if plan.needs_compression(cache.n_cached, incoming, cfg.capacity, cfg.reserve):
            keep = plan.keep_target(cfg.capacity, cfg.reserve, cache.n_pinned, incoming)
            if keep < self.slot_cost(self.frame_hw):
                raise plan.does_not_fit(cfg.capacity, cfg.reserve, cache.n_pinned, S, self.slot_cost(self.frame_hw),
                                        fixed_frame_size=self.spec.frame_size is not None)
            self.compress(keep, T)  # first, so that `compact` positions are known before the block's

