"""Tier 4 (arrays): MLX selection vs the PyTorch reference on the same numpy input.

Random float32 KV has no ties, so the kept sets must be identical. Both backends agreeing
does not make them right: tests/test_select_oracle.py holds both to an oracle written from
ALGORITHM.md, for every method (uniform, sliding_window and full only there: both backends
take those from one shared function, so comparing them here would prove nothing). The pooled VaN itself
is pinned to torch's own avg_pool3d / avg_pool2d / avg_pool1d, to a from-the-definition
oracle with holes and across the backends in tests/test_pooling.py.
"""

import mlx.core as mx
import numpy as np
import pytest
import torch

from infinipot_mlx.contract import candidates
from infinipot_mlx.mlx import scoring
from infinipot_mlx.mlx import select as mlx_select
from infinipot_mlx.reference import scoring as ref_scoring
from infinipot_mlx.reference import select as ref_select

QWEN_7B = dict(heads=4, frames=24, grid=(16, 16), dim=128)  # Qwen2.5-VL-7B KV, 24 frames
SMALL = [dict(heads=2, frames=4, grid=(2, 2), dim=4), dict(heads=3, frames=7, grid=(3, 5), dim=8),
         dict(heads=1, frames=2, grid=(4, 4), dim=16), dict(heads=4, frames=9, grid=(7, 7), dim=32)]
CONFIGS = ([dict(tar_ratio=t) for t in (0.0, 0.5, 1.0)]
           + [dict(tar_ratio=t, van_pooling=True, layer_idx=i, num_layers=28)
              for t in (0.0, 0.5) for i in (0, 7, 14, 21)])


def random_kv(shape, seed):
    rng = np.random.default_rng(seed)
    tokens = shape["grid"][0] * shape["grid"][1]
    size = (shape["heads"], shape["frames"] * tokens, shape["dim"])
    return (rng.standard_normal(size).astype(np.float32),
            rng.standard_normal(size).astype(np.float32))


def both(keys, values, **kw):
    """Kept indices from MLX and from the reference, as numpy."""
    got = mlx_select.select_tokens(keys, values, **kw)
    want = ref_select.select_tokens(torch.from_numpy(keys), torch.from_numpy(values), **kw)
    assert got.dtype == mx.int32 and want.dtype == torch.int64
    return np.array(got), want.numpy()


def check_parity(shape, seed, keep, config, **ids):
    keys, values = random_kv(shape, seed)
    tokens = shape["grid"][0] * shape["grid"][1]
    got, want = both(keys, values, tokens_per_slot=tokens, keep=keep, grid_hw=shape["grid"],
                     **ids, **config)
    np.testing.assert_array_equal(got, want, err_msg=f"{shape} {config} keep={keep}")
    return want


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("index", range(len(SMALL)))
def test_parity_small_shapes(index, config):
    shape = SMALL[index]
    n_cand = shape["frames"] * shape["grid"][0] * shape["grid"][1]
    for seed, keep in enumerate((1, n_cand // 3 + 1, n_cand - 1, n_cand)):
        check_parity(shape, seed, keep, config)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_parity_qwen_7b_kv(config):
    check_parity(QWEN_7B, 7, 18 * 256 + 37, config)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("shape", [SMALL[3], QWEN_7B], ids=["small", "qwen7b"])
def test_parity_after_a_previous_compression(shape, config):
    tokens = shape["grid"][0] * shape["grid"][1]
    n_cand = shape["frames"] * tokens
    first = check_parity(shape, 11, n_cand * 2 // 3, dict(tar_ratio=0.5))  # holes per head
    frames = np.arange(n_cand) // tokens
    slot_ids, patch_ids = frames[first], np.arange(n_cand)[first] % tokens
    rng = np.random.default_rng(12)  # fresh KV for the survivors
    keys, values = (rng.standard_normal((shape["heads"], first.shape[1], shape["dim"]))
                    .astype(np.float32) for _ in range(2))
    got, want = both(keys, values, tokens_per_slot=tokens, keep=n_cand // 2,
                     grid_hw=shape["grid"], slot_ids=slot_ids, patch_ids=patch_ids, **config)
    np.testing.assert_array_equal(got, want)


def test_scores_agree():
    keys, values = random_kv(SMALL[3], 3)
    tokens = 49
    slot_ids, patch_ids = candidates.resolve_ids(None, None, 4, keys.shape[1], tokens)
    recent = candidates.recent_mask(slot_ids, tokens, 0.25)
    np.testing.assert_allclose(
        np.array(scoring.temporal_redundancy(mx.array(keys), patch_ids, recent, tokens)),
        ref_scoring.temporal_redundancy(torch.from_numpy(keys), patch_ids, recent, tokens).numpy(),
        atol=1e-6)
    np.testing.assert_allclose(np.array(scoring.value_norm(mx.array(values))),
                               ref_scoring.value_norm(torch.from_numpy(values)).numpy(), rtol=1e-6)
