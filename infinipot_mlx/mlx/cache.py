"""The compressible KV cache (MLX): stores tokens, never decides what to drop.

Notation: B = 1 batch, H = KV heads, D = head dim, L = tokens of one update,
n = n_cached stored rows per head, N = visual candidates per head, K = kept visual tokens.

A row holds one token's key and value (after RoPE) per head. Rows are kept in arrival
order per head. Every row is tagged with (slot, patch); -1 marks a pinned (text) row
that is never dropped. The session calls `compress` between forward passes; inside a
forward pass the cache only appends. `next_position` (on StreamCache, set by the session)
is the logical RoPE position of the next token; `n_cached` is the number of stored rows.

1-D RoPE positions (LLaVA-OV): an adapter calls `place_next(positions)` before a forward.
The cache then records each row's position (per head; -1 when never placed) and its
`offset` reports the first placed position, because mlx-vlm's Qwen2 attention takes no
position_ids and rotates the L new tokens to offset .. offset + L - 1 (it reads `offset`
before `update_and_fetch`). Without placed positions `offset` is n_cached (M-RoPE models
get position_ids explicitly and never read it). `rerotate` moves stored keys to new
positions (R(p') k = R(p' - p) R(p) k) for the `compact` position policy.

mlx-vlm's attention calls `update_and_fetch`; its create_attention_mask calls `make_mask`
on the cache it is given (StreamCache delegates to layer 0). Storage grows in `step`-sized
chunks: one copy per growth, in-place writes otherwise (decode appends stay O(1)).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_vlm.models.cache import _BaseCache, create_causal_mask

from ..contract.rows import (LayerStack, RowLabels, run_start, stored_map, stored_nbytes, stored_parts,
                             stored_rows, visual_rows)


class LayerKVCache(RowLabels, _BaseCache):
    """One layer's compressible KV cache (the mlx-vlm per-layer cache protocol)."""

    step = 256

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self._keys = None  # (1, H, capacity, D) buffer; rows [0, n) are live
        self._values = None
        self._n = 0
        self._reset_labels()

    @property
    def n_cached(self) -> int:
        return self._n

    @property
    def offset(self) -> int:
        """RoPE offset of the next update: its first placed position, else n_cached."""
        if self._pending_pos is not None and len(self._pending_pos):
            return int(self._pending_pos[0])
        return self._n

    @property
    def keys(self) -> mx.array | None:
        """(1, H, n, D) stored keys, arrival order per head (quantized: a (packed, scales,
        biases) tuple of (1, H, n, ·) arrays)."""
        return None if self._keys is None else stored_map(lambda b: b[..., : self._n, :], self._keys)

    @property
    def values(self) -> mx.array | None:
        return None if self._values is None else stored_map(lambda b: b[..., : self._n, :], self._values)

    def dense_keys(self) -> mx.array | None:
        """(1, H, n, D) stored keys in the compute dtype (dequantized from a quantized cache),
        as attention reads them (the evidence's attention weights)."""
        return None if self._keys is None else self._load(self.keys)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        """Append L new tokens; return all stored keys and values.

        Args:
            keys: (1, H, L, D) new keys (after RoPE).
            values: (1, H, L, Dv) new values.
        Returns:
            keys (1, H, n + L, D), values (1, H, n + L, Dv) as stored (QuantizedLayerKVCache:
            (packed, scales, biases) each, which mlx-vlm's attention reads quantized).
        """
        n, length = self._n, keys.shape[2]
        slot, patch = self._take_labels(length)
        new_keys, new_values = self._store(keys), self._store(values)
        if self._keys is None or n + length > stored_rows(self._keys):
            spare = -(n + length) % self.step  # round capacity up to a multiple of step
            self._keys = stored_map(lambda old, new: self._grow(old, new, spare), self._keys, new_keys)
            self._values = stored_map(lambda old, new: self._grow(old, new, spare), self._values, new_values)
        else:
            for buffer, new in ((self._keys, new_keys), (self._values, new_values)):
                for b, x in zip(stored_parts(buffer), stored_parts(new)):
                    b[..., n : n + length, :] = x
        self._append_labels(slot, patch, keys.shape[1], stored_rows(self._keys))
        self._n = n + length
        return self.keys, self.values

    def _store(self, x: mx.array):
        """What a new (1, H, L, D) block is stored as: itself here (the compute dtype)."""
        return x

    def _load(self, stored):
        """The stored form back as (…, D) arrays in the compute dtype: itself here."""
        return stored

    def _grow(self, old: mx.array | None, new: mx.array, spare: int) -> mx.array:
        """One copy: live rows, then the new tokens, then `spare` empty rows."""
        pad = mx.zeros((*new.shape[:2], spare, new.shape[3]), new.dtype)
        parts = [new, pad] if old is None else [old[..., : self._n, :], new, pad]
        return mx.concatenate(parts, axis=2)

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None):
        """Mask for N new tokens: every cached row visible, causal among the new ones.

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
            rows (H, N) int64 np, keys (H, N, D), values (H, N, Dv),
            slot_ids (H, N) np, patch_ids (H, N) np.
        """
        rows = visual_rows(self.slot_ids)  # (H, N)
        start = run_start(rows)
        if start is None:  # text between video tokens: one row gather per buffer
            keys, values = (stored_map(lambda b: _take_rows(b, rows)[0], buf) for buf in (self._keys, self._values))
        else:  # one run of rows in every head: a view of the buffers, nothing copied
            stop = start + rows.shape[1]
            keys, values = (stored_map(lambda b: b[0, :, start:stop], buf) for buf in (self._keys, self._values))
        keys, values = self._load(keys), self._load(values)  # scored as the attention reads them
        slots = np.take_along_axis(self.slot_ids, rows, axis=1)
        patches = np.take_along_axis(self.patch_ids, rows, axis=1)
        return rows, keys, values, slots, patches

    def _keep(self, rows: np.ndarray) -> None:
        """Keep the stored rows (H, n_new) in that order: one row gather per buffer."""
        self._keys, self._values = (stored_map(lambda b: _take_rows(b, rows), buf) for buf in (self._keys, self._values))
        self._keep_labels(rows)
        self._n = rows.shape[1]

    @property
    def state(self):
        return self.keys, self.values

    @state.setter
    def state(self, v):
        """Hold these keys and values as stored (a quantized cache's triples are not quantized
        again); every restored row is marked pinned."""
        self._reset()
        keys, values = v
        if keys is not None:
            pinned = np.full((stored_parts(keys)[0].shape[1], stored_rows(keys)), -1, np.int32)  # (H, n)
            self.set_rows(keys, values, pinned, pinned, pinned)

    def size(self) -> int:
        return self._n

    def empty(self) -> bool:
        return self._n == 0

    def is_trimmable(self) -> bool:
        return False

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values held in live rows."""
        if self._keys is None:
            return 0
        return stored_nbytes(self.keys) + stored_nbytes(self.values)

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the key and value buffers, spare rows included (storage grows by `step`)."""
        return 0 if self._keys is None else stored_nbytes(self._keys) + stored_nbytes(self._values)

    def to_quantized(self, group_size: int = 64, bits: int = 8) -> "QuantizedLayerKVCache":
        """This layer's rows quantized once, labels and all (mlx-lm's to_quantized)."""
        quantized = QuantizedLayerKVCache(group_size=group_size, bits=bits)
        if self._keys is not None:
            rows = self.rows()
            quantized.set_rows(quantized._store(rows["keys"]), quantized._store(rows["values"]),
                               rows["slot"], rows["patch"], rows["pos"])
        return quantized


