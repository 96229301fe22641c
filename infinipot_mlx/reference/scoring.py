"""InfiniPot-V scores in PyTorch: the reference mirror of infinipot_mlx/scoring.py.

Scorers return scores (higher = keep) and select nothing; reference/select.py selects.
Same function names and argument order as the MLX side.

Notation: H = KV heads, N = visual candidates per head (arrival order), D = head dim,
T = tokens per slot, G = slot extent of the dense pooling grid. Metadata
(slot_ids, patch_ids, masks) is host numpy; see candidates.py for the recent-slot
rule and the dense grid.

VaN pooling with holes: each head's VaN map is scattered into a dense (G, rows, cols)
grid (its present slots in slot-id order, zeros at the holes: missing patches and
unused slot places), pooled with torch.nn.functional.avg_pool3d (first quarter of the
layers), avg_pool2d per slot (second) or avg_pool1d along the flattened token sequence
(third), stride 1, padding k // 2, count_include_pad=True, gathered back to the
candidates and multiplied by candidates.PoolLayout.scale = k_total / count. So a hole
adds neither to a window's sum nor to its count, while padding beyond the grid's edge
counts as zeros; without holes (scale 1) this is exactly the authors' AvgPool. Kernels
shrink per axis to the largest odd size that fits G, rows, cols (the 1-D kernel: G * T).

Devices: tensors built from host metadata are moved to the device of the tensor they
meet (keys for TaR, the VaN map for pooling), so the scorers run on CPU, CUDA or meta.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..contract import candidates

EPS = 1e-9  # cos(a, b) = a.b / ((|a| + EPS)(|b| + EPS))

AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}  # pooled axes -> torch op


def on_device(array: np.ndarray, like: torch.Tensor, dtype: torch.dtype | None = None
              ) -> torch.Tensor:
    """Host numpy -> tensor on like's device (and dtype when given)."""
    return torch.from_numpy(array).to(device=like.device, dtype=dtype)


def value_norm(values: torch.Tensor) -> torch.Tensor:
    """VaN: L2 norm of each value vector. (H, N, D) -> (H, N) float32."""
    return torch.linalg.vector_norm(values.float(), dim=-1)


def temporal_redundancy(keys: torch.Tensor, patch_ids: np.ndarray, recent_mask: np.ndarray,
                        tokens_per_slot: int) -> torch.Tensor:
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
    keys = keys.float()  # (H, N, D), maybe a view of the cache: never reshaped whole
    heads = torch.arange(n_heads, device=keys.device)[:, None]
    recent = keys[heads, on_device(src.reshape(n_heads, -1), keys)]  # (H, C*T, D)
    recent = recent.reshape(*src.shape, dim)  # (H, C, T, D)
    recent = recent / (torch.linalg.vector_norm(recent, dim=-1, keepdim=True) + EPS)
    ref = torch.sum(recent * on_device(weight, keys)[..., None], dim=1)  # (H, T, D) mean unit key
    ref = ref.reshape(-1, dim)[on_device(rows, keys)]  # (H, N, D) per candidate
    return -torch.sum(keys * ref, dim=-1) / (torch.linalg.vector_norm(keys, dim=-1) + EPS)


def with_slot_text(scores: torch.Tensor, groups) -> torch.Tensor:
    """Each slot text token's score := the best visual score of its slot in its head.

    Args:
        scores: (H, N) float32 per candidate.
        groups: candidates.SlotText, or None (no slot text: scores unchanged).
    Returns:
        (H, N) float32.
    """
    if groups is None:
        return scores
    text, group = on_device(groups.text, scores), on_device(groups.group, scores)
    minus_inf = torch.full((), float("-inf"), dtype=scores.dtype, device=scores.device)
    visual = torch.where(text, minus_inf, scores)  # (H, N) slot text adds nothing to its slot's best
    best = torch.full((scores.shape[0], groups.n_groups), float("-inf"), dtype=scores.dtype,
                      device=scores.device)
    best = best.scatter_reduce(1, group, visual, reduce="amax")  # (H, G)
    return torch.where(text, torch.gather(best, 1, group), scores)


def pool_value_norm(van: torch.Tensor, slot_ids: np.ndarray, patch_ids: np.ndarray,
                    grid_hw: tuple[int, int], layer_idx: int, num_layers: int) -> torch.Tensor:
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
    n_heads, kernel = van.shape[0], layout.kernel
    cells = on_device(layout.cells, van)
    dense = torch.zeros((n_heads, layout.size + 1), dtype=van.dtype, device=van.device)  # + 1: slot text
    dense = dense.scatter(1, cells, van)  # (H, G*T + 1), zeros at holes
    grid = dense[:, : layout.size].reshape(-1, 1, *layout.view[len(layout.view) - len(kernel):])
    pooled = AVG_POOL[len(kernel)](grid, kernel, stride=1, padding=[k // 2 for k in kernel],
                                   count_include_pad=True)  # (B, 1, *axes)
    pooled = torch.nn.functional.pad(pooled.reshape(n_heads, -1), (0, 1))  # slot text reads 0
    pooled = torch.gather(pooled, 1, cells)  # (H, N)
    return pooled * on_device(layout.scale, pooled, pooled.dtype)
