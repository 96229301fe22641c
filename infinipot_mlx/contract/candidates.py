"""Host-side (numpy) bookkeeping of the visual candidates, shared by both backends.

The selection core (scoring.py, select.py and their reference/ mirrors) does its heavy
math in MLX or torch; everything that only depends on the (slot, patch) metadata is
computed here once, in numpy, so both backends see exactly the same masks and layouts.

Notation (ALGORITHM.md sections 4-5): H = KV heads, N = visual candidates per head in
arrival order, T = tokens per slot, F = N // T slots' worth, K = kept tokens,
K_tar = the TaR share of K. slot_ids/patch_ids are (H, N) integer arrays.

Recent slots (per head). r = plan.recent_count(F, recent_ratio). The head's slots are
ranked by slot id, newest first; a slot is whole when all T of its patches are
present. R is the newest min(r, w) slots, w being the number of newest slots that are
whole in an unbroken run from the newest one. When even the newest slot is not whole
(w = 0), R falls back to that newest slot alone, partial as it is.

Dense grid (VaN pooling). Each head's tokens are scattered into a (G, rows, cols) grid:
G = the largest number of distinct slot ids present in any head (slots with a visual
token; a slot with only its text left takes no place), a head's present slots fill the grid's first slot places in slot-id order (slots absent from a head
leave no gap), and a missing patch or unused trailing slot places is a hole.

Pooling with holes (pool_layout). A window's mean is sum(present values) / count, where
count = k_total - (holes inside the grid in that window): a hole adds neither to the sum
nor to the count, while a cell beyond the grid's edge counts as a zero, as in torch's
AvgPool with count_include_pad=True. The backends pool the zero-filled grid with that
AvgPool (sum / k_total) and multiply by scale = k_total / count, computed here; scale is
exactly 1 for a window without holes, so a hole-free grid (the first compression) pools
exactly as the authors' AvgPool.

Slot text (Qwen3-VL). A model whose video prompt puts text inside each temporal group
(a timestamp, <|vision_start|>, <|vision_end|>) stores those tokens as candidates of their
slot with patch id rows.SLOT_TEXT. They take no part in the slot-wise layouts (whole
slots, TaR's per-patch mean, the pooling grid); each of them scores as the best visual
token of its slot in its head (slot_text_groups; the backends' with_slot_text), so the
group's text is kept while its slot's best token would be, and is never pinned. Text whose
slot has no visual token left in that head scores -inf: it leaves first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import plan
from .config import METHODS
from .rows import SLOT_TEXT

# layer quarter -> (kernel before shrinking, pooled axes): 3 = (slot, row, col),
# 2 = (row, col) per slot, 1 = the flattened token sequence, 0 = no pooling.
POOLING_BY_QUARTER = ((7, 3), (5, 2), (3, 1), (1, 0))


def check_request(n_heads: int, n_cand: int, tokens_per_slot: int, keep: int, method: str,
                  tar_ratio: float, recent_ratio: float) -> None:
    """Raise ValueError, in a user's terms, for a selection request that cannot be served."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if tokens_per_slot < 1:
        raise ValueError(f"tokens_per_slot must be a positive integer, got {tokens_per_slot}")
    if n_heads < 1 or n_cand < 1:
        raise ValueError(f"there are no visual tokens to select from (H={n_heads}, N={n_cand})")
    if not 0 < keep <= n_cand:
        raise ValueError(
            f"keep must be between 1 and the number of visual candidates ({n_cand}), got {keep}")
    if not 0.0 <= tar_ratio <= 1.0:
        raise ValueError(f"tar_ratio must lie in [0, 1], got {tar_ratio}")
    if not 0.0 < recent_ratio <= 1.0:
        raise ValueError(f"recent_ratio must lie in (0, 1], got {recent_ratio}")


