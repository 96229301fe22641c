"""The compressible KV cache (PyTorch reference): the MLX cache, name for name.

Notation: B = 1 batch, H = KV heads, D = head dim, L = tokens of one update,
n = n_cached stored rows per head, N = visual candidates per head, K = kept visual tokens.

Rows are kept in arrival order per head and tagged with (slot, patch); -1 marks a
pinned (text) row that is never dropped. The session calls `compress` between forward
passes. `next_position` (on StreamCache) is the logical RoPE position of the next token;
`n_cached` is the number of stored rows.

StreamCache is also a transformers `Cache`, so transformers' attention can call
`past_key_values.update(k, v, layer_idx)`. Its mask creation asks `get_query_offset`
(= get_seq_length = n_cached) and `get_mask_sizes` (= (n_cached + L, 0)), which gives
every cached row visible and causal order among the L new tokens. get_seq_length counts
stored rows, not positions: always pass position_ids explicitly.

1-D RoPE positions (LLaVA-OV): the adapter calls `place_next(positions)` before a forward,
so each row records its position (per head; -1 when never placed), and `rerotate` moves
stored keys to new positions (R(p') k = R(p' - p) R(p) k) for the `compact` policy.

QuantizedLayerKVCache stores keys and values at `bits` (quant.py, bit for bit MLX's CPU
mx.quantize): each a (packed, scales, biases) tuple. `update` hands transformers' attention
the dequantized rows; compression scores dequantized candidates (visual) and gathers the
packed rows with their scales and biases (_keep), so nothing is ever quantized twice.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..contract.config import DEFAULT_KV_GROUP_SIZE
from ..contract.rows import (LayerStack, RowLabels, run_start, stored_map, stored_nbytes, stored_parts,
                             stored_rows, visual_rows)
from . import quant


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


class LayerKVCache(RowLabels, CacheLayerMixin):
    """One layer's compressible KV cache (the transformers cache-layer protocol)."""

    step = 256
    is_sliding = False
    is_compileable = False
    is_croppable = False
    _to_host = staticmethod(_as_numpy)

    def __init__(self):
        super().__init__()  # sets keys = values = None through the setters below
        self._reset()

    def _reset(self) -> None:
        self._keys = None  # (1, H, capacity, D) buffer; rows [0, n) are live
        self._values = None
        self._n = 0
        self._reset_labels()
        self.is_initialized = False

    @property
    def n_cached(self) -> int:
        return self._n

    @property
    def offset(self) -> int:
        return self._n

    @property
    def keys(self) -> torch.Tensor | None:
        """(1, H, n, D) stored keys, arrival order per head (quantized: a (packed, scales,
        biases) tuple of (1, H, n, ·) tensors)."""
        return None if self._keys is None else stored_map(lambda b: b[..., : self._n, :], self._keys)

    @keys.setter
    def keys(self, v: torch.Tensor | None) -> None:
        """Replace the stored keys (transformers' base class assigns them)."""
        self._keys = v
        self._n = 0 if v is None else stored_rows(v)

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._values is None else stored_map(lambda b: b[..., : self._n, :], self._values)

    @values.setter
    def values(self, v: torch.Tensor | None) -> None:
        self._values = v

    def set_rows(self, keys, values, slot, patch, pos) -> None:
        """Hold exactly these live rows: keys, values as `rows()` gives them (tensors, or
        (packed, scales, biases) tuples), labels (H, n)."""
        super().set_rows(stored_parts(keys)[0], stored_parts(values)[0], slot, patch, pos)  # n: the first part's
        self._keys, self._values = keys, values
        self.lazy_initialization(keys, values)

    def lazy_initialization(self, key_states, value_states) -> None:
        """The compute dtype and device (of the scales, for a stored tuple)."""
        like = key_states[1] if isinstance(key_states, tuple) else key_states
        self.dtype, self.device = like.dtype, like.device
        self.is_initialized = True

    def update_and_fetch(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append L new tokens; return all stored keys and values.

        Args:
            keys: (1, H, L, D) new keys (after RoPE).
            values: (1, H, L, Dv) new values.
        Returns:
            keys (1, H, n + L, D), values (1, H, n + L, Dv) as stored (QuantizedLayerKVCache:
            (packed, scales, biases) each, as the MLX cache returns them).
        """
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
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
                    _signed(b)[..., n : n + length, :] = _signed(x)
        self._append_labels(slot, patch, keys.shape[1], stored_rows(self._keys))
        self._n = n + length
        return self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """transformers' name for update_and_fetch (extra cache kwargs are ignored): every
        stored row in the compute dtype, (1, H, n + L, D) keys and values, for its attention."""
        keys, values = self.update_and_fetch(key_states, value_states)
        return self._load(keys), self._load(values)

    def _store(self, x: torch.Tensor):
        """What a new (1, H, L, D) block is stored as: itself here (the compute dtype)."""
        return x

    def _load(self, stored) -> torch.Tensor:
        """The stored form back as (..., D) tensors in the compute dtype: itself here."""
        return stored

    def _grow(self, old: torch.Tensor | None, new: torch.Tensor, spare: int) -> torch.Tensor:
        """One copy: live rows, then the new tokens, then `spare` empty rows."""
        pad = new.new_zeros((*new.shape[:2], spare, new.shape[3]))
        parts = [new, pad] if old is None else [old[..., : self._n, :], new, pad]
        return torch.cat([_signed(p) for p in parts], dim=2).view(new.dtype)

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None):
        """Mask for N new tokens: every cached row visible, causal among the new ones.

        Args:
            N: number of new tokens.
            return_array: True for the explicit bool tensor; otherwise "causal" (bottom-right
                aligned), as the MLX cache answers. transformers builds its own mask through
                get_mask_sizes and does not call this.
            window_size: sliding windows are not supported (must be None).
        Returns:
            None when N == 1, "causal", or bool (N, n + N) when return_array.
        """
        if window_size is not None:
            raise ValueError("The compressible cache does not support sliding-window attention.")
        if N == 1:
            return None
        if not return_array:
            return "causal"
        device = None if self._keys is None else stored_parts(self._keys)[0].device
        rows = torch.arange(self._n, self._n + N, device=device)[:, None]  # (N, 1) row of each new token
        return rows >= torch.arange(self._n + N, device=device)[None]  # (N, n + N)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv_length, kv_offset) for transformers' mask: all n cached rows plus the new ones."""
        return self._n + query_length, 0

    def get_seq_length(self) -> int:
        """Stored rows (n_cached), not the logical position."""
        return self._n

    def get_max_length(self) -> int:
        return -1

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
        """Keep the stored rows (H, n_new) in that order: one gather per buffer (and per part
        of a quantized one: its packed rows with their scales and biases, as stored)."""
        self._keys, self._values = (stored_map(lambda b: _take_rows(b, rows), buf) for buf in (self._keys, self._values))
        self._keep_labels(rows)
        self._n = rows.shape[1]

    def reset(self) -> None:
        """Drop everything stored."""
        self._reset()

    def size(self) -> int:
        return self._n

    def empty(self) -> bool:
        return self._n == 0

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

    def to_quantized(self, group_size: int = DEFAULT_KV_GROUP_SIZE, bits: int = 8) -> QuantizedLayerKVCache:
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
    (packed uint32 (1, H, n, D * bits / 32), scales (1, H, n, D / group_size), biases same),
    scales and biases in the compute dtype; bit for bit the MLX cache's (quant.py).

    transformers' attention gets the dequantized rows from `update`. Compression scores the
    dequantized rows (visual()) and gathers the packed rows with their scales and biases
    (_keep), so a kept token keeps the bytes it was stored with: nothing is quantized twice.
    Re-rotating keys (the compact position policy) would, so `rerotate` refuses.
    """

    def __init__(self, group_size: int = DEFAULT_KV_GROUP_SIZE, bits: int = 8):
        quant.check(group_size, bits)
        self.group_size, self.bits = group_size, bits
        super().__init__()

    def _store(self, x: torch.Tensor) -> tuple:
        return quant.quantize(x, self.group_size, self.bits)

    def _load(self, stored: tuple) -> torch.Tensor:
        return quant.dequantize(*stored, self.group_size, self.bits)

    @property
    def meta_state(self) -> tuple[str, ...]:
        """mlx-lm's QuantizedKVCache meta_state: (step, offset, group_size, bits) as strings."""
        return tuple(map(str, (self.step, self._n, self.group_size, self.bits)))

    def rerotate(self, new_positions, rope) -> None:
        raise ValueError("a quantized cache cannot re-rotate its keys: that would quantize them twice")

    def to_quantized(self, group_size: int = DEFAULT_KV_GROUP_SIZE, bits: int = 8) -> QuantizedLayerKVCache:
        return self


def _signed(x: torch.Tensor) -> torch.Tensor:
    """A packed uint32 tensor viewed as int32 (the same bytes) for row copies and gathers:
    torch's uint32 is a shell dtype whose operator coverage varies by version and device,
    int32 has them all."""
    return x.view(torch.int32) if x.dtype == torch.uint32 else x


def _take_rows(buffer: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Per-head gather of rows (H, M) from a (1, H, capacity, ·) buffer -> (1, H, M, ·)."""
    idx = torch.as_tensor(rows, device=buffer.device)[None, :, :, None]  # (1, H, M, 1)
    picked = torch.gather(_signed(buffer), 2, idx.expand(-1, -1, -1, buffer.shape[-1]))
    return picked.view(buffer.dtype)


class StreamCache(LayerStack, Cache):
    """All layers' caches, as the session holds them; also a transformers Cache."""

    def __init__(self, num_layers: int, kv_bits: int | None = None, kv_group_size: int = DEFAULT_KV_GROUP_SIZE):
        Cache.__init__(self, layers=[LayerKVCache() if kv_bits is None else
                                     QuantizedLayerKVCache(group_size=kv_group_size, bits=kv_bits)
                                     for _ in range(num_layers)])
        self.next_position = 0  # logical RoPE position of the next token (set by the session)
