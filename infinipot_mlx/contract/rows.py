"""Row bookkeeping shared by both cache backends (pure numpy). A row is one token's entry in
a layer's key/value buffer, per head (a temporal *slot* is something else: ALGORITHM.md section 12).

Notation: H = KV heads, n = stored rows per head, N = visual candidates per head,
K = kept visual tokens, L = tokens of one update. A row's (slot, patch) label is -1
for a pinned (text) row; rows are in arrival order per head.
"""

from __future__ import annotations

import numpy as np

from ..deprecated import old_name

PINNED = -1  # slot/patch id of a pinned (text) row
SLOT_TEXT = -2  # patch id of a slot's own text row (Qwen3-VL's timestamp, vision start/end)


def check_labels(slot_ids, patch_ids) -> tuple[np.ndarray, np.ndarray]:
    """Validate the labels of a chunk of tokens.

    Args:
        slot_ids: (L,) ints, -1 for pinned tokens.
        patch_ids: (L,) ints, -1 for pinned tokens, SLOT_TEXT for a slot's text tokens.
    Returns:
        slot_ids, patch_ids as int32 arrays (L,).
    """
    slot_ids = np.asarray(slot_ids, dtype=np.int32).reshape(-1)
    patch_ids = np.asarray(patch_ids, dtype=np.int32).reshape(-1)
    if slot_ids.shape != patch_ids.shape:
        raise ValueError(f"slot_ids {slot_ids.shape} and patch_ids {patch_ids.shape} differ in length.")
    pinned = slot_ids < 0
    if np.any(pinned != (patch_ids == PINNED)) or np.any(patch_ids < SLOT_TEXT):
        raise ValueError("A token is pinned (-1) in slot_ids but not in patch_ids, or the reverse "
                         f"(a slot's text token has patch id {SLOT_TEXT}).")
    return slot_ids, patch_ids


def stored_parts(buffer) -> tuple:
    """A stored key or value buffer as a tuple of arrays: (itself,) in the compute dtype, or a
    quantized cache's (packed, scales, biases); () when nothing is stored yet (None)."""
    return () if buffer is None else buffer if isinstance(buffer, tuple) else (buffer,)


def stored_map(fn, *buffers):
    """fn part by part over stored buffers of the same form (stored_parts); a None buffer
    (nothing stored yet) gives None for each part. Returns the same form: one array or a tuple."""
    form = next(b for b in buffers if b is not None)
    n = len(stored_parts(form))
    parts = [stored_parts(b) or (None,) * n for b in buffers]
    out = tuple(fn(*group) for group in zip(*parts))
    return out if isinstance(form, tuple) else out[0]


def stored_rows(buffer) -> int:
    """Rows a stored buffer has room for (spare rows included): axis 2 of (1, H, rows, ·)."""
    return stored_parts(buffer)[0].shape[2]


def stored_nbytes(buffer) -> int:
    """Bytes of a stored buffer, every part counted (MLX arrays and torch tensors: .nbytes)."""
    return sum(a.nbytes for a in stored_parts(buffer))


def visual_rows(slot_ids: np.ndarray) -> np.ndarray:
    """Row indices of the visual (non-pinned) rows of each head, in arrival order.

    Args:
        slot_ids: (H, n) int, -1 marks pinned rows.
    Returns:
        (H, N) int64 row indices, ascending per head.
    """
    pinned = slot_ids < 0  # (H, n)
    n_visual = pinned.shape[1] - int(pinned[0].sum()) if pinned.size else 0
    assert np.all(pinned.sum(axis=1) == pinned.shape[1] - n_visual), "heads hold different pinned counts"
    return np.argsort(pinned, axis=1, kind="stable")[:, :n_visual]


