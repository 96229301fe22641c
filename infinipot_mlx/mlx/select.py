"""Token selection in MLX: the one InfiniPot-V step and the baselines (ALGORITHM.md section 5).

Notation: H = KV heads, N = visual candidates per head (arrival order), D = head dim,
T = tokens per slot, F = N // T slots' worth, K = kept tokens, K_tar = plan.tar_share(K,
tar_ratio) the TaR share, K - K_tar the VaN share.

Public entry: select_tokens(keys, values, *, tokens_per_slot, keep, method="infinipot_v",
tar_ratio=0.5, recent_ratio=0.25, slot_ids=None, patch_ids=None, van_pooling=False,
layer_idx=0, num_layers=1, grid_hw=None) -> (H, K) int32 indices into N, ascending per head.

Args:
    keys, values: (H, N, D) mx.array or numpy: one layer's visual tokens per head, in
        arrival order (post-RoPE keys).
    tokens_per_slot: T.
    keep: K, 0 < K <= N (method "full" returns all N regardless).
    method: "infinipot_v", "uniform", "sliding_window" or "full".
    tar_ratio: 1 = TaR only, 0 = VaN only.  recent_ratio: share of F used as recent slots.
    slot_ids, patch_ids: (H, N) ints (numpy ok); default n // T and n % T.
    van_pooling, layer_idx, num_layers, grid_hw: layer-adaptive VaN pooling (scoring.py);
        grid_hw=(rows, cols), rows * cols == T, inferred when T is a square.
Returns:
    (H, K) mx.array int32 ((H, N) for "full").

The InfiniPot-V step, per head: the recent slots R (candidates.py: newest slots by
slot id, clamped to whole ones) are kept first; if they exceed K_tar, only their K_tar
latest arrivals. The TaR share is filled with the highest-TaR non-recent tokens, then
the VaN share with the highest-VaN tokens not kept yet. K_tar = 0 skips TaR entirely.
Every top-k breaks ties towards the later arrival (higher index): top_k_mask takes every
score above the k-th highest and, of those equal to it, the latest (tests pin this).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ..contract import candidates, plan
from ..contract.config import METHODS
from ..deprecated import accepts_old_names
from .scoring import pool_value_norm, temporal_redundancy, value_norm, with_slot_text


@dataclass(frozen=True)
class Request:
    """One layer's validated selection request (arrays as above; ids on the host)."""

    keys: mx.array
    values: mx.array
    slot_ids: np.ndarray
    patch_ids: np.ndarray
    tokens_per_slot: int
    keep: int
    tar_ratio: float
    recent_ratio: float
    van_pooling: bool
    layer_idx: int
    num_layers: int
    grid_hw: tuple[int, int] | None  # resolved (rows, cols) when van_pooling
    slot_text: candidates.SlotText | None  # slot text candidates (Qwen3-VL), scored by their slot


def top_k_mask(scores: mx.array, k: int, taken: mx.array | None = None) -> mx.array:
    """(H, N) -> (H, N) bool: the k highest scores of each row, ties to the higher index.

    O(N): a partition finds the k-th highest score; every higher score is in, and of the
    scores equal to it, the latest (k - higher) ones. `taken` (H, N) bool: rows never chosen,
    even where the k-th highest is -inf (slot text of a slot with no visual token left).
    """
    if taken is not None:
        scores = mx.where(taken, -mx.inf, scores)
    kth = -mx.partition(-scores, k - 1, axis=-1)[:, k - 1 : k]  # (H, 1) the k-th highest
    above, tied = scores > kth, scores == kth
    if taken is not None:
        tied = tied & ~taken
    room = k - above.sum(axis=-1, keepdims=True)  # (H, 1) tied scores to take
    ties_from_end = mx.cumsum(tied[:, ::-1].astype(mx.int32), axis=-1)[:, ::-1]  # ties at >= n
    return above | (tied & (ties_from_end <= room))


def mask_indices(mask: mx.array, k: int) -> mx.array:
    """(H, N) bool with k set in every row -> (H, k) int32 their indices, ascending."""
    n_heads, n = mask.shape
    column = mx.where(mask, mx.cumsum(mask.astype(mx.int32), axis=-1) - 1, k)  # k: not kept
    indices = mx.broadcast_to(mx.arange(n, dtype=mx.int32), (n_heads, n))
    out = mx.put_along_axis(mx.zeros((n_heads, k + 1), mx.int32), column, indices, axis=-1)
    return out[:, :k]


