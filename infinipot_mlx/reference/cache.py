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
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..contract.rows import LayerStack, RowLabels, run_start, visual_rows


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
        """(1, H, n, D) stored keys, arrival order per head."""
        return None if self._keys is None else self._keys[..., : self._n, :]

    @keys.setter
    def keys(self, v: torch.Tensor | None) -> None:
        """Replace the stored keys (transformers' base class assigns them)."""
        self._keys = v
        self._n = 0 if v is None else v.shape[-2]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._values is None else self._values[..., : self._n, :]

    @values.setter
    def values(self, v: torch.Tensor | None) -> None:
        self._values = v

    def set_rows(self, keys, values, slot, patch, pos) -> None:
        super().set_rows(keys, values, slot, patch, pos)
        self.lazy_initialization(keys, values)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update_and_fetch(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append L new tokens; return all stored keys and values.

        Args:
            keys: (1, H, L, D) new keys (after RoPE).
            values: (1, H, L, Dv) new values.
        Returns:
            keys (1, H, n + L, D), values (1, H, n + L, Dv).
        """
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        n, length = self._n, keys.shape[2]
        slot, patch = self._take_labels(length)
        if self._keys is None or n + length > self._keys.shape[2]:
            spare = -(n + length) % self.step  # round capacity up to a multiple of step
            self._keys = self._grow(self._keys, keys, spare)
            self._values = self._grow(self._values, values, spare)
        else:
            self._keys[..., n : n + length, :] = keys
            self._values[..., n : n + length, :] = values
        self._append_labels(slot, patch, keys.shape[1], self._keys.shape[2])
        self._n = n + length
        return self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """transformers' name for update_and_fetch (extra cache kwargs are ignored)."""
        return self.update_and_fetch(key_states, value_states)

    def _grow(self, old: torch.Tensor | None, new: torch.Tensor, spare: int) -> torch.Tensor:
        """One copy: live rows, then the new tokens, then `spare` empty rows."""
        pad = new.new_zeros((*new.shape[:2], spare, new.shape[3]))
        parts = [new, pad] if old is None else [old[..., : self._n, :], new, pad]
        return torch.cat(parts, dim=2)

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
        device = None if self._keys is None else self._keys.device
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
        keys, values = self.keys[0], self.values[0]  # (H, n, D)
        start = run_start(rows)
        if start is None:  # text between video tokens: one row gather per buffer
            idx = torch.as_tensor(rows, device=keys.device)[:, :, None]  # (H, N, 1)
            keys = torch.gather(keys, 1, idx.expand(-1, -1, keys.shape[-1]))
            values = torch.gather(values, 1, idx.expand(-1, -1, values.shape[-1]))
        else:  # one run of rows in every head: a view of the buffers, nothing copied
            stop = start + rows.shape[1]
            keys, values = keys[:, start:stop], values[:, start:stop]
        slots = np.take_along_axis(self.slot_ids, rows, axis=1)
        patches = np.take_along_axis(self.patch_ids, rows, axis=1)
        return rows, keys, values, slots, patches

    def _keep(self, rows: np.ndarray) -> None:
        """Keep the stored rows (H, n_new) in that order: one gather per buffer."""
        idx = torch.as_tensor(rows, device=self._keys.device)[None, :, :, None]  # (1, H, n_new, 1)
        keys, values = self.keys, self.values
        self._keys = torch.gather(keys, 2, idx.expand(-1, -1, -1, keys.shape[-1]))
        self._values = torch.gather(values, 2, idx.expand(-1, -1, -1, values.shape[-1]))
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
        keys, values = self.keys, self.values
        return keys.numel() * keys.element_size() + values.numel() * values.element_size()

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the key and value buffers, spare rows included (storage grows by `step`)."""
        if self._keys is None:
            return 0
        return sum(b.numel() * b.element_size() for b in (self._keys, self._values))


class StreamCache(LayerStack, Cache):
    """All layers' caches, as the session holds them; also a transformers Cache."""

    def __init__(self, num_layers: int):
        Cache.__init__(self, layers=[LayerKVCache() for _ in range(num_layers)])
        self.next_position = 0  # logical RoPE position of the next token (set by the session)