def run_start(rows: np.ndarray) -> int | None:
    """a when every head's rows (H, N) are the one run a, a+1, ..., a+N-1, else None: the
    visual rows are then a slice of the buffers (a view), not a gather."""
    if rows.size == 0:
        return None
    start = int(rows[0, 0])
    return start if np.array_equal(rows, np.broadcast_to(np.arange(start, start + rows.shape[1]), rows.shape)) else None


def kept_rows(slot_ids: np.ndarray, kept) -> np.ndarray:
    """Rows that survive a compression: every pinned row plus the kept visual ones.

    Args:
        slot_ids: (H, n) int, -1 marks pinned rows.
        kept: (H, K) indices into the visual candidates (visual_rows order).
    Returns:
        (H, n_pinned + K) int64 row indices, ascending (arrival order) per head.
    """
    kept = np.asarray(kept, dtype=np.int64)
    visual = visual_rows(slot_ids)  # (H, N)
    n_heads, n_visual = visual.shape
    if kept.ndim != 2 or kept.shape[0] != n_heads:
        raise ValueError(f"kept must be (H={n_heads}, K) indices, got shape {kept.shape}.")
    if kept.size and (kept.min() < 0 or kept.max() >= n_visual):
        raise ValueError(f"kept indices must lie in [0, {n_visual}) (the visual candidates).")
    keep = slot_ids < 0  # (H, n) pinned rows always survive
    np.put_along_axis(keep, np.take_along_axis(visual, kept, axis=1), True, axis=1)
    counts = keep.sum(axis=1)  # (H,) equal across heads unless kept repeats an index
    assert np.all(counts == slot_ids.shape[1] - n_visual + kept.shape[1]), f"duplicate kept: {counts}"
    return np.nonzero(keep)[1].reshape(n_heads, -1)  # row-major, so ascending per head


