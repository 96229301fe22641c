"""InfiniPot-V scores in MLX: TaR, VaN and VaN pooling (ALGORITHM.md section 4).

Scorers return scores (higher = keep) and select nothing; select.py does the selection.
The PyTorch mirror is reference/scoring.py (same names, same argument order).

Notation: H = KV heads, N = visual candidates per head (arrival order), D = head dim,
T = tokens per slot, G = slot extent of the dense pooling grid. Metadata
(slot_ids, patch_ids, masks) is host numpy; see candidates.py for the recent-slot
rule and the dense grid.

VaN pooling with holes: each head's VaN map is scattered into a dense (G, rows, cols)
grid (its present slots in slot-id order, zeros at the holes: missing patches and
unused slot places), summed over a stride-1 box with zero padding of k // 2 and divided
by k per pooled axis (torch AvgPool with count_include_pad=True), gathered back to the
candidates and multiplied by candidates.PoolLayout.scale = k_total / count. So a hole
adds neither to a window's sum nor to its count, while padding beyond the grid's edge
counts as zeros; without holes this is exactly torch's avg_pool3d (first quarter of the
layers), avg_pool2d per slot (second) or avg_pool1d along the token sequence (third).
Kernels shrink per axis to the largest odd size that fits G, rows, cols (the 1-D kernel:
G * T).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from ..contract import candidates

EPS = 1e-9  # cos(a, b) = a.b / ((|a| + EPS)(|b| + EPS))


def value_norm(values: mx.array) -> mx.array:
    """VaN: L2 norm of each value vector. (H, N, D) -> (H, N) float32."""
    return _norm(values.astype(mx.float32))


def _norm(x: mx.array, keepdims: bool = False) -> mx.array:
    """L2 norm over the last axis: sqrt(sum(x^2)), one pass (MLX's linalg.norm is ~2.5x slower
    on the CPU, most of all on a strided view of the cache's buffers)."""
    return mx.sqrt(mx.sum(mx.square(x), axis=-1, keepdims=keepdims))


def temporal_redundancy(keys: mx.array, patch_ids: np.ndarray, recent_mask: np.ndarray,
                        tokens_per_slot: int) -> mx.array:
    """TaR: -mean over recent slots r of cos(k[f, p], k[r, p]); higher = more novel.

    The mean runs over the recent tokens of the same patch; a patch with no recent token
    scores 0. Recent tokens get a score too (select.py keeps them regardless).
    Args:
        keys: (H, N, D) post-RoPE keys.
        patch_ids: (H, N) host ints in [0, T).
        recent_mask: (H, N) host bool, the recent slots R.
        tokens_per_slot: T.
    Returns:
        (H, N) float32 scores in [-1, 1].
    """
    src, weight, rows = candidates.reference_layout(patch_ids, recent_mask, tokens_per_slot)
    n_heads, _, dim = keys.shape
    keys = keys.astype(mx.float32)  # (H, N, D), maybe a view of the cache: never reshaped whole
    recent = mx.take_along_axis(keys, mx.array(src.reshape(n_heads, -1, 1)), axis=1)  # (H, C*T, D)
    recent = recent.reshape(*src.shape, dim)  # (H, C, T, D)
    recent = recent / (_norm(recent, keepdims=True) + EPS)
    ref = mx.sum(recent * mx.array(weight)[..., None], axis=1)  # (H, T, D) mean unit key
    ref = mx.take(ref.reshape(-1, dim), mx.array(rows), axis=0)  # (H, N, D) per candidate
    return -mx.sum(keys * ref, axis=-1) / (_norm(keys) + EPS)


def pool_value_norm(van: mx.array, slot_ids: np.ndarray, patch_ids: np.ndarray,
                    grid_hw: tuple[int, int], layer_idx: int, num_layers: int) -> mx.array:
    """Layer-adaptive average pooling of the VaN map over the dense grid (module docstring).

    Args:
        van: (H, N) value norms.
        slot_ids, patch_ids: (H, N) host ints.
        grid_hw: (rows, cols) of a slot's merged grid, rows * cols == T.
        layer_idx, num_layers: choose the kernel by quarter (layer_idx * 4) // num_layers.
    Returns:
        (H, N) pooled VaN (van itself in the last quarter of the layers).
    """
    layout = candidates.pool_layout(slot_ids, patch_ids, grid_hw, layer_idx, num_layers)
    if layout is None:
        return van
    n_heads = van.shape[0]
    cells = mx.array(layout.cells)
    dense = mx.zeros((n_heads, layout.size + 1), dtype=van.dtype)  # + 1: slot text's cell
    dense = mx.put_along_axis(dense, cells, van, axis=1)  # (H, G*T + 1), zeros at holes
    pooled = _box_mean(dense[:, : layout.size].reshape(n_heads, *layout.view), layout.kernel)
    pooled = mx.pad(pooled.reshape(n_heads, -1), [(0, 0), (0, 1)])  # slot text reads 0
    pooled = mx.take_along_axis(pooled, cells, axis=1)  # (H, N)
    return pooled * mx.array(layout.scale).astype(pooled.dtype)


def with_slot_text(scores: mx.array, groups) -> mx.array:
    """Each slot text token's score := the best visual score of its slot in its head.

    Args:
        scores: (H, N) float32 per candidate.
        groups: candidates.SlotText, or None (no slot text: scores unchanged).
    Returns:
        (H, N) float32.
    """
    if groups is None:
        return scores
    text, group = mx.array(groups.text), mx.array(groups.group)
    n_heads = scores.shape[0]
    visual = mx.where(text, -mx.inf, scores)  # (H, N) slot text adds nothing to its slot's best
    heads = mx.broadcast_to(mx.arange(n_heads)[:, None], group.shape)
    best = mx.full((n_heads, groups.n_groups), -mx.inf, dtype=scores.dtype)
    best = best.at[heads, group].maximum(visual)  # (H, G)
    return mx.where(text, mx.take_along_axis(best, group, axis=1), scores)


def _box_mean(x: mx.array, kernel: tuple[int, ...]) -> mx.array:
    """Mean over a stride-1 box on the trailing axes, zero padded, divisor prod(kernel)."""
    for axis, k in zip(range(x.ndim - len(kernel), x.ndim), kernel):
        x = _box_sum(x, axis, k)
    return x / float(np.prod(kernel))


def _box_sum(x: mx.array, axis: int, k: int) -> mx.array:
    """Sum of the k neighbours centred on each element along axis (zeros beyond the ends)."""
    if k == 1:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (k // 2, k // 2)
    padded = mx.pad(x, widths)
    length = x.shape[axis]
    window = [slice(None)] * x.ndim
    total = None
    for start in range(k):
        window[axis] = slice(start, start + length)
        part = padded[tuple(window)]
        total = part if total is None else total + part
    return total
