"""Token selection in PyTorch: the reference mirror of infinipot_mlx/select.py.

Notation: H = KV heads, N = visual candidates per head (arrival order), D = head dim,
T = tokens per frame, F = N // T frames' worth, K = kept tokens, K_tar = plan.tar_share(K,
tar_ratio) the TaR share, K - K_tar the VaN share.

Public entry: select_tokens(keys, values, *, tokens_per_frame, keep, method="infinipot_v",
tar_ratio=0.5, recent_ratio=0.25, frame_ids=None, patch_ids=None, van_pooling=False,
layer_idx=0, num_layers=1, grid_hw=None) -> (H, K) int64 indices into N, ascending per head.

Args:
    keys, values: (H, N, D) torch.Tensor or numpy: one layer's visual tokens per head, in
        arrival order (post-RoPE keys).
    tokens_per_frame: T.
    keep: K, 0 < K <= N (method "full" returns all N regardless).
    method: "infinipot_v", "uniform", "sliding_window" or "full".
    tar_ratio: 1 = TaR only, 0 = VaN only.  recent_ratio: share of F used as recent frames.
    frame_ids, patch_ids: (H, N) ints (numpy ok); default n // T and n % T.
    van_pooling, layer_idx, num_layers, grid_hw: layer-adaptive VaN pooling (scoring.py);
        grid_hw=(rows, cols), rows * cols == T, inferred when T is a square.
Returns:
    (H, K) torch.int64 tensor ((H, N) for "full").

The InfiniPot-V step, per head: the recent frames R (candidates.py: newest frames by
frame id, clamped to whole ones) are kept first; if they exceed K_tar, only their K_tar
latest arrivals. The TaR share is filled with the highest-TaR non-recent tokens, then
the VaN share with the highest-VaN tokens not kept yet. K_tar = 0 skips TaR entirely.
Every top-k breaks ties towards the later arrival (higher index): scores are reversed
along N and sorted descending with torch.sort(stable=True).

Devices: masks and indices built from host metadata go to the keys' device, and the
returned indices live there too (CPU, CUDA or meta alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import candidates, plan
from ..config import METHODS
from .scoring import on_device, pool_value_norm, temporal_redundancy, value_norm


@dataclass(frozen=True)
class Request:
    """One layer's validated selection request (arrays as above; ids on the host)."""

    keys: torch.Tensor
    values: torch.Tensor
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


def top_k_latest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(H, N) -> (H, k) int64 indices of the k highest scores, ties to the higher index."""
    n = scores.shape[-1]
    order = torch.sort(scores.flip(-1), dim=-1, descending=True, stable=True).indices[:, :k]
    return (n - 1) - order  # earlier in the reversed sequence = later arrival


def infinipot_v(req: Request) -> torch.Tensor:
    """The selection step: recent frames + TaR share, then VaN share. Returns (H, K)."""
    n_heads, n_cand = req.frame_ids.shape
    k_tar = plan.tar_share(req.keep, req.tar_ratio)
    device = req.keys.device
    picks, taken = [], torch.zeros((n_heads, n_cand), dtype=torch.bool, device=device)
    if k_tar > 0:
        recent = candidates.recent_mask(req.frame_ids, req.tokens_per_frame, req.recent_ratio)
        forced = candidates.newest(recent, k_tar)  # all of R, or its k_tar latest arrivals
        tar = temporal_redundancy(req.keys, req.patch_ids, recent, req.tokens_per_frame)
        # forced first, then non-recent by TaR; recent tokens beyond k_tar wait for VaN
        inf = torch.full((), float("inf"), dtype=tar.dtype, device=device)
        priority = torch.where(on_device(forced, tar), inf,
                               torch.where(on_device(recent, tar), -inf, tar))
        picks.append(top_k_latest(priority, k_tar))
        taken = taken.scatter(1, picks[-1], True)
    if req.keep > k_tar:
        van = value_norm(req.values).to(device)
        if req.van_pooling:
            van = pool_value_norm(van, req.frame_ids, req.patch_ids, req.grid_hw,
                                  req.layer_idx, req.num_layers)
        minus_inf = torch.full((), float("-inf"), dtype=van.dtype, device=device)
        van = torch.where(taken, minus_inf, van)
        picks.append(top_k_latest(van, req.keep - k_tar))
    return torch.sort(torch.cat(picks, dim=1), dim=1).values


def uniform(req: Request) -> torch.Tensor:
    """Indices floor(i * N / K), the same on every head. Returns (H, K)."""
    n_cand = req.frame_ids.shape[1]
    return _broadcast(candidates.uniform_indices(n_cand, req.keep), req)


def sliding_window(req: Request) -> torch.Tensor:
    """The K latest arrivals, the same on every head. Returns (H, K)."""
    n_cand = req.frame_ids.shape[1]
    return _broadcast(np.arange(n_cand - req.keep, n_cand), req)


def full(req: Request) -> torch.Tensor:
    """No compression: every index. Returns (H, N)."""
    n_cand = req.frame_ids.shape[1]
    return _broadcast(np.arange(n_cand), req)


def _broadcast(indices: np.ndarray, req: Request) -> torch.Tensor:
    """(K,) host indices -> (H, K) int64 on the keys' device."""
    n_heads = req.frame_ids.shape[0]
    return on_device(indices.astype(np.int64), req.keys).expand(n_heads, -1).contiguous()


SELECTORS = {name: globals()[name] for name in METHODS}  # config.METHODS: one function per method


def select_tokens(keys, values, *, tokens_per_frame: int, keep: int, method: str = "infinipot_v",
                  tar_ratio: float = 0.5, recent_ratio: float = 0.25, frame_ids=None,
                  patch_ids=None, van_pooling: bool = False, layer_idx: int = 0,
                  num_layers: int = 1, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Indices of the visual tokens to keep per head (module docstring: Args, Returns)."""
    keys, values = torch.as_tensor(keys), torch.as_tensor(values)
    if keys.ndim != 3 or values.shape != keys.shape:
        raise ValueError(f"keys and values must both have shape (H, N, D); got "
                         f"{tuple(keys.shape)} and {tuple(values.shape)}")
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