def rows_without_pinned(slot_ids: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows that survive dropping the pinned rows of rank [start, stop) (arrival order).

    Every head holds the same pinned tokens in the same order, so the k-th pinned row of
    each head is the same text token.

    Args:
        slot_ids: (H, n) int, -1 marks pinned rows.
    Returns:
        (H, n - (stop - start)) int64 row indices, ascending per head.
    """
    pinned = slot_ids < 0  # (H, n)
    rank = np.cumsum(pinned, axis=1) - 1  # (H, n) rank of each pinned row among the pinned
    keep = ~(pinned & (rank >= start) & (rank < stop))
    return np.nonzero(keep)[1].reshape(slot_ids.shape[0], -1)


class LayerStack:
    """What a stack of per-layer caches answers as a whole, for either backend.

    A subclass sets `self.layers` (one cache per layer, all holding the same count) and
    `self.next_position` (the logical RoPE position of the next token, set by the session).
    """

    layers: list

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def make_mask(self, N: int, return_array: bool = False, window_size: int | None = None):
        """Layer 0's mask (every layer holds the same count)."""
        return self.layers[0].make_mask(N, return_array=return_array, window_size=window_size)

    @property
    def n_cached(self) -> int:
        return self.layers[0].n_cached

    @property
    def n_pinned(self) -> int:
        return int((self.layers[0].slot_ids[0] < 0).sum()) if self.n_cached else 0

    @property
    def n_visual(self) -> int:
        return self.n_cached - self.n_pinned

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values in live rows."""
        return sum(layer.nbytes for layer in self.layers)

    @property
    def allocated_bytes(self) -> int:
        """Bytes of every layer's key and value buffers, the spare rows included."""
        return sum(layer.allocated_bytes for layer in self.layers)

    def label_next(self, slot_ids, patch_ids) -> None:
        """Tag the next update's tokens in every layer (see LayerKVCache.label_next)."""
        for layer in self.layers:
            layer.label_next(slot_ids, patch_ids)

    def place_next(self, positions) -> None:
        """Give the next update's tokens their 1-D positions in every layer (LayerKVCache.place_next)."""
        for layer in self.layers:
            layer.place_next(positions)

    def rerotate(self, new_positions, rope) -> None:
        """Move every layer's rows to new positions (see LayerKVCache.rerotate)."""
        for layer in self.layers:
            layer.rerotate(new_positions, rope)

    def drop_pinned(self, start: int, stop: int) -> None:
        """Remove the pinned (text) tokens of rank [start, stop) from every layer."""
        for layer in self.layers:
            layer.drop_pinned(start, stop)

    @property
    def quantized(self) -> bool:
        """True when the layers store keys and values quantized (they have `bits`)."""
        return hasattr(self.layers[0], "bits")

    def maybe_quantize(self, config) -> None:
        """Switch every layer to quantized storage (each row quantized once) when `config`
        asks for kv_bits and the cache holds at least quantized_kv_start tokens (mlx-lm's
        maybe_quantize_kv_cache)."""
        if config.quantized and not self.quantized and self.n_cached >= config.quantized_kv_start:
            self.layers = [layer.to_quantized(group_size=config.kv_group_size, bits=config.kv_bits)
                           for layer in self.layers]

    def snapshot(self) -> tuple:
        """What restore() needs to undo every later append, compression, drop or rotation.

        Cheap: references to each layer's arrays and counts, no copies. It stays valid
        because the caches never write below their live length in place: appends write
        past it, and compress, drop_pinned and rerotate make new arrays.
        """
        return self.next_position, list(self.layers), [layer.state_refs() for layer in self.layers]

    def restore(self, snapshot: tuple) -> None:
        self.next_position, self.layers, states = snapshot[0], list(snapshot[1]), snapshot[2]
        for layer, state in zip(self.layers, states):
            layer.set_state_refs(state)


class RowLabels:
    """Per-head, per-row labels of one layer's cache: (slot, patch) and 1-D position.

    Host-side numpy bookkeeping shared by both backends' LayerKVCache. The cache keeps
    `self._n` (live rows); `_to_host` turns a backend array into numpy.
    """

    _n: int

    def _reset_labels(self) -> None:
        self._slot = np.zeros((0, 0), np.int32)  # (H, capacity)
        self._patch = np.zeros((0, 0), np.int32)
        self._pos = np.zeros((0, 0), np.int32)  # (H, capacity) 1-D RoPE position, -1 unknown
        self._pending = None  # labels for the next update: (slot (L,), patch (L,))
        self._pending_pos = None  # positions of the next update (L,)

    @staticmethod
    def _to_host(x) -> np.ndarray:
        return np.asarray(x)

    @property
    def slot_ids(self) -> np.ndarray:
        """(H, n) int32 temporal slot of each row, -1 for pinned."""
        return self._slot[:, : self._n]

    frame_ids = old_name("frame_ids")  # the name before 0.2

    @property
    def patch_ids(self) -> np.ndarray:
        return self._patch[:, : self._n]

    @property
    def positions(self) -> np.ndarray:
        """(H, n) int32 1-D RoPE position of each row, -1 where none was placed."""
        return self._pos[:, : self._n]

    def place_next(self, positions) -> None:
        """Record the 1-D RoPE positions (L,) of the next update's tokens."""
        self._pending_pos = np.asarray(self._to_host(positions), dtype=np.int32).reshape(-1)

    def label_next(self, slot_ids, patch_ids) -> None:
        """Tag the tokens of the next update; untagged tokens are pinned.

        Args:
            slot_ids: (L,) ints, -1 for pinned tokens.
            patch_ids: (L,) ints, -1 for pinned tokens.
        """
        self._pending = check_labels(self._to_host(slot_ids), self._to_host(patch_ids))

    def _take_labels(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Pop the pending labels for `length` new tokens (all pinned when none)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return np.full(length, PINNED, np.int32), np.full(length, PINNED, np.int32)
        if len(pending[0]) != length:
            raise ValueError(f"label_next tagged {len(pending[0])} tokens but {length} arrived.")
        return pending

    def _append_labels(self, slot: np.ndarray, patch: np.ndarray, n_heads: int, capacity: int):
        """Write (L,) labels and positions for all heads at rows [n, n + L), growing to `capacity`."""
        if self._slot.shape != (n_heads, capacity):
            grown = np.full((3, n_heads, capacity), PINNED, np.int32)
            if self._n:
                grown[:, :, : self._n] = self.slot_ids, self.patch_ids, self.positions
            self._slot, self._patch, self._pos = grown
        pos, self._pending_pos = self._pending_pos, None
        if pos is not None and len(pos) != len(slot):
            raise ValueError(f"place_next gave {len(pos)} positions but {len(slot)} tokens arrived.")
        self._slot[:, self._n : self._n + len(slot)] = slot
        self._patch[:, self._n : self._n + len(patch)] = patch
        self._pos[:, self._n : self._n + len(slot)] = PINNED if pos is None else pos

    def rows(self) -> dict:
        """The live rows: keys, values (1, H, n, D) backend arrays; slot, patch, pos (H, n) int32."""
        return dict(keys=self.keys, values=self.values, slot=self.slot_ids.copy(),
                    patch=self.patch_ids.copy(), pos=self.positions.copy())

    def set_rows(self, keys, values, slot, patch, pos) -> None:
        """Hold exactly these live rows (a memory loaded from disk; memories.py)."""
        self._reset()
        self._keys, self._values = keys, values  # arrays, or (packed, scales, biases) tuples
        self._n = stored_rows(keys)
        self._slot, self._patch, self._pos = (np.array(a, np.int32) for a in (slot, patch, pos))

    def state_refs(self) -> tuple:
        """(keys, values, n, slot, patch, pos) references (see LayerStack.snapshot)."""
        return self._keys, self._values, self._n, self._slot, self._patch, self._pos

    def set_state_refs(self, state: tuple) -> None:
        self._keys, self._values, self._n, self._slot, self._patch, self._pos = state
        self._pending = self._pending_pos = None

    def compress(self, kept) -> None:
        """Keep the pinned rows and, per head, the visual candidates `kept`.

        Args:
            kept: (H, K) indices into visual() candidates (a backend array or numpy).
        """
        self._keep(kept_rows(self.slot_ids, self._to_host(kept)))

    def drop_pinned(self, start: int, stop: int) -> None:
        """Remove the pinned tokens of rank [start, stop) (an old conversation turn)."""
        self._keep(rows_without_pinned(self.slot_ids, start, stop))

    def _keep(self, rows: np.ndarray) -> None:
        """Keep the stored rows (H, n_new), in that order (the backend's gather)."""
        raise NotImplementedError

    def _keep_labels(self, rows: np.ndarray) -> None:
        """Keep the labels of `rows` (H, n_new), in that order."""
        self._slot = np.take_along_axis(self.slot_ids, rows, axis=1)
        self._patch = np.take_along_axis(self.patch_ids, rows, axis=1)
        self._pos = np.take_along_axis(self.positions, rows, axis=1)

    def rerotate(self, new_positions, rope) -> None:
        """Move every row to a new 1-D RoPE position by re-rotating its stored key.

        Args:
            new_positions: (H, n) or (n,) ints, the rows' new positions.
            rope: the model's rotation, rope(keys (1, H, n, D), delta (H, n) int32) ->
                keys rotated by delta, so that R(p') k = R(p' - p) R(p) k.
        """
        new = np.broadcast_to(np.asarray(new_positions, np.int32), self.positions.shape)
        if np.any(self.positions < 0):
            raise ValueError("some cached tokens have no recorded position; re-rotation needs "
                             "positions placed with place_next before every forward.")
        delta = new - self.positions  # (H, n)
        if delta.any():
            self._keys = rope(self.keys, delta)  # the backend's rotation of its own buffer
        pos = self._pos.copy()  # a new array: a snapshot's labels stay as they were
        pos[:, : self._n] = new
        self._pos = pos
