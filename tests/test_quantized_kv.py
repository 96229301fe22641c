"""Quantized KV under the cap (MLX): --kv-bits stores keys and values as mlx-lm does, and
compression keeps each token's stored bytes, never quantizing twice.

Notation: H = KV heads, D = head dim, L = tokens of one update, K = kept visual tokens.
"""

import infinipot_mlx  # noqa: F401  (before mlx)
import json
import struct

import mlx.core as mx
import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.cli.console import format_stats
from infinipot_mlx.contract.budget import kv_element_bytes, plan_from_config
from infinipot_mlx.errors import UserError
from infinipot_mlx.mlx.backend import load_model
from infinipot_mlx.mlx.cache import LayerKVCache, QuantizedLayerKVCache, StreamCache
from infinipot_mlx.server.pool import Memory, MemoryPool
from infinipot_mlx.stream.session import PositionLimitError, StreamSession

H, D, T = 2, 64, 4  # heads, head dim, tokens per slot


def _arrivals(layer, rng, slot: int, n_slots: int, known: dict) -> int:
    """Append n_slots slots of random tokens; record each token's stored bytes by (slot, patch)."""
    slots = np.repeat(np.arange(slot, slot + n_slots), T)
    patches = np.tile(np.arange(T), n_slots)
    layer.label_next(slots, patches)
    keys = mx.array(rng.normal(size=(1, H, len(slots), D)).astype(np.float32))
    before = layer.n_cached
    stored_keys, stored_values = layer.update_and_fetch(keys, -2 * keys)
    for i, (s, p) in enumerate(zip(slots, patches)):
        known[(int(s), int(p))] = [np.array(part[0, :, before + i]) for part in (*stored_keys, *stored_values)]
    return slot + n_slots


@pytest.mark.parametrize("bits", [4, 8])
def test_a_kept_token_keeps_the_bytes_it_was_stored_with_over_hundreds_of_compressions(bits):
    rng, layer, known, slot = np.random.default_rng(bits), QuantizedLayerKVCache(group_size=32, bits=bits), {}, 0
    layer.label_next(np.full(3, -1), np.full(3, -1))  # three pinned text tokens
    layer.update_and_fetch(mx.zeros((1, H, 3, D)), mx.zeros((1, H, 3, D)))
    for _ in range(300):
        slot = _arrivals(layer, rng, slot, 2, known)
        n_visual = layer.n_cached - 3
        keep = 8 * T if n_visual > 8 * T else n_visual
        # the oldest T candidates always stay (slot 0 lives through every compression), the rest at random
        kept = np.sort(np.stack([np.r_[np.arange(min(T, keep)), T + rng.choice(n_visual - T, keep - T, replace=False)]
                                 if keep > T else np.arange(keep) for _ in range(H)]), axis=1)
        layer.compress(kept)
    assert layer.n_cached == 3 + 8 * T and slot == 600
    parts = [np.array(a[0]) for a in (*layer.keys, *layer.values)]  # each (H, n, ·)
    for head in range(H):
        for row in range(3, layer.n_cached):
            label = (int(layer.slot_ids[head, row]), int(layer.patch_ids[head, row]))
            for part, arrived in zip(parts, known[label]):
                assert np.array_equal(part[head, row], arrived[head]), (label, head)
    assert all(layer.slot_ids[h, 3] == 0 for h in range(H))  # stored 300 compressions ago