def infinipot_v(req: Request) -> mx.array:
    """The selection step: recent slots + TaR share, then VaN share. Returns (H, K)."""
    n_heads, n_cand = req.slot_ids.shape
    k_tar = plan.tar_share(req.keep, req.tar_ratio)
    taken = mx.zeros((n_heads, n_cand), dtype=mx.bool_)
    if k_tar > 0:
        recent = candidates.recent_mask(req.slot_ids, req.tokens_per_slot, req.recent_ratio, req.patch_ids)
        forced = candidates.newest(recent, k_tar)  # all of R, or its k_tar latest arrivals
        tar = temporal_redundancy(req.keys, req.patch_ids, recent, req.tokens_per_slot)
        tar = with_slot_text(tar, req.slot_text)
        # forced first, then non-recent by TaR; recent tokens beyond k_tar wait for VaN
        priority = mx.where(mx.array(forced), mx.inf, mx.where(mx.array(recent), -mx.inf, tar))
        taken = top_k_mask(priority, k_tar)
    if req.keep > k_tar:
        van = value_norm(req.values)
        if req.van_pooling:
            van = pool_value_norm(van, req.slot_ids, req.patch_ids, req.grid_hw,
                                  req.layer_idx, req.num_layers)
        van = with_slot_text(van, req.slot_text)
        taken = taken | top_k_mask(van, req.keep - k_tar, taken)
    return mask_indices(taken, req.keep)


def uniform(req: Request) -> mx.array:
    """Indices floor(i * N / K), the same on every head. Returns (H, K)."""
    n_heads, n_cand = req.slot_ids.shape
    return _broadcast(candidates.uniform_indices(n_cand, req.keep), n_heads)


def sliding_window(req: Request) -> mx.array:
    """The K latest arrivals, the same on every head. Returns (H, K)."""
    n_heads, n_cand = req.slot_ids.shape
    return _broadcast(np.arange(n_cand - req.keep, n_cand), n_heads)


def full(req: Request) -> mx.array:
    """No compression: every index. Returns (H, N)."""
    n_heads, n_cand = req.slot_ids.shape
    return _broadcast(np.arange(n_cand), n_heads)


def _broadcast(indices: np.ndarray, n_heads: int) -> mx.array:
    """(K,) host indices -> (H, K) int32."""
    return mx.broadcast_to(mx.array(indices.astype(np.int32)), (n_heads, len(indices)))


def _as_mx(x) -> mx.array:
    """mx.array as is (no copy); numpy or other array-likes converted."""
    return x if isinstance(x, mx.array) else mx.array(x)


SELECTORS = {name: globals()[name] for name in METHODS}  # config.METHODS: one function per method


@accepts_old_names  # tokens_per_frame=, frame_ids=: the names before 0.2
def select_tokens(keys, values, *, tokens_per_slot: int, keep: int, method: str = "infinipot_v",
                  tar_ratio: float = 0.5, recent_ratio: float = 0.25, slot_ids=None,
                  patch_ids=None, van_pooling: bool = False, layer_idx: int = 0,
                  num_layers: int = 1, grid_hw: tuple[int, int] | None = None) -> mx.array:
    """Indices of the visual tokens to keep per head (module docstring: Args, Returns)."""
    keys, values = _as_mx(keys), _as_mx(values)
    if keys.ndim != 3 or values.shape != keys.shape:
        raise ValueError(f"keys and values must both have shape (H, N, D); got {keys.shape} "
                         f"and {values.shape}")
    n_heads, n_cand, _ = keys.shape
    candidates.check_request(n_heads, n_cand, tokens_per_slot, keep, method,
                             tar_ratio, recent_ratio)
    slot_ids, patch_ids = candidates.resolve_ids(slot_ids, patch_ids, n_heads, n_cand,
                                                  tokens_per_slot)
    if van_pooling:  # checked up front, whatever the layer and the shares
        grid_hw = candidates.grid_shape(tokens_per_slot, grid_hw)
        candidates.pool_kernel(layer_idx, num_layers, (1, *grid_hw))
    req = Request(keys, values, slot_ids, patch_ids, tokens_per_slot, keep, tar_ratio,
                  recent_ratio, van_pooling, layer_idx, num_layers, grid_hw,
                  candidates.slot_text_groups(slot_ids, patch_ids))
    return SELECTORS[method](req)
