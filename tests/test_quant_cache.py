"""The reference QuantizedLayerKVCache: rows stored once at kv_bits, kept bit for bit.

Every token gets a unique id through place_next (the cache carries it with the row as its
position label), so after any number of compressions and dropped turns each surviving row
can be compared with the bytes it was stored with on arrival.
"""

import numpy as np
import pytest
import torch

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.reference import quant
from infinipot_mlx.reference.backend import TorchBackend
from infinipot_mlx.reference.cache import LayerKVCache, QuantizedLayerKVCache, StreamCache

H, D = 2, 64


def _bits(x: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor as a same-width integer tensor (so -0.0 != 0.0, NaN == NaN)."""
    return x.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[x.element_size()])


def _same_bits(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _n_pinned(layer) -> int:
    return int((layer.slot_ids[0] < 0).sum())


def _append(layer, rng, n_seen: int, length: int, visual: bool, dtype) -> tuple:
    """Append `length` tokens (ids n_seen..) and return their keys and values as just stored."""
    keys, values = (torch.from_numpy(rng.standard_normal((1, H, length, D)) * 3).to(dtype) for _ in range(2))
    if visual:
        layer.label_next(np.full(length, n_seen), np.arange(length))  # slot = first id, patch = index
    layer.place_next(np.arange(n_seen, n_seen + length))  # each row's id, carried as its position label
    n = layer.n_cached
    stored = layer.update_and_fetch(keys, values)
    assert all(_same_bits(a, b) for a, b in zip(quant.quantize(keys, layer.group_size, layer.bits),
                                                 (p[..., n:, :] for p in stored[0])))
    return tuple(tuple(p[..., n:, :].clone() for p in part) for part in stored)


@pytest.mark.parametrize("dtype, bits, group_size", [(torch.float32, 4, 32), (torch.bfloat16, 8, 64),
                                                     (torch.float16, 4, 64)])
def test_kept_rows_keep_the_bytes_they_were_stored_with(dtype, bits, group_size):
    """300 appends, each followed by a compression with random keeps (and every 40th a dropped
    text turn): every surviving row's packed words, scales and biases stay the arrival bytes."""
    rng = np.random.default_rng(bits + group_size)
    layer, keep, n_seen = QuantizedLayerKVCache(group_size=group_size, bits=bits), 48, 0
    arrival = None  # keys, values: (packed, scales, biases) of every token so far, (1, H, ids, ·)
    for step in range(300):
        visual = step % 7 != 3  # text between the video tokens
        stored = _append(layer, rng, n_seen, 16, visual, dtype)
        n_seen += 16
        arrival = stored if arrival is None else tuple(
            tuple(torch.cat([a, s], dim=2) for a, s in zip(old, new)) for old, new in zip(arrival, stored))
        rows, cand_keys, cand_values, _, _ = layer.visual()
        if rows.shape[1] > keep:
            kept = np.sort(np.stack([rng.choice(rows.shape[1], keep, replace=False) for _ in range(H)]), axis=1)
            layer.compress(kept)
        if step % 40 == 39 and _n_pinned(layer) > 16:
            layer.drop_pinned(0, 16)
        ids = torch.from_numpy(layer.positions.astype(np.int64))[None, :, :, None]  # (1, H, n, 1)
        for now, then in zip(layer.keys + layer.values, arrival[0] + arrival[1]):
            expected = torch.gather(_bits(then), 2, ids.expand(-1, -1, -1, then.shape[-1]))
            assert torch.equal(_bits(now), expected), f"step {step}: a kept row's bytes changed"
    assert layer.n_cached == keep + _n_pinned(layer)


def test_scoring_sees_the_dequantized_rows_and_attention_too():
    """visual() and update() return dequantize(stored) in the compute dtype; an earlier row
    reads the same after later updates (it is never quantized again)."""
    layer, rng = QuantizedLayerKVCache(group_size=32, bits=4), np.random.default_rng(0)
    first = torch.from_numpy(rng.standard_normal((1, H, 5, D))).to(torch.bfloat16)
    keys, values = layer.update(first, first * 2)
    assert keys.dtype == torch.bfloat16 and keys.shape == (1, H, 5, D)
    assert _same_bits(keys, quant.dequantize(*quant.quantize(first, 32, 4), 32, 4))
    layer.label_next(np.zeros(7, int), np.arange(7))
    later = torch.from_numpy(rng.standard_normal((1, H, 7, D))).to(torch.bfloat16)
    keys2, values2 = layer.update(later, later)
    assert _same_bits(keys2[..., :5, :], keys) and _same_bits(values2[..., :5, :], values)
    rows, cand_keys, cand_values, slots, _ = layer.visual()
    assert rows.tolist() == [list(range(5, 12))] * H and cand_keys.shape == (H, 7, D)
    assert _same_bits(cand_keys, keys2[0, :, 5:]) and _same_bits(cand_values, values2[0, :, 5:])


def test_bytes_count_the_packed_words_scales_and_biases():
    layer = QuantizedLayerKVCache(group_size=64, bits=8)
    layer.update(torch.zeros(1, H, 10, D, dtype=torch.float16), torch.zeros(1, H, 10, D, dtype=torch.float16))
    per_row = D * 8 // 8 + 2 * (D // 64) * 2  # packed bytes + a float16 scale and bias per group
    assert layer.nbytes == 2 * H * 10 * per_row
    assert layer.allocated_bytes == 2 * H * LayerKVCache.step * per_row
    plain = LayerKVCache()
    plain.update(torch.zeros(1, H, 10, D, dtype=torch.float16), torch.zeros(1, H, 10, D, dtype=torch.float16))
    assert plain.nbytes == 2 * H * 10 * D * 2


def test_rerotate_refuses_to_quantize_twice():
    cache = StreamCache(2, kv_bits=4, kv_group_size=32)
    for layer in cache.layers:
        layer.place_next(np.arange(3))
        layer.update(torch.ones(1, H, 3, D), torch.ones(1, H, 3, D))
    with pytest.raises(ValueError, match="quantize them twice"):
        cache.rerotate(np.arange(3) + 5, lambda keys, delta: keys)


def test_snapshot_rows_and_to_quantized_carry_the_tuples():
    """restore() undoes a compression; rows()/set_rows() copy a layer bit for bit; a full-precision
    layer's to_quantized() quantizes its rows once, labels and all."""
    rng = np.random.default_rng(1)
    cache = StreamCache(1, kv_bits=8, kv_group_size=32)
    layer = cache.layers[0]
    x = torch.from_numpy(rng.standard_normal((1, H, 20, D))).float()
    layer.label_next(np.repeat(np.arange(5), 4), np.tile(np.arange(4), 5))
    layer.update(x, -x)
    before = cache.snapshot()
    stored = layer.keys + layer.values
    layer.compress(np.array([[0, 3], [1, 2]]))
    assert layer.n_cached == 2
    cache.restore(before)
    assert all(_same_bits(a, b) for a, b in zip(layer.keys + layer.values, stored))

    copy = QuantizedLayerKVCache(group_size=32, bits=8)
    copy.set_rows(**layer.rows())
    assert copy.n_cached == 20 and all(_same_bits(a, b) for a, b in zip(copy.keys + copy.values, stored))
    assert np.array_equal(copy.slot_ids, layer.slot_ids)
    copy.update(x[..., :1, :], x[..., :1, :])  # appends after the loaded rows
    assert copy.n_cached == 21 and copy.dtype == torch.float32

    plain = LayerKVCache()
    plain.label_next(np.repeat(np.arange(5), 4), np.tile(np.arange(4), 5))
    plain.update(x, -x)
    converted = plain.to_quantized(group_size=32, bits=8)
    assert converted.bits == 8 and converted.group_size == 32
    assert all(_same_bits(a, b) for a, b in zip(converted.keys + converted.values, stored))
    assert np.array_equal(converted.patch_ids, plain.patch_ids)


def test_an_empty_cache_quantizes_as_the_config_says():
    """The session's opening: new_cache, then maybe_quantize(config) (quantized_kv_start 0:
    quantized before the first token; later starts wait for that many tokens)."""
    def opened(config):
        cache = TorchBackend("cpu").new_cache(2)
        cache.maybe_quantize(config)
        return cache

    assert type(opened(InfiniPotConfig()).layers[0]) is LayerKVCache
    layer = opened(InfiniPotConfig(kv_bits=4, kv_group_size=128)).layers[1]
    assert isinstance(layer, QuantizedLayerKVCache) and (layer.bits, layer.group_size) == (4, 128)
    later = opened(InfiniPotConfig(kv_bits=4, quantized_kv_start=100)).layers[0]
    assert type(later) is LayerKVCache  # quantized once it holds 100 tokens (LayerStack.maybe_quantize)


@pytest.mark.parametrize("bits, checkpoint", [(4, "tiny_qwen_dir"), (8, "tiny_qwen_bf16_dir")])
def test_reference_session_streams_and_answers_at_kv_bits(bits, checkpoint, request):
    """The tiny Qwen2.5-VL (head dim 32) on the reference backend at --kv-bits: frames stream
    under the cap through several compressions, two questions get answers, the cache holds
    the quantized layout, and the system prompt's rows keep their first bytes throughout."""
    from infinipot_mlx.reference.backend import load_model
    from infinipot_mlx.stream.session import StreamSession

    model, tokenizer, spec, _ = load_model(str(request.getfixturevalue(checkpoint)), device="cpu")
    config = InfiniPotConfig(capacity=160, reserve=40, block_slots=2, kv_bits=bits, kv_group_size=32)
    session = StreamSession(model, tokenizer, spec, config, "reference")
    n_system = session.cache.n_cached
    system_rows = [tuple(p.clone() for p in layer.keys + layer.values) for layer in session.cache.layers]
    frames = np.random.default_rng(0).integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    answers = []
    for question in ("What moved?", "And then?"):
        session.add_frames(frames)
        answers.append("".join(session.ask(question, max_tokens=8)))
        assert session.stop_reason in ("eos", "max_tokens")
    assert session.counters.compressions >= 2 and session.counters.peak_cached <= config.capacity
    assert all(answers) and len(session.transcript) > 2
    dtype_bytes = model.dtype.itemsize
    per_row = 2 * spec.kv_heads * (spec.head_dim * bits // 8 + 2 * (spec.head_dim // 32) * dtype_bytes)
    assert session.cache.nbytes == spec.num_layers * session.cache.n_cached * per_row
    for layer, first in zip(session.cache.layers, system_rows):
        assert isinstance(layer, QuantizedLayerKVCache) and layer.bits == bits
        assert all(_same_bits(now[..., :n_system, :], then) for now, then in zip(layer.keys + layer.values, first))
