"""VaN pooling: torch's own avg_pool without holes, a from-the-definition oracle with holes,
MLX = reference, and the steady-state effect of holes on the newest block.

Definition (ALGORITHM.md section 4): each head's present frames, in frame-id order, fill
a (G, rows, cols) grid (G = most frames in one head). The window of a cell is a stride-1
box, kernel 7 x 7 x 7 over (frame, row, col) in the first quarter of the layers, 5 x 5 per
frame in the second, 3 along the flattened G * rows * cols sequence in the third, none in
the last; a kernel larger than its axis shrinks to the largest odd size that fits. Pooled
value = sum of the tokens in the window / count, where count = window cells that hold a
token + window cells beyond the grid's edge (zeros, as AvgPool's count_include_pad=True);
a hole (in-grid cell without a token) counts in neither.

The oracles below are written from that text and import nothing from the package.
"""


import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infinipot_mlx.mlx import scoring
from infinipot_mlx.mlx import select as mlx_select
from infinipot_mlx.reference import scoring as ref_scoring
from infinipot_mlx.reference import select as ref_select
from test_select_oracle import pool_head

NUM_LAYERS = 28
LAYER = {3: 0, 2: 7, 1: 14, 0: 21}  # pooled axes -> a layer of that quarter (of 28)
NOMINAL = {3: 7, 2: 5, 1: 3}  # pooled axes -> kernel before shrinking


def pooled_both(van, slot_ids, patch_ids, grid, axes):
    """(MLX, reference) pooled VaN as numpy, for the layer that pools `axes` axes."""
    args = (slot_ids, patch_ids, grid, LAYER[axes], NUM_LAYERS)
    got = np.array(scoring.pool_value_norm(mx.array(van), *args))
    ref = ref_scoring.pool_value_norm(torch.from_numpy(van), *args).numpy()
    return got, ref


def arrival_ids(heads, frames, tokens):
    """Full-grid (H, N) frame and patch ids in arrival order."""
    n = np.broadcast_to(np.arange(frames * tokens), (heads, frames * tokens))
    return n // tokens, n % tokens


# ------------------------------------------------ (a) no holes: torch's avg_pool directly

# (frames, grid) on which the nominal kernel fits every pooled axis, so nothing shrinks
FITS = {3: [(7, (7, 7)), (9, (8, 10)), (24, (16, 16))],
        2: [(1, (5, 5)), (3, (6, 9)), (24, (16, 16))],
        1: [(1, (1, 3)), (2, (2, 3)), (24, (16, 16))]}


def torch_avg_pool(van, frames, grid, kernel):
    """The authors' AvgPool call on a full (H, F*T) map: stride 1, padding k // 2,
    count_include_pad=True; len(kernel) = pooled axes (3: frame, row, col; 2: row, col per
    frame; 1: the token sequence)."""
    van = torch.from_numpy(van)
    heads, pad = van.shape[0], [k // 2 for k in kernel]
    if len(kernel) == 3:
        out = F.avg_pool3d(van.reshape(heads, 1, frames, *grid), kernel, 1, pad,
                           count_include_pad=True)
    elif len(kernel) == 2:
        out = F.avg_pool2d(van.reshape(heads, frames, *grid), kernel, 1, pad,
                           count_include_pad=True)
    else:
        out = F.avg_pool1d(van[:, None], kernel, 1, pad, count_include_pad=True)
    return out.reshape(heads, -1).numpy()


def check_full_grid(frames, grid, kernel):
    """Both backends on a full grid in arrival order vs torch_avg_pool(kernel)."""
    tokens = grid[0] * grid[1]
    van = np.random.default_rng(frames + tokens).random((3, frames * tokens)).astype(np.float32)
    want = torch_avg_pool(van, frames, grid, kernel)
    got, ref = pooled_both(van, *arrival_ids(3, frames, tokens), grid, len(kernel))
    np.testing.assert_array_equal(ref, want)  # the first compression: the authors' pooling
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes, frames, grid",
                         [(a, f, g) for a, cases in FITS.items() for f, g in cases])
def test_no_holes_equals_torch_avg_pool(axes, frames, grid):
    check_full_grid(frames, grid, (NOMINAL[axes],) * (1 if axes == 1 else axes))


# kernels too large for an axis shrink to the largest odd size that fits (written out)
SHRUNK = [(5, (3, 4), (5, 3, 3)), (5, (3, 4), (3, 3)), (2, (6, 2), (1, 5, 1)),
          (2, (6, 2), (5, 1)), (9, (2, 9), (7, 1, 7)), (9, (2, 9), (1, 5)),
          (1, (1, 1), (1, 1, 1)), (1, (1, 1), (1, 1)), (1, (1, 1), (1,)), (1, (1, 2), (1,))]


@pytest.mark.parametrize("frames, grid, kernel", SHRUNK, ids=str)
def test_shrunk_kernels_equal_torch_avg_pool(frames, grid, kernel):
    check_full_grid(frames, grid, kernel)


def test_last_quarter_does_not_pool():
    van = np.random.default_rng(0).random((2, 50)).astype(np.float32)
    args = (*arrival_ids(2, 2, 25), (5, 5), 27, NUM_LAYERS)
    np.testing.assert_array_equal(np.array(scoring.pool_value_norm(mx.array(van), *args)), van)
    ref = ref_scoring.pool_value_norm(torch.from_numpy(van), *args)
    np.testing.assert_array_equal(ref.numpy(), van)


# ------------------------------------------------ (b) holes: the definition in float64

