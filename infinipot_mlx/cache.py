"""The compressible KV cache (MLX): stores tokens, never decides what to drop.

Notation: B = 1 batch, H = KV heads, D = head dim, L = tokens of one update,
n = n_cached stored slots per head, N = visual candidates per head, K = kept visual tokens.

A slot holds one token's key and value (after RoPE) per head. Slots are kept in arrival
order per head. Every slot is tagged with (frame, patch); -1 marks a pinned (text) slot
that is never dropped. The session calls `compress` between forward passes; inside a
forward pass the cache only appends. `next_position` (on StreamCache, set by the session)
is the logical RoPE position of the next token; `n_cached` is the number of stored slots.
Positions are passed to the model explicitly, so `offset` (what mlx-vlm reads) is n_cached.

mlx-vlm's attention calls `update_and_fetch`; its create_attention_mask calls `make_mask`
on the cache it is given (StreamCache delegates to layer 0). Storage grows in `step`-sized
chunks: one copy per growth, in-place writes otherwise (decode appends stay O(1)).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_vlm.models.cache import _BaseCache, create_causal_mask

from .slots import PINNED, check_labels, kept_slots, visual_slots


class LayerKVCache(_BaseCache):
    """One layer's compressible KV cache (the mlx-vlm per-layer cache protocol)."""

    step = 256

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._keys = None  # (1, H, capacity, D) buffer; slots [0, n) are live
        self._values = None
        self._frame = np.zeros((0, 0), np.int32)  # (H, capacity)
        self._patch = np.zeros((0, 0), np.int32)
        self._n = 0
        self._pending = None  # labels for the next update: (frame (L,), patch (L,))

    @property
    def n_cached(self) -> int:
        return self._n

    @property
    def offset(self) -> int:
        return self._n

    @property
    def keys(self) -> mx.array | None:
        """(1, H, n, D) stored keys, arrival order per head."""
        return None if self._keys is None else self._keys[..., : self._n, :]

    @property
    def values(self) -> mx.array | None:
        return None if self._values is None else self._values[..., : self._n, :]

    @property
    def frame_ids(self) -> np.ndarray:
        """(H, n) int32 frame of each slot, -1 for pinned."""
        return self._frame[:, : self._n]

    @property
    def patch_ids(self) -> np.ndarray:
        return self._patch[:, : self._n]

    def label_next(self, frame_ids, patch_ids) -> None:
        """Tag the tokens of the next update_and_fetch; untagged tokens are pinned.

        Args:
            frame_ids: (L,) ints, -1 for pinned tokens.
            patch_ids: (L,) ints, -1 for pinned tokens.
        """
        self._pending = check_labels(frame_ids, patch_ids)

    def _take_labels(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Pop the pending labels for `length` new tokens (all pinned when none)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return np.full(length, PINNED, np.int32), np.full(length, PINNED, np.int32)
        if len(pending[0]) != length:
            raise ValueError(f"label_next tagged {len(pending[0])} tokens but {length} arrived.")
        return pending

    def _append_labels(self, frame: np.ndarray, patch: np.ndarray, n_heads: int, capacity: int):
        """Write (L,) labels for all heads at slots [n, n + L), growing to `capacity`."""
        if self._frame.shape != (n_heads, capacity):
            grown = np.full((2, n_heads, capacity), PINNED, np.int32)
            if self._n:
                grown[0, :, : self._n], grown[1, :, : self._n] = self.frame_ids, self.patch_ids
            self._frame, self._patch = grown[0], grown[1]
        self._frame[:, self._n : self._n + len(frame)] = frame
        self._patch[:, self._n : self._n + len(patch)] = patch

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append L new tokens; return all stored keys and values.

        Args:
            keys: (1, H, L, D) new keys (after RoPE).
            values: (1, H, L, Dv) new values.
        Returns:
            keys (1, H, n + L, D), values (1, H, n + L, Dv).
        """
        n, length = self._n, keys.shape[2]
        frame, patch = self._take_labels(length)
        if self._keys is None or n + length > self._keys.shape[2]:
            spare = -(n + length) % self.step  # round capacity up to a multiple of step
            self._keys = self._grow(self._keys, keys, spare)
            self._values = self._grow(self._values, values, spare)
        else:
            self._keys[..., n : n + length, :] = keys
            self._values[..., n : n + length, :] = values
        self._append_labels(frame, patch, keys.shape[1], self._keys.shape[2])
        self._n = n + length
        return self.keys, self.values

    def _grow(self, old: mx.array | None, new: mx.array, spare: int) -> mx.array:
        """One copy: live slots, then the new tokens, then `spare` empty slots."""
        pad = mx.zeros((*new.shape[:2], spare, new.shape[3]), new.dtype)
        parts = [new, pad] if old is None else [old[..., : self._n, :], new, pad]
        return mx.concatenate(parts, axis=2)

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None):
        """Mask for N new tokens: every cached slot visible, causal among the new ones.

        Args:
            N: number of new tokens.
            return_array: True for the explicit bool array; otherwise "causal", which
                mx.fast.scaled_dot_product_attention aligns bottom-right (the same mask)
                without materializing N x (n + N) booleans.
            window_size: sliding windows are not supported (must be None).
        Returns:
            None when N == 1, "causal", or bool (N, n + N) when return_array.
        """
        if window_size is not None:
            raise ValueError("The compressible cache does not support sliding-window attention.")
        if N == 1:
            return None
        return create_causal_mask(N, offset=self._n) if return_array else "causal"

    def visual(self):
        """The visual candidates of every head, in arrival order.

        Returns:
            slots (H, N) int64 np, keys (H, N, D), values (H, N, Dv),
            frame_ids (H, N) np, patch_ids (H, N) np.
        """
        slots = visual_slots(self.frame_ids)  # (H, N)
        idx = mx.array(slots.astype(np.int32))[:, :, None]  # (H, N, 1)
        keys = mx.take_along_axis(self.keys[0], idx, axis=1)
        values = mx.take_along_axis(self.values[0], idx, axis=1)
        frames = np.take_along_axis(self.frame_ids, slots, axis=1)
        patches = np.take_along_axis(self.patch_ids, slots, axis=1)
        return slots, keys, values, frames, patches

    def compress(self, kept) -> None:
        """Keep the pinned slots and, per head, the visual candidates `kept`.

        Args:
            kept: (H, K) indices into visual() candidates (mx.array or numpy).
        """
        slots = kept_slots(self.frame_ids, np.asarray(kept))  # (H, n_new)
        idx = mx.array(slots.astype(np.int32))[None, :, :, None]  # (1, H, n_new, 1)
        self._keys = mx.take_along_axis(self.keys, idx, axis=2)
        self._values = mx.take_along_axis(self.values, idx, axis=2)
        self._frame = np.take_along_axis(self.frame_ids, slots, axis=1)
        self._patch = np.take_along_axis(self.patch_ids, slots, axis=1)
        self._n = slots.shape[1]

    @property
    def state(self):
        return self.keys, self.values

    @state.setter
    def state(self, v):
        """Restore keys and values; all restored slots are marked pinned."""
        self._reset()
        keys, values = v
        if keys is not None:
            self.update_and_fetch(keys, values)

    def size(self) -> int:
        return self._n

    def empty(self) -> bool:
        return self._n == 0

    def is_trimmable(self) -> bool:
        return False

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values held in live slots."""
        if self._keys is None:
            return 0
        return self.keys.nbytes + self.values.nbytes


class StreamCache:
    """All layers' caches, as the session holds them; iterable like mlx-vlm's cache list."""

    def __init__(self, num_layers: int):
        self.layers = [LayerKVCache() for _ in range(num_layers)]
        self.next_position = 0  # logical RoPE position of the next token (set by the session)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i) -> LayerKVCache:
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None):
        """Layer 0's mask (all layers hold the same count); see LayerKVCache.make_mask."""
        return self.layers[0].make_mask(N, return_array=return_array, window_size=window_size)

    @property
    def n_cached(self) -> int:
        return self.layers[0].n_cached

    @property
    def n_pinned(self) -> int:
        return int((self.layers[0].frame_ids[0] < 0).sum()) if self.n_cached else 0

    @property
    def n_visual(self) -> int:
        return self.n_cached - self.n_pinned

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def label_next(self, frame_ids, patch_ids) -> None:
        """Tag the next update's tokens in every layer (see LayerKVCache.label_next)."""
        for layer in self.layers:
            layer.label_next(frame_ids, patch_ids)
