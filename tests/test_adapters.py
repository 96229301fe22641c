"""The adapter contract, for both models and both backends (tiny float32 checkpoints).

`forward(embeds (1, L, E), positions, cache)` returns the last token's logits, shape
(1, 1, V), whatever L is: a block of visual tokens, a text piece or one decoded token.
Also: a reference stream raises no FutureWarning/DeprecationWarning (transformers' cache
argument is passed under its current name).
"""

import json
import logging
import warnings

import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.stream.session import StreamSession
from infinipot_mlx.contract.positions import text_positions, video_positions

TEXT = "Hello! How can I help you today?"
FRAME_SIDE = {"qwen2_5_vl": 112, "llava_onevision": 98}  # 4 x 4 merged tokens per slot in both
CASES = [(m, b) for m in ("qwen2_5_vl", "llava_onevision") for b in ("mlx", "torch")]


def frames_for(model_type: str, n: int, seed: int = 0) -> np.ndarray:
    side = FRAME_SIDE[model_type]
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def vocab_size(path) -> int:
    config = json.loads((path / "config.json").read_text())
    return config.get("text_config", config)["vocab_size"]


def load_backend(path, backend: str):
    """(model, tokenizer, spec, path), and the backend's session module."""
    if backend == "mlx":
        from infinipot_mlx.mlx import backend as module

        return module.load_model(str(path)), module
    from infinipot_mlx.reference import backend as module

    return module.load_model(str(path), device="cpu"), module


@pytest.fixture(scope="module", params=CASES, ids=["-".join(c) for c in CASES])
def case(request, tiny_qwen_dir, tiny_llava_dir):
    """(session module, loaded model tuple, vocabulary size, model_type, backend name)."""
    model_type, backend = request.param
    path = tiny_qwen_dir if model_type == "qwen2_5_vl" else tiny_llava_dir
    loaded, module = load_backend(path, backend)
    return module, loaded, vocab_size(path), model_type, backend


def adapter_and_cache(case):
    """A fresh adapter and an empty cache of the case's backend."""
    module, (model, tok, spec, _), _, _, _ = case
    adapter = module.adapter_class(spec.model_type)(model, tok, spec)
    return adapter, module.StreamCache(spec.num_layers)


def host(x) -> np.ndarray:
    """A float32 numpy copy of an MLX array or a torch tensor."""
    return np.array(x.float().numpy() if hasattr(x, "detach") else x, dtype=np.float32)


def text_forward(adapter, cache, ids: list[int], start: int):
    positions = text_positions(start, len(ids), adapter.spec.position_axes)
    return adapter.forward(adapter.embed_tokens(ids), positions, cache)


def test_multi_token_and_one_token_forwards_return_last_token_logits(case):
    _, (_, tok, _, _), vocab, _, _ = case
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert len(ids) >= 4
    adapter, cache = adapter_and_cache(case)
    whole = text_forward(adapter, cache, ids, 0)
    assert tuple(whole.shape) == (1, 1, vocab)

    adapter, cache = adapter_and_cache(case)  # the same tokens, the last one fed alone
    head = text_forward(adapter, cache, ids[:-1], 0)
    last = text_forward(adapter, cache, ids[-1:], len(ids) - 1)
    assert tuple(head.shape) == (1, 1, vocab) and tuple(last.shape) == (1, 1, vocab)
    np.testing.assert_allclose(host(last), host(whole), atol=1e-4, rtol=0)  # really the last token's
    assert np.abs(host(head) - host(whole)).max() > 1e-3  # and not some other token's


def test_a_block_of_frames_returns_one_row_of_logits(case):
    _, (_, _, spec, _), vocab, model_type, _ = case
    frames = frames_for(model_type, 4)
    adapter, cache = adapter_and_cache(case)
    grid = spec.slot_grid(frames.shape[1:3])
    slots = len(frames) // spec.frames_per_slot
    embeds = adapter.encode_slots(frames)  # (S*T, E)
    positions = video_positions(spec, 0, 0, np.arange(slots, dtype=np.float64), grid)
    logits = adapter.forward(embeds, positions, cache)
    assert embeds.shape[0] == slots * grid[0] * grid[1] > 1
    assert tuple(logits.shape) == (1, 1, vocab)
    assert cache.n_cached == embeds.shape[0]  # every token of the block went into the cache


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "llava_onevision"])
def test_reference_stream_raises_no_deprecation_warning(model_type, tiny_qwen_dir, tiny_llava_dir):
    """A whole reference turn (frames, compressions, a question, an answer) under
    warnings-as-errors, and no deprecation message through transformers' logger either."""
    path = tiny_qwen_dir if model_type == "qwen2_5_vl" else tiny_llava_dir
    (model, tok, spec, _), module = load_backend(path, "torch")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            config = InfiniPotConfig(capacity=200, reserve=40, block_slots=2)
            session = StreamSession(model, tok, spec, config, "reference")
            session.add_frames(frames_for(model_type, 24))
            "".join(session.ask("What moved?", max_tokens=3))
    finally:
        logger.removeHandler(handler)
    assert session.counters.compressions >= 1 and session.stop_reason in ("eos", "max_tokens")
    deprecations = [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]
    assert not deprecations, deprecations


def test_adapters_and_backends_implement_the_protocols(case):
    """What session.py asks of them (protocols.py), in both backends; Qwen2.5-VL answers the
    hooks it has no use for: nothing after a video, no `compact` key rotation."""
    from infinipot_mlx.errors import UserError
    from infinipot_mlx.stream.protocols import Adapter, Backend

    module, (model, tok, spec, _), _, model_type, backend = case
    adapter, _ = adapter_and_cache(case)
    session_backend = module.MLXBackend() if backend == "mlx" else module.TorchBackend("cpu")
    assert isinstance(adapter, Adapter) and isinstance(session_backend, Backend)
    if model_type == "qwen2_5_vl":
        assert adapter.video_close_embeds() is None
        with pytest.raises(UserError, match="compact position policy needs a 1-D RoPE model"):
            adapter.key_rotation()
    else:
        assert tuple(adapter.video_close_embeds().shape)[:2] == (1, 1)
