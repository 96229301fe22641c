"""Token selection in MLX: the one InfiniPot-V step and the baselines (ALGORITHM.md section 5).

Notation: H = KV heads, N = visual candidates per head (arrival order), D = head dim,
T = tokens per frame, F = N // T frames' worth, K = kept tokens, K_tar = plan.tar_share(K,
tar_ratio) the TaR share, K - K_tar the VaN share.

Public entry: select_tokens(keys, values, *, tokens_per_frame, keep, method="infinipot_v",
tar_ratio=0.5, recent_ratio=0.25, frame_ids=None, patch_ids=None, van_pooling=False,
layer_idx=0, num_layers=1, grid_hw=None) -> (H, K) int32 indices into N, ascending per head.

Args:
    keys, values: (H, N, D) mx.array or numpy: one layer's visual tokens per head, in
        arrival order (post-RoPE keys).
    tokens_per_frame: T.
    keep: K, 0 < K <= N (method "full" returns all N regardless).
    method: "infinipot_v", "uniform", "sliding_window" or "full".
    tar_ratio: 1 = TaR only, 0 = VaN only.  recent_ratio: share of F used as recent frames.
    frame_ids, patch_ids: (H, N) ints (numpy ok); default n // T and n % T.
    van_pooling, layer_idx, num_layers, grid_hw: layer-adaptive VaN pooling (scoring.py);
        grid_hw=(rows, cols), rows * cols == T, inferred when T is a square.
Returns:
    (H, K) mx.array int32 ((H, N) for "full").

The InfiniPot-V step, per head: the recent frames R (candidates.py: newest frames by
frame id, clamped to whole ones) are kept first; if they exceed K_tar, only their K_tar
latest arrivals. The TaR share is filled with the highest-TaR non-recent tokens, then
the VaN share with the highest-VaN tokens not kept yet. K_tar = 0 skips TaR entirely.
Every top-k breaks ties towards the later arrival (higher index): scores are reversed
along N and sorted descending with mx.argsort, which is stable (tests pin this).
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .. import candidates, plan
from ..config import METHODS
from .scoring import pool_value_norm, temporal_redundancy, value_norm


@dataclass(frozen=True)
class Request:
    """One layer's validated selection request (arrays as above; ids on the host)."""

    keys: mx.array
    values: mx.array
    frame_ids: np.ndarray
    patch_ids: np.ndarray
    tokens_per_frame: int
    keep: int
    tar_ratio: float
    recent_ratio: float
    van_pooling: bool
    layer_idx: int
    num_layers: int
    grid_hw: tuple[int, int] | None  # resolved (rows, cols) when van_pooling


def top_k_latest(scores: mx.array, k: int) -> mx.array:
    """(H, N) -> (H, k) int32 indices of the k highest scores, ties to the higher index."""
    n = scores.shape[-1]
    order = mx.argsort(-scores[:, ::-1], axis=-1)[:, :k]  # stable: earlier in reversed = later
    return (n - 1) - order.astype(mx.int32)


def infinipot_v(req: Request) -> mx.array:
    """The selection step: recent frames + TaR share, then VaN share. Returns (H, K)."""
    n_heads, n_cand = req.frame_ids.shape
    k_tar = plan.tar_share(req.keep, req.tar_ratio)
    picks, taken = [], mx.zeros((n_heads, n_cand), dtype=mx.bool_)
    if k_tar > 0:
        recent = candidates.recent_mask(req.frame_ids, req.tokens_per_frame, req.recent_ratio)
        forced = candidates.newest(recent, k_tar)  # all of R, or its k_tar latest arrivals
        tar = temporal_redundancy(req.keys, req.patch_ids, recent, req.tokens_per_frame)
        # forced first, then non-recent by TaR; recent tokens beyond k_tar wait for VaN
        priority = mx.where(mx.array(forced), mx.inf, mx.where(mx.array(recent), -mx.inf, tar))
        picks.append(top_k_latest(priority, k_tar))
        taken = mx.put_along_axis(taken, picks[-1], mx.array(True), axis=1)
    if req.keep > k_tar:
        van = value_norm(req.values)
        if req.van_pooling:
            van = pool_value_norm(van, req.frame_ids, req.patch_ids, req.grid_hw,
                                  req.layer_idx, req.num_layers)
        picks.append(top_k_latest(mx.where(taken, -mx.inf, van), req.keep - k_tar))
    return mx.sort(mx.concatenate(picks, axis=1), axis=1)


def uniform(req: Request) -> mx.array:
    """Indices floor(i * N / K), the same on every head. Returns (H, K)."""
    n_heads, n_cand = req.frame_ids.shape
    return _broadcast(candidates.uniform_indices(n_cand, req.keep), n_heads)


def sliding_window(req: Request) -> mx.array:
    """The K latest arrivals, the same on every head. Returns (H, K)."""
    n_heads, n_cand = req.frame_ids.shape
    return _broadcast(np.arange(n_cand - req.keep, n_cand), n_heads)


def full(req: Request) -> mx.array:
    """No compression: every index. Returns (H, N)."""
    n_heads, n_cand = req.frame_ids.shape
    return _broadcast(np.arange(n_cand), n_heads)


def _broadcast(indices: np.ndarray, n_heads: int) -> mx.array:
    """(K,) host indices -> (H, K) int32."""
    return mx.broadcast_to(mx.array(indices.astype(np.int32)), (n_heads, len(indices)))


def _as_mx(x) -> mx.array:
    """mx.array as is (no copy); numpy or other array-likes converted."""
    return x if isinstance(x, mx.array) else mx.array(x)


SELECTORS = {name: globals()[name] for name in METHODS}  # config.METHODS: one function per method


def select_tokens(keys, values, *, tokens_per_frame: int, keep: int, method: str = "infinipot_v",
                  tar_ratio: float = 0.5, recent_ratio: float = 0.25, frame_ids=None,
                  patch_ids=None, van_pooling: bool = False, layer_idx: int = 0,
                  num_layers: int = 1, grid_hw: tuple[int, int] | None = None) -> mx.array:
    """Indices of the visual tokens to keep per head (module docstring: Args, Returns)."""
    keys, values = _as_mx(keys), _as_mx(values)
    if keys.ndim != 3 or values.shape != keys.shape:
        raise ValueError(f"keys and values must both have shape (H, N, D); got {keys.shape} "
                         f"and {values.shape}")
    n_heads, n_cand, _ = keys.shape
    candidates.check_request(n_heads, n_cand, tokens_per_frame, keep, method,
                             tar_ratio, recent_ratio)
    frame_ids, patch_ids = candidates.resolve_ids(frame_ids, patch_ids, n_heads, n_cand,
                                                  tokens_per_frame)
    if van_pooling:  # checked up front, whatever the layer and the shares
        grid_hw = candidates.grid_shape(tokens_per_frame, grid_hw)
        candidates.pool_kernel(layer_idx, num_layers, (1, *grid_hw))
    req = Request(keys, values, frame_ids, patch_ids, tokens_per_frame, keep, tar_ratio,
                  recent_ratio, van_pooling, layer_idx, num_layers, grid_hw)
    return SELECTORS[method](req)