class QuantizedLayerKVCache(LayerKVCache):
    """A layer cache that stores keys and values at `bits`, as mlx-lm's QuantizedKVCache does:
    affine, per group of `group_size` along the head dim, each of keys and values a tuple
    (packed uint32 (1, H, n, D * bits / 32), scales (1, H, n, D / group_size), biases same).

    mlx-vlm's attention sees `bits` and reads the tuples with quantized matmuls. Compression
    scores the dequantized rows (visual()) and gathers the packed rows with their scales and
    biases (_keep), so a kept token keeps the bytes it was stored with: nothing is quantized
    twice. Re-rotating keys (the compact position policy) would, so `rerotate` refuses.
    """

    def __init__(self, group_size: int = 64, bits: int = 8):
        self.group_size, self.bits = group_size, bits
        super().__init__()

    def _store(self, x: mx.array) -> tuple:
        return tuple(mx.quantize(x, group_size=self.group_size, bits=self.bits))

    def _load(self, stored: tuple) -> mx.array:
        return mx.dequantize(*stored, group_size=self.group_size, bits=self.bits)

    @property
    def meta_state(self) -> tuple[str, ...]:
        """mlx-lm's QuantizedKVCache meta_state: (step, offset, group_size, bits) as strings."""
        return tuple(map(str, (self.step, self._n, self.group_size, self.bits)))

    def rerotate(self, new_positions, rope) -> None:
        raise ValueError("a quantized cache cannot re-rotate its keys: that would quantize them twice")

    def to_quantized(self, group_size: int = 64, bits: int = 8) -> "QuantizedLayerKVCache":
        return self


def _take_rows(buffer: mx.array, rows: np.ndarray) -> mx.array:
    """Per-head gather of rows as one gather over the flattened heads (MLX's CPU
    take_along_axis is ~7x slower).

    Args:
        buffer: (1, H, capacity, D) storage.
        rows: (H, M) row indices per head.
    Returns:
        (1, H, M, D).
    """
    _, n_heads, capacity, dim = buffer.shape
    flat = (rows + np.arange(n_heads)[:, None] * capacity).reshape(-1).astype(np.int32)  # (H*M,)
    picked = mx.take(buffer.reshape(n_heads * capacity, dim), mx.array(flat), axis=0)  # (H*M, D)
    return picked.reshape(1, n_heads, rows.shape[1], dim)


class StreamCache(LayerStack):
    """All layers' caches, as the session holds them; iterable like mlx-vlm's cache list."""

    def __init__(self, num_layers: int, kv_bits: int | None = None, kv_group_size: int = 64):
        self.layers = [LayerKVCache() if kv_bits is None else
                       QuantizedLayerKVCache(group_size=kv_group_size, bits=kv_bits)
                       for _ in range(num_layers)]
        self.next_position = 0  # logical RoPE position of the next token (set by the session)
