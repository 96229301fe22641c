"""Slot positions in both caches and the `compact` policy's key re-rotation (ALGORITHM.md section 6).

Re-rotation uses the models' own RoPE (mlx-vlm's nn.RoPE in the Qwen2 attention of the
tiny LLaVA-OV; transformers' Qwen2RotaryEmbedding): a key moved from p to p' must equal
the key computed directly at p' (float32, 1e-5), per head, after a per-head compression.
"""

import mlx.core as mx
import numpy as np
import pytest

from infinipot_mlx.mlx.cache import LayerKVCache, StreamCache

H, D = 2, 32


def raw_keys(n: int, seed: int = 0) -> np.ndarray:
    """(1, H, n, D) float32 keys before RoPE."""
    return np.random.default_rng(seed).standard_normal((1, H, n, D)).astype(np.float32)


@pytest.fixture(scope="module")
def mlx_rope(tiny_llava_dir):
    from infinipot_mlx.mlx.backend import load_model

    model = load_model(str(tiny_llava_dir))[0]
    return model.language_model.model.layers[0].self_attn.rope


@pytest.fixture(scope="module")
def torch_rope(tiny_llava_dir):
    import transformers
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    config = transformers.AutoConfig.from_pretrained(str(tiny_llava_dir)).text_config
    return Qwen2RotaryEmbedding(config)


