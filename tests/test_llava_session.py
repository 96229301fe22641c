"""Tier 3: the MLX StreamSession on the tiny LLaVA-OneVision (float32, 98 px -> 7x7 -> 4x4 = 16 tokens).

Block-wise streaming equals one forward of mlx-vlm's full model on the same pixels (nothing
compressed), image_newline comes once per video segment, and the position policies: a
stream past max_position_embeddings stops under `absolute` and runs bounded under `compact`.
"""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.contract.pixels import siglip_frames
from infinipot_mlx.mlx.backend import load_model
from infinipot_mlx.stream.session import StreamSession
from infinipot_mlx.stream.session import PositionLimitError

QUESTION = "What moved in the video?"
T, SIDE = 16, 98


def frames_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tiny_llava_dir):
    return load_model(str(tiny_llava_dir))


@pytest.fixture(scope="module")
def short_range(tiny_llava_dir, tmp_path_factory):
    """The tiny LLaVA-OV with max_position_embeddings = 512 (a trained range a stream outgrows)."""
    path = tmp_path_factory.mktemp("llava512") / "model"
    shutil.copytree(tiny_llava_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 512
    (path / "config.json").write_text(json.dumps(config))
    return load_model(str(path))


def session_for(tiny, **config) -> StreamSession:
    model, tok, spec, _ = tiny
    return StreamSession(model, tok, spec, InfiniPotConfig(**config), record_kept=True)


def test_spec_reads_the_llava_hub_layout(tiny):
    spec = tiny[2]
    assert (spec.frames_per_slot, spec.position_axes, spec.default_policy) == (1, 1, "compact")
    assert spec.frame_size == (SIDE, SIDE) and spec.slot_grid(spec.frame_size) == (4, 4)
    assert spec.max_positions == 32768 and spec.image_mean == (0.5, 0.5, 0.5)
    assert (spec.pieces.user_open, spec.pieces.video_open, spec.pieces.video_close) == ("<|im_start|>user\n", "", "\n")


def test_spec_of_the_real_7b_config():
    """llava-hf/llava-onevision-qwen2-7b-ov-hf: 384 px, patch 14 -> 27x27 -> pooled 14x14 = 196."""
    from infinipot_mlx.contract.specs import llava_onevision_spec

    config = {"text_config": {"hidden_size": 3584, "num_attention_heads": 28, "num_hidden_layers": 28,
                              "num_key_value_heads": 4, "max_position_embeddings": 32768},
              "vision_config": {"image_size": 384, "patch_size": 14}}
    spec = llava_onevision_spec(config, {})
    assert spec.tokens_per_slot(spec.frame_size) == 196 and spec.frame_size == (384, 384)
    assert (spec.head_dim, spec.kv_heads, spec.max_positions) == (128, 4, 32768)


def test_blockwise_stream_equals_one_shot_forward(tiny):
    model, tok, spec, _ = tiny
    frames = frames_for(6)
    session = session_for(tiny, capacity=100_000, block_slots=2)  # 3 blocks, no compression
    session.add_frames(frames)
    answer = "".join(session.ask(QUESTION, max_tokens=6))
    assert session.counters.compressions == 0

    pieces = spec.pieces
    prefix = tok.encode(pieces.system.format(system="You are a helpful assistant.") + pieces.user_open,
                        add_special_tokens=False)
    suffix = tok.encode(pieces.video_close + QUESTION + pieces.question_close, add_special_tokens=False)
    video = [tok.convert_tokens_to_ids("<video>")] * (len(frames) * T + 1)  # + one image_newline
    pixels = siglip_frames(frames, spec.image_mean, spec.image_std, SIDE)  # (n, 3, 98, 98)
    out = model(mx.array([prefix + video + suffix]), pixel_values_videos=mx.array(pixels))
    np.testing.assert_allclose(session.question_logits, np.array(out.logits[0, -1]), atol=1e-4, rtol=0)

    fresh = session_for(tiny, capacity=100_000, block_slots=6)  # one block: another schedule
    fresh.add_frames(frames)
    assert "".join(fresh.ask(QUESTION, max_tokens=6)) == answer


def test_image_newline_once_per_video_segment(tiny):
    session = session_for(tiny, capacity=100_000, block_slots=2)
    newline_line = 1 + len(session.adapter.tokenizer.encode("\n", add_special_tokens=False))
    session.add_frames(frames_for(4))
    pinned = session.cache.n_pinned
    session._close_video()  # what ask() does first: image_newline, then "\n"
    session._close_video()  # a closed segment adds nothing more
    assert session.cache.n_pinned - pinned == newline_line
    assert session.cache.n_visual == 4 * T  # the newline is pinned, not a frame's token
    list(session.ask("Hi?", max_tokens=2))
    session.add_frames(frames_for(2, seed=1))
    list(session.ask("And?", max_tokens=2))
    assert session.prompt_text().count("<video_end_embeds>") == 2  # once per segment, not per block


def test_frames_must_have_the_vision_size(tiny):
    session = session_for(tiny, capacity=1000, reserve=100, block_slots=2)
    with pytest.raises(ValueError, match=r"VideoSource\(size=\(98, 98\)\)"):
        session.add_frames(np.zeros((2, 112, 112, 3), np.uint8))


def test_absolute_stops_before_the_trained_range(short_range):
    session = session_for(short_range, capacity=256, reserve=64, block_slots=2, position_policy="absolute")
    with pytest.raises(PositionLimitError, match="trained range of 512 positions; stop here, or use the compact"):
        for _ in range(40):
            session.add_frames(frames_for(2))
    assert session.stats()["next_position"] <= 512
    assert max(int(layer.positions.max()) for layer in session.cache) < 512  # never ran past it
    assert session.counters.compressions >= 1  # the cap held, but positions kept growing


def test_compact_runs_past_the_trained_range_renumbering_only_when_it_must(short_range):
    """~1000 positions in a 512-position model: positions stay inside the range, and the
    kept keys are renumbered (re-rotated, rounded again) a few times, not at every compression."""
    capacity = 256
    session = session_for(short_range, capacity=capacity, reserve=64, block_slots=2)
    assert session.policy == "compact"
    renumbered, last = 0, 0
    for i in range(30):  # 60 frames = 960 visual tokens: ~1000 positions under `absolute`
        session.add_frames(frames_for(2, seed=i))
        assert max(int(layer.positions.max()) for layer in session.cache) < 512
        renumbered += session.cache.next_position < last
        last = session.cache.next_position
    "".join(session.ask(QUESTION, max_tokens=8))
    assert session.counters.compressions >= 10 and 1 <= renumbered <= 3
    assert session.stats()["next_position"] <= 512
    for layer in session.cache:  # every head: increasing positions in arrival order
        assert np.all(np.diff(layer.positions, axis=1) > 0)


def test_compact_needs_a_capacity_inside_the_trained_range(short_range):
    session = session_for(short_range, capacity=2000, reserve=64, block_slots=2)
    with pytest.raises(PositionLimitError, match="lower the capacity"):
        for _ in range(20):
            session.add_frames(frames_for(2))


def test_answer_stops_before_the_trained_range_and_a_question_past_it_is_refused(short_range):
    session = session_for(short_range, capacity=None, method="full", block_slots=2, position_policy="absolute")
    session.add_frames(frames_for(28))  # 448 visual tokens: a 64-token answer would pass 512
    "".join(session.ask(QUESTION, max_tokens=64))
    assert session.stop_reason == "positions"
    assert session.cache.next_position <= 512 and session.counters.tokens_decoded < 63
    with pytest.raises(PositionLimitError, match="512"):  # no room left for another question
        session.ask(QUESTION * 3, max_tokens=1)


def test_quantized_bfloat16_model_streams_in_its_own_dtype(tiny_llava_dir):
    """As mlx-community's 4-bit checkpoints: vision features and image_newline take the text
    dtype (bfloat16), the KV cache stays bfloat16, and logits reach numpy as float32."""
    import mlx.nn as nn

    model, tok, spec, _ = load_model(str(tiny_llava_dir))  # a fresh copy: quantized in place
    model.set_dtype(mx.bfloat16)
    nn.quantize(model.language_model, group_size=64, bits=4)
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=200, reserve=40, block_slots=2))
    session.add_frames(frames_for(12))
    "".join(session.ask(QUESTION, max_tokens=4))
    assert session.counters.compressions >= 1 and session.stop_reason in ("eos", "max_tokens")
    assert np.all(np.isfinite(session.question_logits))
    assert session.cache[0].keys.dtype == mx.bfloat16 and session.question_logits.dtype == np.float32