def resolve_ids(slot_ids, patch_ids, n_heads: int, n_cand: int,
                tokens_per_slot: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, N) int64 slot and patch ids; defaults n // T and n % T; validated.

    Args:
        slot_ids, patch_ids: (H, N) or (N,) integer arrays (any array-like), or both None.
    Returns:
        slot_ids, patch_ids: (H, N) np.int64.
    """
    if (slot_ids is None) != (patch_ids is None):
        raise ValueError("pass slot_ids and patch_ids together, or neither")
    if slot_ids is None:
        n = np.arange(n_cand, dtype=np.int64)
        slot_ids, patch_ids = n // tokens_per_slot, n % tokens_per_slot
    shape = (n_heads, n_cand)
    try:
        slot_ids = np.broadcast_to(np.asarray(slot_ids, dtype=np.int64), shape)
        patch_ids = np.broadcast_to(np.asarray(patch_ids, dtype=np.int64), shape)
    except ValueError:
        raise ValueError(f"slot_ids and patch_ids must have shape (H, N) = {shape}") from None
    text = patch_ids == SLOT_TEXT
    if slot_ids.min() < 0 or np.any((patch_ids < 0) & ~text) or patch_ids.max() >= tokens_per_slot:
        raise ValueError(f"slot ids must be >= 0 and patch ids in [0, {tokens_per_slot}) "
                         f"(tokens_per_slot), or {SLOT_TEXT} for a slot's text")
    keys = np.sort(np.where(text, -1 - np.arange(n_cand), slot_ids * tokens_per_slot + patch_ids), axis=1)
    if np.any(keys[:, 1:] == keys[:, :-1]):
        raise ValueError("a (slot, patch) pair appears twice in one head's candidates")
    return slot_ids, patch_ids


def recent_mask(slot_ids: np.ndarray, tokens_per_slot: int, recent_ratio: float,
                patch_ids: np.ndarray | None = None) -> np.ndarray:
    """(H, N) bool: the tokens of each head's recent slots R (module docstring); a slot's
    text tokens (patch_ids SLOT_TEXT) are in R with their slot but count for nothing."""
    visual = np.ones(slot_ids.shape, bool) if patch_ids is None else patch_ids != SLOT_TEXT
    mask = np.empty(slot_ids.shape, dtype=bool)
    for h in range(slot_ids.shape[0]):  # H is small (KV heads); everything inside is vectorized
        r = plan.recent_count(int(visual[h].sum()) // tokens_per_slot, recent_ratio)
        slots, counts = np.unique(slot_ids[h, visual[h]], return_counts=True)  # ascending ids
        if not len(slots):  # only slot text left in this head (a keep of 1): nothing is recent
            mask[h] = False
            continue
        whole = counts[::-1] == tokens_per_slot  # newest first
        run = len(whole) if whole.all() else int(np.argmin(whole))  # unbroken whole run
        n_recent = min(r, run) if run > 0 else 1
        mask[h] = slot_ids[h] >= slots[-n_recent]
    return mask


def newest(mask: np.ndarray, count: int) -> np.ndarray:
    """(H, N) bool: per head, the `count` highest-index (latest arrived) True entries of mask."""
    from_end = np.cumsum(mask[:, ::-1], axis=1)[:, ::-1]  # True entries at or after n
    return mask & (from_end <= count)


def reference_layout(patch_ids: np.ndarray, recent: np.ndarray, tokens_per_slot: int):
    """Gather plan for TaR's per-patch mean over the recent tokens.

    C is the most recent tokens one (head, patch) holds (r for whole recent slots).
    Args:
        patch_ids: (H, N) ints. recent: (H, N) bool.
    Returns:
        src: (H, C, T) int64 index n (into the head's candidates) of the c-th recent token
            of patch p (0 where the patch has fewer than c + 1 recent tokens).
        weight: (H, C, T) float32, 1 / (recent tokens of that patch), 0 in the padding.
        rows: (H, N) int64 row h * T + patch of every candidate into a (H * T, D) table.
    """
    n_heads, n_cand = patch_ids.shape
    text = patch_ids == SLOT_TEXT  # a slot's text: no patch (its score comes from its slot)
    recent = recent & ~text
    rows = np.arange(n_heads, dtype=np.int64)[:, None] * tokens_per_slot + np.where(text, 0, patch_ids)
    counts = np.stack([np.bincount(patch_ids[h, recent[h]], minlength=tokens_per_slot)
                       for h in range(n_heads)])  # (H, T)
    src = np.zeros((n_heads, max(1, int(counts.max())), tokens_per_slot), dtype=np.int64)
    weight = np.zeros(src.shape, dtype=np.float32)
    for h in range(n_heads):  # H is small; the work inside is vectorized
        n = np.flatnonzero(recent[h])
        n = n[np.argsort(patch_ids[h, n], kind="stable")]  # grouped by patch, arrival order
        p = patch_ids[h, n]
        c = np.arange(len(n)) - (np.cumsum(counts[h]) - counts[h])[p]  # rank within patch
        src[h, c, p] = n
        weight[h, c, p] = 1.0 / counts[h, p]
    return src, weight, rows


def grid_shape(tokens_per_slot: int, grid_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(rows, cols) of a slot's merged grid; inferred for a square T when grid_hw is None."""
    if grid_hw is None:
        side = math.isqrt(tokens_per_slot)
        if side * side != tokens_per_slot:
            raise ValueError(
                f"VaN pooling needs the slot grid: pass grid_hw=(rows, cols) with "
                f"rows * cols == {tokens_per_slot} (tokens_per_slot is not a square)")
        return side, side
    rows, cols = (int(x) for x in grid_hw)
    if rows < 1 or cols < 1 or rows * cols != tokens_per_slot:
        raise ValueError(f"grid_hw={tuple(grid_hw)} does not hold {tokens_per_slot} tokens per "
                         "slot; rows * cols must equal tokens_per_slot")
    return rows, cols


def dense_layout(slot_ids: np.ndarray, patch_ids: np.ndarray,
                 tokens_per_slot: int) -> tuple[np.ndarray, int]:
    """Where each candidate sits in the flattened dense (G, rows, cols) grid.

    Returns:
        cells: (H, N) int64 index into the flattened G * T grid of its head; G * T (one
            past the grid) for a slot's text token, which has no cell.
        n_slots: G, the grid's slot extent (the most slots present in one head).
    """
    text = patch_ids == SLOT_TEXT  # no cell; a slot with only text left takes no grid place
    cells = np.empty(slot_ids.shape, dtype=np.int64)
    n_slots = 1
    for h in range(slot_ids.shape[0]):  # H is small; np.unique sorts the head's slot ids
        slots = np.unique(slot_ids[h, ~text[h]])
        cells[h] = np.searchsorted(slots, slot_ids[h]) * tokens_per_slot + patch_ids[h]
        n_slots = max(n_slots, len(slots))
    return np.where(text, n_slots * tokens_per_slot, cells), n_slots


def pool_kernel(layer_idx: int, num_layers: int, view: tuple[int, ...]) -> tuple[int, ...]:
    """Kernel over the trailing axes of view (per-head grid), () for no pooling.

    Args:
        view: (G, rows, cols) grid extent of one head.
    Returns:
        one odd kernel size per pooled axis, each shrunk to the largest odd size that fits:
        (kf, kr, kc) in the first quarter of the layers, (kr, kc) in the second, (k,) over
        the flattened G * rows * cols sequence in the third, () in the last.
    """
    if not 0 <= layer_idx < num_layers:
        raise ValueError(f"layer_idx must lie in [0, num_layers={num_layers}), got {layer_idx}")
    kernel, n_axes = POOLING_BY_QUARTER[(layer_idx * 4) // num_layers]
    if n_axes == 0:
        return ()
    sizes = (math.prod(view),) if n_axes == 1 else view[-n_axes:]
    return tuple(min(kernel, s if s % 2 else s - 1) for s in sizes)


@dataclass(frozen=True)
class PoolLayout:
    """How one layer pools each head's VaN map (module docstring: dense grid, holes).

    cells: (H, N) int64 index of every candidate into its head's flattened grid; `size` (one
        past it) for a slot's text token: the backends scatter into size + 1 cells and
        read the extra one back as 0.
    view: the per-head grid to pool, (G, rows, cols), or (G * rows * cols,) for 1-D.
    kernel: one odd size per trailing axis of view that is pooled (pool_kernel).
    scale: (H, N) float32 k_total / count of each candidate's window (1 without holes).
    """

    cells: np.ndarray
    view: tuple[int, ...]
    kernel: tuple[int, ...]
    scale: np.ndarray

    @property
    def size(self) -> int:
        """Cells in one head's grid, G * rows * cols."""
        return math.prod(self.view)


def pool_layout(slot_ids: np.ndarray, patch_ids: np.ndarray, grid_hw: tuple[int, int],
                layer_idx: int, num_layers: int) -> PoolLayout | None:
    """The pooling plan of one layer, None in the last quarter (no pooling).

    Args:
        slot_ids, patch_ids: (H, N) ints. grid_hw: (rows, cols) of a slot.
        layer_idx, num_layers: choose the kernel by quarter (pool_kernel).
    """
    rows, cols = grid_hw
    cells, n_slots = dense_layout(slot_ids, patch_ids, rows * cols)
    kernel = pool_kernel(layer_idx, num_layers, (n_slots, rows, cols))
    if not kernel:
        return None
    view = (n_slots, rows, cols) if len(kernel) > 1 else (n_slots * rows * cols,)
    size = math.prod(view)
    holes = np.ones((cells.shape[0], size + 1), dtype=np.int64)  # the extra cell: slot text
    np.put_along_axis(holes, cells, 0, axis=1)  # (H, G*T): 1 at in-grid cells without a token
    holes = window_sum(holes[:, :size].reshape(-1, *view), kernel).reshape(len(cells), -1)
    k_total = math.prod(kernel)
    holes = np.pad(holes, ((0, 0), (0, 1)))  # slot text: no holes, scale 1
    count = np.maximum(k_total - np.take_along_axis(holes, cells, axis=1), 1)  # >= 1 anyway
    scale = (k_total / count).astype(np.float32)  # float64 quotient, exactly 1 without holes
    return PoolLayout(cells, view, kernel, scale)


def window_sum(x: np.ndarray, kernel: tuple[int, ...]) -> np.ndarray:
    """Stride-1 box sums centred on each element over the trailing len(kernel) axes.

    Zeros beyond the ends (padding k // 2 per side); same shape as x.
    """
    for axis, k in zip(range(x.ndim - len(kernel), x.ndim), kernel):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (k // 2 + 1, k // 2)  # one extra zero in front for the running sum
        run = np.cumsum(np.pad(x, widths), axis=axis)
        length = x.shape[axis]
        x = (np.take(run, np.arange(k, k + length), axis=axis)
             - np.take(run, np.arange(length), axis=axis))
    return x


@dataclass(frozen=True)
class SlotText:
    """Where a layer's slot text tokens are, for the backends' with_slot_text.

    text: (H, N) bool, the slot's text tokens (patch id SLOT_TEXT).
    group: (H, N) int64 rank of each candidate's slot among its head's slots.
    n_groups: the most slots in one head.
    """

    text: np.ndarray
    group: np.ndarray
    n_groups: int


def slot_text_groups(slot_ids: np.ndarray, patch_ids: np.ndarray) -> SlotText | None:
    """The slot groups of a layer's candidates, None when none of them is slot text."""
    text = patch_ids == SLOT_TEXT
    if not text.any():
        return None
    group = np.empty(slot_ids.shape, dtype=np.int64)
    n_groups = 1
    for h in range(slot_ids.shape[0]):  # H is small
        slots, rank = np.unique(slot_ids[h], return_inverse=True)
        group[h] = rank.reshape(-1)
        n_groups = max(n_groups, len(slots))
    return SlotText(text, group, n_groups)


def uniform_indices(n_cand: int, keep: int) -> np.ndarray:
    """(K,) int64 indices floor(i * N / K), i = 0..K-1."""
    return np.arange(keep, dtype=np.int64) * n_cand // keep
