"""The reference backend runs where its keys live: every tensor built from host metadata
(masks, index plans, weights, pooling scales) goes to the keys' device.

On `meta` (no values, only shapes) the whole selection path must run and hand back
indices of the right shape on `meta`. With CUDA (marker `cuda`, skipped without a GPU)
the kept indices equal the CPU's and the scores agree.
"""

import numpy as np
import pytest
import torch

from infinipot_mlx.contract import candidates
from infinipot_mlx.reference import scoring, select

HEADS, FRAMES, GRID, DIM = 2, 6, (4, 4), 8
TOKENS = GRID[0] * GRID[1]
N_CAND = FRAMES * TOKENS
KEEP = N_CAND // 2
POOLING = [dict()] + [dict(van_pooling=True, layer_idx=i, num_layers=4) for i in range(4)]
CONFIGS = ([dict(method=m) for m in ("uniform", "sliding_window", "full")]
           + [dict(tar_ratio=t, **p) for t in (0.0, 0.5, 1.0) for p in POOLING])
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False")


def holey_ids(seed=0):
    """(H, N') frame and patch ids after an earlier compression: N' = 2N/3, holes per head."""
    rng = np.random.default_rng(seed)
    slots = np.stack([np.sort(rng.choice(N_CAND, N_CAND * 2 // 3, replace=False))
                      for _ in range(HEADS)])
    return 2 * (slots // TOKENS), slots % TOKENS


def kv(device, n_cand=N_CAND, dtype=torch.float32, seed=0):
    """Random (H, n_cand, D) keys and values on device (empty ones on meta)."""
    if device == "meta":
        return (torch.empty((HEADS, n_cand, DIM), dtype=dtype, device="meta") for _ in range(2))
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn((HEADS, n_cand, DIM), generator=gen).to(device=device, dtype=dtype)
            for _ in range(2))


def run_select(device, config, holes=False, dtype=torch.float32):
    """Kept indices of select_tokens on device, with or without earlier holes."""
    ids = dict(zip(("slot_ids", "patch_ids"), holey_ids())) if holes else {}
    n_cand = ids["slot_ids"].shape[1] if holes else N_CAND
    keys, values = kv(device, n_cand, dtype)
    keep = n_cand if config.get("method") == "full" else KEEP
    return select.select_tokens(keys, values, tokens_per_slot=TOKENS, keep=keep, grid_hw=GRID,
                                **ids, **config), n_cand


# ------------------------------------------------ meta: the shape path

@pytest.mark.parametrize("holes", [False, True], ids=["dense", "holes"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_selection_runs_on_meta(config, holes):
    out, n_cand = run_select("meta", config, holes)
    keep = n_cand if config.get("method") == "full" else KEEP
    assert out.device.type == "meta"
    assert out.shape == (HEADS, keep) and out.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_selection_with_half_keys(device, dtype):
    for config in CONFIGS:
        out, n_cand = run_select(device, config, holes=True, dtype=dtype)
        keep = n_cand if config.get("method") == "full" else KEEP
        assert out.device.type == device and out.shape == (HEADS, keep)


@pytest.mark.parametrize("layer_idx", range(4))
@pytest.mark.parametrize("holes", [False, True], ids=["dense", "holes"])
def test_scorers_run_on_meta(holes, layer_idx):
    slot_ids, patch_ids = holey_ids() if holes else candidates.resolve_ids(
        None, None, HEADS, N_CAND, TOKENS)
    keys, values = kv("meta", slot_ids.shape[1])
    recent = candidates.recent_mask(slot_ids, TOKENS, 0.25)
    outputs = [scoring.temporal_redundancy(keys, patch_ids, recent, TOKENS),
               scoring.value_norm(values)]
    outputs.append(scoring.pool_value_norm(outputs[1], slot_ids, patch_ids, GRID, layer_idx, 4))
    for out in outputs:
        assert out.device.type == "meta"
        assert out.shape == slot_ids.shape and out.dtype == torch.float32


def test_values_follow_the_keys_device():
    # the keys' device is the device of the step: values elsewhere are moved, not mixed
    keys, _ = kv("meta")
    _, values = kv("cpu")
    out = select.select_tokens(keys, values, tokens_per_slot=TOKENS, keep=KEEP, tar_ratio=0.5)
    assert out.device.type == "meta" and out.shape == (HEADS, KEEP)


# ------------------------------------------------ CUDA vs CPU

@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("holes", [False, True], ids=["dense", "holes"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_cuda_selection_equals_cpu(config, holes):
    got, _ = run_select("cuda", config, holes)
    want, _ = run_select("cpu", config, holes)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("layer_idx", range(4))
@pytest.mark.parametrize("holes", [False, True], ids=["dense", "holes"])
def test_cuda_scores_match_cpu(holes, layer_idx):
    slot_ids, patch_ids = holey_ids() if holes else candidates.resolve_ids(
        None, None, HEADS, N_CAND, TOKENS)
    recent = candidates.recent_mask(slot_ids, TOKENS, 0.25)

    def scores(device):
        keys, values = kv(device, slot_ids.shape[1])
        van = scoring.value_norm(values)
        return (scoring.temporal_redundancy(keys, patch_ids, recent, TOKENS), van,
                scoring.pool_value_norm(van, slot_ids, patch_ids, GRID, layer_idx, 4))

    for got, want in zip(scores("cuda"), scores("cpu")):
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_parity_cli_on_cuda(tiny_qwen_dir, moving_shapes_mp4, dtype):
    """The whole pipeline, MLX against the reference on the GPU: exact in float32, structure
    only in half precision (python -m infinipot_mlx.parity --help)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "infinipot_mlx.parity", "--model", str(tiny_qwen_dir),
                          "--video", str(moving_shapes_mp4), "--kv-budget", "200", "--reserve", "40",
                          "--fps", "10", "--device", "cuda", "--dtype", dtype],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "PASS" in out.stdout