def mlx_at(rope, raw: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Keys (1, H, n, D) rotated to per-slot positions (H, n), one slot at a time."""
    out = np.empty_like(raw)
    for h in range(raw.shape[1]):
        for i in range(raw.shape[2]):
            out[0, h, i] = np.array(rope(mx.array(raw[None, None, None, 0, h, i]), offset=int(positions[h, i])))
    return out


def torch_at(rotary, raw: np.ndarray, positions: np.ndarray) -> np.ndarray:
    import torch
    from transformers.models.qwen2.modeling_qwen2 import rotate_half

    keys = torch.from_numpy(raw)
    cos, sin = rotary(keys, torch.from_numpy(positions.astype(np.int64)))  # (H, n, D)
    return (keys * cos[None] + rotate_half(keys) * sin[None]).numpy()


def fill(cache, raw: np.ndarray, starts: list[int], lengths: list[int], at, to_array) -> None:
    """Prefill chunks of consecutive positions (start .. start + len - 1); odd chunks are visual."""
    first = 0
    for i, (start, length) in enumerate(zip(starts, lengths)):
        chunk = raw[:, :, first:first + length]
        pos = np.arange(start, start + length)
        if i % 2:
            cache.label_next(np.full(length, i), np.arange(length))
        cache.place_next(pos)
        cache.update_and_fetch(to_array(at(chunk, np.broadcast_to(pos, (H, length)))), to_array(chunk))
        first += length


def backends(mlx_rope, torch_rope):
    """(cache class, rotation, rope-at function, to-array) per backend."""
    import torch

    from infinipot_mlx.mlx.adapters.llava_onevision import KeyRotation as MLXRotation
    from infinipot_mlx.reference.adapters.llava_onevision import KeyRotation as TorchRotation
    from infinipot_mlx.reference.cache import LayerKVCache as TorchLayer

    return [
        (LayerKVCache, MLXRotation(mlx_rope), lambda k, p: mlx_at(mlx_rope, k, p), mx.array),
        (TorchLayer, TorchRotation(torch_rope), lambda k, p: torch_at(torch_rope, k, p), torch.from_numpy),
    ]


@pytest.mark.parametrize("which", [0, 1], ids=["mlx", "torch"])
def test_rerotated_key_equals_key_at_new_position(mlx_rope, torch_rope, which):
    cache_cls, rotation, at, to_array = backends(mlx_rope, torch_rope)[which]
    raw = raw_keys(30)
    cache = cache_cls()
    starts, lengths = [0, 5, 40, 46], [5, 12, 6, 7]  # a gap: positions 17..39 were dropped
    fill(cache, raw, starts, lengths, at, to_array)
    expected_pos = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    np.testing.assert_array_equal(cache.positions, np.broadcast_to(expected_pos, (H, 30)))
    kept = np.array([[0, 3, 5, 7, 11, 12, 15, 18], [1, 2, 4, 8, 9, 10, 14, 16]])  # per-head visual picks
    cache.compress(kept)
    slots = np.array([np.nonzero(np.isin(np.arange(30), np.r_[0:5, 17:23, (np.r_[5:17, 23:30])[row]]))[0]
                      for row in kept])  # (H, n) surviving original slots, arrival order
    np.testing.assert_array_equal(cache.positions, expected_pos[slots])
    cache.rerotate(np.arange(slots.shape[1]), rotation)
    new = np.broadcast_to(np.arange(slots.shape[1]), slots.shape)
    direct = at(np.take_along_axis(raw, slots[None, :, :, None], axis=2), new)
    np.testing.assert_allclose(np.asarray(cache.keys), direct, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(cache.positions, new)


def exact_rope(raw: np.ndarray, positions: np.ndarray, theta: float = 1e6) -> np.ndarray:
    """float64 rotate-half RoPE of (1, H, n, D) keys at positions (H, n): the exact rotation."""
    inv = 1.0 / theta ** (np.arange(0, D, 2) / D)  # (D/2,)
    angles = positions[None, :, :, None] * np.concatenate([inv, inv])  # (1, H, n, D)
    x = raw.astype(np.float64)
    half = np.concatenate([-x[..., D // 2:], x[..., : D // 2]], axis=-1)
    return x * np.cos(angles) + half * np.sin(angles)


@pytest.mark.parametrize("which", [0, 1], ids=["mlx", "torch"])
def test_rerotation_from_long_stream_positions(mlx_rope, torch_rope, which):
    """From ~32K positions (LLaVA-OV's trained range) down to 100. float32 RoPE angles near 32K
    carry ~1e-3 error in the model's own keys, and the rotation by -31900 (the model's RoPE
    module again) has angle errors of the same order: the moved key stays within a small
    multiple of the stored key's own error (below bfloat16 resolution)."""
    cache_cls, rotation, at, to_array = backends(mlx_rope, torch_rope)[which]
    raw = raw_keys(8, seed=1)
    cache = cache_cls()
    fill(cache, raw, [32000], [8], at, to_array)
    stored_err = np.abs(np.asarray(cache.keys) - exact_rope(raw, np.full((H, 8), 32000) + np.arange(8))).max()
    cache.rerotate(np.arange(100, 108), rotation)
    moved_err = np.abs(np.asarray(cache.keys) - exact_rope(raw, np.broadcast_to(np.arange(100, 108), (H, 8)))).max()
    assert moved_err <= 4 * stored_err, (moved_err, stored_err)


def test_offset_reports_placed_position_else_n_cached():
    layer = LayerKVCache()
    keys = mx.zeros((1, H, 3, D))
    layer.update_and_fetch(keys, keys)
    assert layer.offset == 3 and layer.positions.tolist() == [[-1] * 3] * H
    layer.place_next([100, 101])
    assert layer.offset == 100  # what mlx-vlm's Qwen2 attention reads before update_and_fetch
    layer.update_and_fetch(keys[:, :, :2], keys[:, :, :2])
    assert layer.offset == 5 and layer.positions[0].tolist() == [-1, -1, -1, 100, 101]
    with pytest.raises(ValueError, match="no recorded position"):
        layer.rerotate(np.arange(5), lambda k, d: k)
    layer.place_next([7])
    with pytest.raises(ValueError, match="1 positions but 2 tokens"):
        layer.update_and_fetch(keys[:, :, :2], keys[:, :, :2])


def test_stream_cache_places_every_layer():
    cache = StreamCache(3)
    cache.place_next(np.arange(10, 14))
    keys = mx.ones((1, H, 4, D))
    for layer in cache:
        assert layer.offset == 10
        layer.update_and_fetch(keys, keys)
    assert all(layer.positions[1].tolist() == [10, 11, 12, 13] for layer in cache)
    cache.rerotate(np.arange(4), lambda k, d: k + 1)  # any rotation: applied to every layer
    assert all(layer.positions[0].tolist() == [0, 1, 2, 3] for layer in cache)
    assert all(float(layer.keys[0, 0, 0, 0]) == 2.0 for layer in cache)


def test_compact_is_rejected_for_mrope(tiny_qwen_dir):
    from infinipot_mlx import InfiniPotConfig
    from infinipot_mlx.mlx.backend import load_model
    from infinipot_mlx.stream.session import StreamSession

    model, tok, spec, _ = load_model(str(tiny_qwen_dir))
    with pytest.raises(ValueError, match="compact position policy needs a 1-D RoPE"):
        StreamSession(model, tok, spec, InfiniPotConfig(position_policy="compact"))
