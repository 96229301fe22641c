"""The compressible KV cache, MLX and PyTorch reference, tested side by side.

Notation: H = KV heads, D = head dim, T = tokens per frame, n = stored slots, N = visual
candidates, K = kept. Caches are filled arange-style: the key of the token that arrived
i-th, in head h, is 1000 * i + h in every dim (its value is the negative), so every
surviving slot names its origin and gathers can be checked by eye.
"""

import infinipot_mlx  # noqa: F401  (before mlx)
import mlx.core as mx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infinipot_mlx.mlx import cache as mlx_cache
from infinipot_mlx.reference import cache as ref_cache
from infinipot_mlx.reference.adapters import cache_keyword

BACKENDS = {
    "mlx": (mlx_cache, mx.array, np.asarray),
    "torch": (ref_cache, lambda a: torch.from_numpy(np.array(a)), lambda t: t.detach().numpy()),
}
T = 4


def coded(arrivals, n_heads: int, dim: int) -> np.ndarray:
    """(1, H, L, D) float32 keys naming their arrival index and head."""
    code = 1000.0 * np.asarray(arrivals)[None, :, None] + np.arange(n_heads)[:, None, None]
    return np.broadcast_to(code, (n_heads, len(arrivals), dim))[None].astype(np.float32)


def stream_labels(segments) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per segment ("text", L) or ("frames", F): the (frame, patch) labels of its tokens."""
    chunks, frame = [], 0
    for kind, length in segments:
        if kind == "text":
            chunks.append((np.full(length, -1), np.full(length, -1)))
        else:
            frames = np.repeat(np.arange(frame, frame + length), T)
            chunks.append((frames, np.tile(np.arange(T), length)))
            frame += length
    return chunks


def feed(layer, chunks, to_array, start: int, n_heads: int = 2, dim: int = 3) -> int:
    """Append labelled chunks of coded tokens to one layer; returns the next arrival index."""
    for frames, patches in chunks:
        if np.any(frames >= 0):  # text chunks go untagged: pinned by default
            layer.label_next(frames, patches)
        keys = coded(np.arange(start, start + len(frames)), n_heads, dim)
        layer.update_and_fetch(to_array(keys), to_array(-keys))
        start += len(frames)
    return start


def expected_after(arrivals: list[list[int]], labels: np.ndarray, kept) -> list[list[int]]:
    """Plain-Python model of compress: per head, pinned plus kept visual, arrival order."""
    out = []
    for head, slots in enumerate(arrivals):
        visual = [a for a in slots if labels[a, 0] >= 0]
        chosen = {visual[k] for k in np.asarray(kept)[head]}
        out.append([a for a in slots if labels[a, 0] < 0 or a in chosen])
    return out


def check_layer(layer, arrivals, labels, to_numpy) -> None:
    """Every slot's key, value, frame and patch match the token it came from."""
    keys, values = to_numpy(layer.keys)[0], to_numpy(layer.values)[0]  # (H, n, D)
    want = np.asarray(arrivals, dtype=np.int64).reshape(len(arrivals), -1)  # (H, n)
    code = 1000.0 * want + np.arange(want.shape[0])[:, None]
    np.testing.assert_array_equal(keys, np.broadcast_to(code[..., None], keys.shape))
    np.testing.assert_array_equal(values, -keys)
    np.testing.assert_array_equal(layer.slot_ids, labels[want, 0])
    np.testing.assert_array_equal(layer.patch_ids, labels[want, 1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_compress_gathers_per_head_and_keeps_pinned(backend):
    module, to_array, to_numpy = BACKENDS[backend]
    cache = module.StreamCache(1)
    chunks = stream_labels([("text", 3), ("frames", 3), ("text", 2), ("frames", 1)])
    nxt = feed(cache[0], chunks, to_array, 0)
    labels = np.concatenate([np.stack(c, 1) for c in chunks])  # (arrivals, 2)
    assert (cache.n_cached, cache.n_pinned, cache.n_visual) == (21, 5, 16)
    kept = np.array([[0, 1, 5, 15], [12, 3, 10, 4]])  # different per head, unsorted
    arrivals = expected_after([list(range(nxt))] * 2, labels, kept)
    cache[0].compress(to_array(kept))
    check_layer(cache[0], arrivals, labels, to_numpy)
    assert (cache.n_cached, cache.n_pinned, cache.n_visual) == (9, 5, 4)

    more = stream_labels([("text", 1), ("frames", 2)])
    more = [(np.where(f >= 0, f + 4, f), p) for f, p in more]  # frames 4, 5 follow 0..3
    end = feed(cache[0], more, to_array, nxt)
    labels = np.concatenate([labels] + [np.stack(c, 1) for c in more])
    arrivals = [a + list(range(nxt, end)) for a in arrivals]
    kept = np.array([[0, 3, 6, 11], [1, 2, 9, 10]])
    cache[0].compress(kept)
    check_layer(cache[0], expected_after(arrivals, labels, kept), labels, to_numpy)
    assert (cache.n_cached, cache.n_pinned) == (10, 6)


segment = st.tuples(st.sampled_from(["text", "frames"]), st.integers(1, 3))


@settings(max_examples=50, deadline=None)
@given(segments=st.lists(segment, min_size=1, max_size=6), n_heads=st.integers(1, 3), data=st.data())
def test_random_streams_pinned_survive_and_backends_agree(segments, n_heads, data):
    chunks = stream_labels(segments)
    labels = np.concatenate([np.stack(c, 1) for c in chunks])
    n_visual = int((labels[:, 0] >= 0).sum())
    k = data.draw(st.integers(0, n_visual))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    kept = np.stack([rng.permutation(n_visual)[:k] for _ in range(n_heads)])  # (H, K)
    arrivals = expected_after([list(range(len(labels)))] * n_heads, labels, kept)
    gathered = []
    for module, to_array, to_numpy in BACKENDS.values():
        layer = module.LayerKVCache()
        feed(layer, chunks, to_array, 0, n_heads=n_heads)
        layer.compress(kept)
        check_layer(layer, arrivals, labels, to_numpy)
        assert (layer.slot_ids < 0).sum(axis=1).tolist() == [len(labels) - n_visual] * n_heads
        gathered.append(to_numpy(layer.keys))
    np.testing.assert_array_equal(*gathered)


def test_visual_candidates_agree_across_backends():
    chunks = stream_labels([("frames", 2), ("text", 2), ("frames", 1)])
    outs = []
    for module, to_array, to_numpy in BACKENDS.values():
        layer = module.LayerKVCache()
        feed(layer, chunks, to_array, 0)
        layer.compress(np.array([[0, 2, 5, 11], [1, 3, 8, 9]]))
        slots, keys, values, frames, patches = layer.visual()
        outs.append((slots, to_numpy(keys), to_numpy(values), frames, patches))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    slots, keys, _, frames, patches = outs[0]
    np.testing.assert_array_equal(slots, [[0, 1, 2, 5], [0, 1, 4, 5]])  # text sits at 3-4 / 2-3
    np.testing.assert_array_equal(keys[..., 0], [[0, 2000, 5000, 13000], [1001, 3001, 10001, 11001]])
    np.testing.assert_array_equal(frames, [[0, 0, 1, 2], [0, 0, 2, 2]])
    np.testing.assert_array_equal(patches, [[0, 2, 1, 3], [1, 3, 0, 1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_sees_every_cached_token_and_is_causal_within_block(backend):
    module, to_array, to_numpy = BACKENDS[backend]
    cache = module.StreamCache(1)
    feed(cache[0], stream_labels([("text", 5)]), to_array, 0)
    cache.next_position = 100  # the mask depends on stored slots only
    assert cache.make_mask(4) == "causal"  # what attention gets: bottom-right aligned
    mask = to_numpy(cache.make_mask(4, return_array=True))
    assert mask.shape == (4, 9) and mask.dtype == np.bool_
    assert mask[:, :5].all()
    np.testing.assert_array_equal(mask[:, 5:], np.tril(np.ones((4, 4), bool)))
    assert cache.make_mask(1) is None
    with pytest.raises(ValueError, match="sliding-window"):
        cache.make_mask(4, window_size=2)


def test_transformers_causal_mask_over_stream_cache():
    from transformers import Qwen2Config
    from transformers.masking_utils import create_causal_mask

    config = Qwen2Config(hidden_size=8, num_attention_heads=2, num_key_value_heads=1)
    config._attn_implementation = "sdpa"
    cache = ref_cache.StreamCache(2)
    for layer in cache:
        feed(layer, stream_labels([("text", 2), ("frames", 2)]), BACKENDS["torch"][1], 0)
        layer.compress(np.array([[0, 5, 7], [1, 2, 6]]))
    cache.next_position = 50
    mask = create_causal_mask(
        config, torch.zeros(1, 4, 8), None, cache, position_ids=None, allow_is_causal_skip=False
    )
    assert mask.shape == (1, 1, 4, 5 + 4)
    np.testing.assert_array_equal(mask[0, 0].numpy(), cache.make_mask(4, return_array=True).numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_labels_and_kept_sets_are_refused(backend):
    module, to_array, _ = BACKENDS[backend]
    layer = module.LayerKVCache()
    feed(layer, stream_labels([("frames", 2)]), to_array, 0)
    layer.label_next(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="tagged 3 tokens but 2"):
        layer.update_and_fetch(to_array(coded([8, 9], 2, 3)), to_array(coded([8, 9], 2, 3)))
    with pytest.raises(ValueError, match="pinned"):
        layer.label_next(np.array([-1, 0]), np.array([0, 0]))
    with pytest.raises(ValueError, match=r"in \[0, 8\)"):
        layer.compress(np.array([[0, 8], [1, 2]]))
    with pytest.raises(ValueError, match="H=2"):
        layer.compress(np.array([[0, 1]]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_by_token_growth_matches_one_shot(backend):
    module, to_array, to_numpy = BACKENDS[backend]
    one, many = module.LayerKVCache(), module.LayerKVCache()
    keys = coded(np.arange(300), 2, 3)
    one.update_and_fetch(to_array(keys), to_array(-keys))
    for i in range(300):  # crosses the 256-slot growth step
        out_k, _ = many.update_and_fetch(to_array(keys[:, :, i : i + 1]), to_array(-keys[:, :, i : i + 1]))
        assert out_k.shape[2] == i + 1
    np.testing.assert_array_equal(to_numpy(many.keys), to_numpy(one.keys))
    np.testing.assert_array_equal(to_numpy(many.values), keys * -1)
    assert many.n_cached == many.offset == many.size() == 300
    assert many.nbytes == 2 * 300 * 2 * 3 * 4  # live slots only, not the spare capacity


def test_mlx_state_round_trip_marks_slots_pinned():
    layer = mlx_cache.LayerKVCache()
    feed(layer, stream_labels([("frames", 1), ("text", 2)]), mx.array, 0)
    restored = mlx_cache.LayerKVCache.from_state(layer.state, "")
    np.testing.assert_array_equal(np.asarray(restored.keys), np.asarray(layer.keys))
    assert restored.n_cached == 6 and (restored.slot_ids == -1).all()
    assert not restored.is_trimmable()


# ---- integration: real model code drives the cache ------------------------------------

TEXT = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, rope_theta=10000.0,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})  # sums to head_dim / 2
CHUNKS = [(0, 10), (10, 14), (14, 17)]  # [2 text + 2 frames of T=4], [4 text], [3 text]
KEPT = np.array([[0, 4, 7], [2, 3, 5]])  # after chunk 2, per KV head (same in both layers)


def prompt():
    """Token ids (1, 17) and distinct 3-D positions (3, 1, 17) as numpy."""
    ids = np.random.default_rng(0).integers(0, 128, (1, 17))
    pos = np.stack([np.arange(17), np.arange(17) * 2 % 7, np.arange(17) + 3])[:, None]
    return ids, pos


def run_chunks(forward, cache, label, chunks):
    """Logits of consecutive chunks through one cache; chunk 0 carries the frame labels."""
    outs = []
    for i, (a, b) in enumerate(chunks):
        if label and i == 0:
            frames, patches = (np.concatenate(x) for x in zip(*stream_labels([("text", 2), ("frames", 2)])))
            cache.label_next(frames, patches)
        outs.append(forward(a, b, cache))
    return np.concatenate(outs, axis=1)


@pytest.fixture(scope="module")
def mlx_model():
    from mlx_vlm.models.qwen2_5_vl.config import ModelConfig, TextConfig, VisionConfig
    from mlx_vlm.models.qwen2_5_vl.language import LanguageModel

    text = TextConfig(model_type="qwen2_5_vl", rms_norm_eps=1e-6, **TEXT)
    config = ModelConfig(text_config=text, vision_config=VisionConfig(), model_type="qwen2_5_vl")
    mx.random.seed(0)
    model = LanguageModel(text, config)
    ids, pos = prompt()

    def forward(a, b, cache):
        out = model(mx.array(ids[:, a:b]), cache=cache, position_ids=mx.array(pos[..., a:b]))
        return np.asarray(out.logits.astype(mx.float32))

    return forward


def test_mlx_stream_cache_matches_kv_cache_and_runs_after_compress(mlx_model):
    from mlx_vlm.models.cache import KVCache

    ours = mlx_cache.StreamCache(2)
    got = run_chunks(mlx_model, ours, True, CHUNKS[:2])
    want = run_chunks(mlx_model, [KVCache(), KVCache()], False, CHUNKS[:2])
    np.testing.assert_allclose(got, want, atol=1e-5)

    for layer in ours:
        layer.compress(KEPT)
    assert (ours.n_cached, ours.n_pinned, ours.n_visual) == (9, 6, 3)
    manual = [KVCache() for _ in range(2)]
    for c, layer in zip(manual, ours):
        c.state = (layer.keys, layer.values)
    got = mlx_model(*CHUNKS[2], ours)
    np.testing.assert_allclose(got, mlx_model(*CHUNKS[2], manual), atol=1e-5)
    assert ours.n_cached == 12 and ours.n_pinned == 9


def torch_qwen2_5_vl():
    """Qwen2.5-VL (3-D positions (3, 1, L)) built from a tiny in-memory config."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(TEXT, initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    return Qwen2_5_VLForConditionalGeneration(config), prompt()[1]


def torch_qwen2():
    """The Qwen2 LM under LLaVA-OneVision (1-D positions (1, L))."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    text = {k: v for k, v in TEXT.items() if k != "rope_scaling"}
    config = Qwen2Config(**text, initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    return Qwen2ForCausalLM(config), prompt()[1][0]


@pytest.fixture(scope="module", params=[torch_qwen2_5_vl, torch_qwen2], ids=["qwen2_5_vl", "qwen2"])
def torch_model(request):
    torch.manual_seed(0)
    model, pos = request.param()
    model = model.to(torch.float32).eval()
    ids = prompt()[0]

    def forward(a, b, cache):
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids[:, a:b]), position_ids=torch.from_numpy(pos[..., a:b]),
                        **{cache_keyword(model): cache}, use_cache=True)
        return out.logits.numpy()

    return forward


def test_reference_stream_cache_matches_dynamic_cache_and_attends_to_kept(torch_model):
    from transformers import DynamicCache

    ours = ref_cache.StreamCache(2)
    got = run_chunks(torch_model, ours, True, CHUNKS[:2])
    full = DynamicCache()
    want = run_chunks(torch_model, full, False, CHUNKS[:2])
    np.testing.assert_allclose(got, want, atol=1e-5)

    for layer in ours:
        layer.compress(KEPT)
    manual = DynamicCache()
    for i, layer in enumerate(ours):
        manual.update(layer.keys.clone(), layer.values.clone(), i)
    got = torch_model(*CHUNKS[2], ours)
    np.testing.assert_allclose(got, torch_model(*CHUNKS[2], manual), atol=1e-5)
    assert np.abs(got - torch_model(*CHUNKS[2], full)).max() > 1e-3  # dropping tokens matters
    assert ours.n_cached == ours.get_seq_length() == 12 and ours.n_pinned == 9