def oracle_pool(van, slot_ids, patch_ids, grid, axes):
    """Pooled VaN (H, N) float64 from the module docstring's definition, cell by cell: each head
    through the selection oracle's pool_head (test_select_oracle.py), one grid of G slots."""
    n_grid = max(len(set(ids.tolist())) for ids in slot_ids)  # G
    return np.stack([pool_head(van[h].astype(np.float64), slot_ids[h].tolist(), patch_ids[h].tolist(), grid, axes,
                               n_grid) for h in range(van.shape[0])])


def holey_case(seed, heads, frames, grid, keep_share):
    """Random VaN on a grid thinned per head, frames renumbered with gaps (as after
    earlier compressions). Returns van (H, N) float32, slot_ids, patch_ids (H, N)."""
    rng = np.random.default_rng(seed)
    tokens = grid[0] * grid[1]
    n_full = frames * tokens
    n_cand = max(1, int(n_full * keep_share))
    slots = np.stack([np.sort(rng.choice(n_full, n_cand, replace=False)) for _ in range(heads)])
    slot_ids = 3 * (slots // tokens) + 5  # absent frame ids leave no gap in the grid
    van = rng.random((heads, n_cand)).astype(np.float32) + 0.5
    return van, slot_ids, slots % tokens


HOLEY = [(2, 4, (3, 3), 0.6), (3, 9, (8, 8), 0.7), (1, 3, (2, 5), 0.3), (2, 12, (5, 7), 0.5),
         (2, 2, (1, 1), 0.5), (4, 8, (7, 7), 0.9)]


@pytest.mark.parametrize("axes", [3, 2, 1])
@pytest.mark.parametrize("index", range(len(HOLEY)))
def test_holes_match_the_definition(index, axes):
    van, slot_ids, patch_ids = holey_case(index, *HOLEY[index])
    grid = HOLEY[index][2]
    want = oracle_pool(van, slot_ids, patch_ids, grid, axes)
    got, ref = pooled_both(van, slot_ids, patch_ids, grid, axes)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(ref, want, rtol=1e-5)


# ------------------------------------------------ (c) MLX = reference with holes

@pytest.mark.parametrize("axes", [3, 2, 1])
@pytest.mark.parametrize("seed", range(4))
def test_mlx_equals_reference_with_holes(seed, axes):
    rng = np.random.default_rng(100 + seed)
    grid = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    case = holey_case(seed, int(rng.integers(1, 5)), int(rng.integers(1, 16)), grid,
                      float(rng.uniform(0.2, 1.0)))
    got, ref = pooled_both(*case, grid, axes)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


# ------------------------------------------------ (d) steady state: the newest block

def newest_block_share(select, pooled_axes=None, *, heads=2, dim=8, grid=(8, 8), block=8,
                       keep_frames=24, warmup=4, steps=8, seed=0):
    """Mean share of the newest block among the kept tokens, VaN only, at steady state.

    Blocks of `block` frames of random values arrive; whenever the cache holds more than
    keep_frames frames' worth it is compressed to keep_frames * T tokens (per head, holes
    and all). The share is averaged over compressions warmup + 1 .. warmup + steps.
    Args:
        select: select_tokens-like callable (values as numpy (H, N, D), keyword args)
            returning (H, K) numpy indices.
        pooled_axes: 3, 2 or 1 for VaN pooling in a layer that pools so many axes; None
            for no pooling.
    """
    rng = np.random.default_rng(seed)
    tokens = grid[0] * grid[1]
    slot_ids = patch_ids = np.zeros((heads, 0), np.int64)
    values = np.zeros((heads, 0, dim), np.float32)
    pooling = dict(van_pooling=pooled_axes is not None, layer_idx=LAYER.get(pooled_axes, 0),
                   num_layers=NUM_LAYERS, grid_hw=grid)
    shares, start = [], 0
    while len(shares) < steps:
        n = np.broadcast_to(np.arange(block * tokens), (heads, block * tokens))
        slot_ids = np.concatenate([slot_ids, start + n // tokens], axis=1)
        patch_ids = np.concatenate([patch_ids, n % tokens], axis=1)
        fresh = rng.standard_normal((heads, n.shape[1], dim)).astype(np.float32)
        values = np.concatenate([values, fresh], axis=1)
        if slot_ids.shape[1] > keep_frames * tokens:
            kept = select(values, tokens_per_slot=tokens, keep=keep_frames * tokens,
                          tar_ratio=0.0, slot_ids=slot_ids, patch_ids=patch_ids, **pooling)
            slot_ids = np.take_along_axis(slot_ids, kept, axis=1)
            patch_ids = np.take_along_axis(patch_ids, kept, axis=1)
            values = np.take_along_axis(values, kept[..., None], axis=1)
            warmup -= 1
            if warmup < 0:
                shares.append(np.mean(slot_ids >= start))
        start += block
    return float(np.mean(shares))


def mlx_select_np(values, **kw):
    return np.array(mlx_select.select_tokens(values, values, **kw)).astype(np.int64)


def ref_select_np(values, **kw):
    values = torch.from_numpy(values)
    return ref_select.select_tokens(values, values, **kw).numpy()


@pytest.mark.parametrize("select", [mlx_select_np, ref_select_np], ids=["mlx", "reference"])
def test_holes_do_not_favour_the_newest_block(select):
    plain = newest_block_share(select)
    assert 0.03 < plain < 0.2  # survivors of earlier rounds have the higher VaN
    for axes in (3, 2, 1):
        pooled = newest_block_share(select, axes)
        assert abs(pooled - plain) < 0.08, (axes, pooled, plain)