def test_storage_is_mlx_lm_layout_and_scoring_reads_the_dequantized_rows():
    layer = QuantizedLayerKVCache(group_size=64, bits=4)
    keys = mx.array(np.random.default_rng(0).normal(size=(1, H, 2 * T, D)).astype(np.float32))
    layer.label_next(np.repeat([0, 1], T), np.tile(np.arange(T), 2))
    packed, scales, biases = layer.update_and_fetch(keys, keys)[0]
    assert (packed.dtype, packed.shape, scales.shape, biases.shape) == (mx.uint32, (1, H, 2 * T, D * 4 // 32),
                                                                         (1, H, 2 * T, 1), (1, H, 2 * T, 1))
    expected = mx.dequantize(*mx.quantize(keys, group_size=64, bits=4), group_size=64, bits=4)[0]
    _, visual_keys, visual_values, _, _ = layer.visual()
    assert mx.array_equal(visual_keys, expected) and mx.array_equal(visual_values, expected)
    assert layer.nbytes == sum(a.nbytes for a in (*layer.keys, *layer.values))
    assert layer.allocated_bytes >= layer.nbytes and not hasattr(LayerKVCache(), "bits")


def test_state_follows_mlx_lm_and_restores_the_stored_bytes():
    layer = QuantizedLayerKVCache(group_size=32, bits=4)
    keys = mx.array(np.random.default_rng(1).normal(size=(1, H, 5, D)).astype(np.float32))
    layer.update_and_fetch(keys, -keys)
    again = QuantizedLayerKVCache(group_size=32, bits=4)
    again.state = layer.state
    assert again.meta_state == layer.meta_state == ("256", "5", "32", "4")
    assert all(mx.array_equal(a, b) for a, b in zip((*layer.keys, *layer.values), (*again.keys, *again.values)))
    assert (again.slot_ids < 0).all()  # restored rows are pinned, as the unquantized state setter does


def test_a_quantized_key_is_never_rerotated():
    layer = QuantizedLayerKVCache(group_size=32, bits=8)
    with pytest.raises(ValueError, match="quantize them twice"):
        layer.rerotate(np.zeros(0, np.int32), None)


@pytest.mark.parametrize("bits", [4, 8])
def test_the_plan_counts_the_bits(bits):
    config = json.loads(json.dumps(_qwen7b_config()))
    common = dict(tokens_per_slot=128, block_slots=4, reserve=512, dtype_bytes=2)
    full = plan_from_config(config, 24 << 30, 8 << 30, **common)
    quantized = plan_from_config(config, 24 << 30, 8 << 30, kv_bits=bits, **common)
    gain = 2 / kv_element_bytes(2, bits, 64)  # 3.56x at 4 bits, 1.88x at 8
    assert quantized.kv_bytes_per_token == pytest.approx(full.kv_bytes_per_token / gain)
    assert quantized.capacity > full.capacity * 1.3  # activations share the budget with the KV
    assert f"at {bits} bits ({gain:.1f}x the tokens of 2-byte KV)" in quantized.line()


def _qwen7b_config() -> dict:
    """The text and vision shapes of Qwen2.5-VL-7B-Instruct's config.json."""
    return dict(model_type="qwen2_5_vl", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                vision_config=dict(hidden_size=1280, intermediate_size=3420, num_heads=16, depth=32,
                                   out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                                   temporal_patch_size=2, in_chans=3))


# ----- sessions on the tiny Qwen2.5-VL (head dim 32) ---------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    return load_model(str(tiny_qwen_dir))


def _session(tiny, **config):
    model, tokenizer, spec, path = tiny
    config = InfiniPotConfig(**{"capacity": 200, "reserve": 32, "block_slots": 2, "kv_group_size": 32, **config})
    return StreamSession(model, tokenizer, spec, config, fps=2.0, check_cap=True, model_dir=path)


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_quantized_session_holds_the_cap_answers_and_continues_exactly_from_its_memory(tiny, bits, tmp_path):
    session = _session(tiny, kv_bits=bits)
    session.add_frames(_frames(40))  # check_cap: CapBrokenError if any forward passes 200 rows
    assert session.counters.compressions >= 5 and session.cache.quantized
    assert session.counters.peak_cached <= 200 and "".join(session.ask("What moved?", max_tokens=4))
    assert session.stats()["kv_bits"] == bits and f"MB at {bits} bits |" in format_stats(session)  # chat's /stats
    buffers = [part for layer in session.cache.layers for part in (*layer._keys, *layer._values)]
    pool = MemoryPool(max_bytes=10**9, max_sessions=1)
    assert pool.put(Memory("clip", session, ["clip.mp4"], "stream"))  # the server's pool charges
    assert pool.snapshot()["memory_bytes"] == session.cache.allocated_bytes == sum(b.nbytes for b in buffers)
    path = session.save(tmp_path / "q.mem")
    header = json.loads(path.read_bytes()[8:8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])["__metadata__"]
    assert json.loads(header["kv_quantization"]) == dict(mode="affine", bits=bits, group_size=32)
    again = _session(tiny)  # opened without --kv-bits: the memory's settings win
    again.load_memory(path)
    assert again.cache.quantized and again.config.kv_bits == bits
    for a, b in zip(session.cache.layers, again.cache.layers):
        assert all(mx.array_equal(x, y) for x, y in zip((*a.keys, *a.values), (*b.keys, *b.values)))
    more = _frames(6, seed=1)
    session.add_frames(more)
    again.add_frames(more)
    assert list(session.ask("And then?", max_tokens=6)) == list(again.ask("And then?", max_tokens=6))


def test_memory_files_shrink_with_the_bits(tiny, tmp_path):
    sizes = {}
    for bits in (None, 8, 4):
        session = _session(tiny, kv_bits=bits)
        session.add_frames(_frames(24))
        sizes[bits] = session.save(tmp_path / f"{bits}.mem").stat().st_size
    # float32 KV, head dim 32, groups of 32: 128 bytes per row and head; 8 bits 32 + 8; 4 bits 16 + 8
    assert sizes[None] > sizes[8] > sizes[4]
    assert sizes[None] / sizes[4] > 2.5


def test_quantization_starts_where_it_is_asked_and_rows_are_quantized_once(tiny):
    session = _session(tiny, kv_bits=8, quantized_kv_start=60)
    assert not session.cache.quantized  # the system prompt is shorter than 60 tokens
    session.add_frames(_frames(8))
    assert session.cache.quantized and session.cache.n_cached >= 60


def test_a_group_size_that_does_not_divide_the_head_dim_is_refused(tiny):
    with pytest.raises(UserError, match="does not divide this model's head dimension \\(32\\); choose one of 32"):
        _session(tiny, kv_bits=4, kv_group_size=64)


@pytest.fixture(scope="module")
def llava_short(build_tiny, tmp_path_factory):
    """The tiny LLaVA-OneVision with a trained range of 512 positions (compact renumbers soon)."""
    path = build_tiny("llava_onevision", tmp_path_factory.mktemp("llava_short"), "float32", 0)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 512
    (path / "config.json").write_text(json.dumps(config))
    return load_model(str(path))


def test_a_quantized_llava_stream_stops_cleanly_where_compact_would_renumber(llava_short):
    model, tokenizer, spec, path = llava_short
    config = InfiniPotConfig(capacity=200, reserve=32, block_slots=2, kv_bits=8, kv_group_size=32)
    session = StreamSession(model, tokenizer, spec, config, model_dir=path)
    assert session.policy == "compact"
    rng = np.random.default_rng(0)
    with pytest.raises(PositionLimitError, match="cannot renumber its positions"):
        for _ in range(100):
            session.add_frames(rng.integers(0, 256, (8, 98, 98, 3), dtype=np.uint8))
    assert 400 < session.cache.next_position <= 512 and session.counters.compressions > 0
