"""Qwen3-VL streamed under a cap, in both backends, on the tiny float32 checkpoint
(tests/test_qwen3_vl.py pins the checkpoint and the processor's prompt and positions).

The stream is the original Qwen3-VL layout (mlx-vlm's processor, transformers 4.57): per
temporal slot "<t seconds><|vision_start|>" + T visual tokens + "<|vision_end|>", nothing
around the video as a whole. Block-wise streaming with a cap that keeps everything equals
one forward of the whole prompt through each upstream model with its own positions
(interleaved M-RoPE, DeepStack over the whole video); the MLX session and the reference
agree at every compression; slot text is stored with its slot, never pinned, so the cap
holds however long the video; the chat CLI answers.
"""

import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch  # (a dev dependency: a missing torch must fail, not skip)

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.contract.pixels import qwen_patchify
from infinipot_mlx.contract.positions import qwen3_timestamp_text
from infinipot_mlx.contract.rows import SLOT_TEXT
from infinipot_mlx.stream.session import StreamSession
from parity_checks import assert_parity, load_both, stream_uncapped
from parity_checks import run_both as run_pair

ROOT = Path(__file__).resolve().parents[1]
FPS, TOL, MAX_TOKENS = 2.0, 1e-4, 12
QUESTIONS = ["What moved in the video?", "And after that?"]
PAD, START, END = "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"


def frames_for(n: int, seed: int = 0, hw: tuple[int, int] = (96, 128)) -> np.ndarray:
    """n random RGB frames (n, H, W, 3) uint8; 96 x 128 px is a 3 x 4 merged grid (T = 12)."""
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tiny_qwen3_vl_dir):
    """(MLX (model, tokenizer, spec, path), reference (model, tokenizer, spec, path))."""
    return load_both(tiny_qwen3_vl_dir)


def stream(loaded, frames, backend: str, block_slots: int, question: str = QUESTIONS[0]):
    return stream_uncapped(loaded, frames, backend, block_slots, question, FPS)


def one_shot_inputs(tokenizer, spec, frames: np.ndarray, question: str):
    """input_ids, mm_token_type_ids, pixel values and grid (t, h, w) of the whole prompt."""
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    pieces = spec.pieces
    ids = enc(pieces.system.format(system="You are a helpful assistant.") + pieces.user_open)
    pixels, (gt, gh, gw) = qwen_patchify(frames, spec.image_mean, spec.image_std, 16, 2, 2)
    pad = tokenizer.convert_tokens_to_ids(PAD)
    for s in range(gt):
        ids += enc(qwen3_timestamp_text(s, FPS, 2, len(frames)) + START) + [pad] * (gh // 2 * gw // 2) + enc(END)
    ids += enc(question + pieces.question_close)
    types = [2 if i == pad else 0 for i in ids]
    return ids, types, pixels, (gt, gh, gw)


# ----- 1. block-wise = one forward -------------------------------------------------------------
def test_patchify_matches_transformers_video_processor(tiny_qwen3_vl_dir):
    import transformers

    processor = transformers.Qwen3VLVideoProcessor.from_pretrained(str(tiny_qwen3_vl_dir))
    frames = frames_for(4)
    out = processor(videos=[frames], do_sample_frames=False, do_resize=False, return_tensors="np")
    pixels, grid = qwen_patchify(frames, processor.image_mean, processor.image_std, 16, 2, 2)
    assert tuple(out["video_grid_thw"][0]) == grid
    np.testing.assert_allclose(pixels, out["pixel_values_videos"], atol=1e-5)


def test_mlx_blockwise_stream_equals_one_shot_forward(tiny):
    model, tok, spec, _ = tiny[0]
    frames = frames_for(10)  # 5 slots
    session, answer = stream(tiny[0], frames, "mlx", block_slots=2)  # blocks of 2, 2 and 1 slots
    ids, _, pixels, grid = one_shot_inputs(tok, spec, frames, QUESTIONS[0])
    text = session.cache.layers[0].patch_ids[0] == SLOT_TEXT  # every slot's text, as slot text
    assert text.sum() == sum(len(tok.encode(qwen3_timestamp_text(s, FPS) + START + END, add_special_tokens=False))
                             for s in range(5))
    model.language_model._position_ids = model.language_model._rope_deltas = None
    out = model(mx.array([ids]), pixel_values_videos=mx.array(pixels), video_grid_thw=mx.array([grid]))
    np.testing.assert_allclose(session.question_logits, np.array(out.logits[0, -1]), atol=TOL, rtol=0)
    assert stream(tiny[0], frames, "mlx", block_slots=8)[1] == answer


def test_reference_blockwise_stream_equals_one_shot_forward(tiny):
    model, tok, spec, _ = tiny[1]
    frames = frames_for(10)
    session, answer = stream(tiny[1], frames, "reference", block_slots=2)
    ids, types, pixels, grid = one_shot_inputs(tok, spec, frames, QUESTIONS[0])
    with torch.no_grad():  # transformers' own positions (get_rope_index) and DeepStack
        out = model(input_ids=torch.tensor([ids]), mm_token_type_ids=torch.tensor([types]),
                    pixel_values_videos=torch.from_numpy(pixels), video_grid_thw=torch.tensor([grid]),
                    use_cache=False)
    np.testing.assert_allclose(session.question_logits, out.logits[0, -1].numpy(), atol=TOL, rtol=0)
    assert stream(tiny[1], frames, "reference", block_slots=5)[1] == answer


# ----- 2. MLX vs the reference under a cap ----------------------------------------------------------
def run_both(tiny, frames, **config):
    return run_pair(tiny, frames, QUESTIONS, MAX_TOKENS, FPS, **config)


@pytest.mark.parametrize("config", [{"capacity": 230, "block_slots": 2, "reserve": 48},
                                    {"capacity": 300, "block_slots": 2, "reserve": 48, "van_pooling": True},
                                    {"capacity": None, "method": "full", "block_slots": 3}],
                         ids=["infinipot_v-230", "van_pooling-300", "full"])
def test_backends_agree_at_every_compression(tiny, config):
    mlx, ref = run_both(tiny, frames_for(28 if config["capacity"] else 12, seed=2), **config)
    if config["capacity"]:
        assert len(mlx.kept_log) >= 3
        text = [(layer[..., 1] == SLOT_TEXT).any() for step in mlx.kept_log for layer in step]
        assert any(text)  # slot text competed and some of it stayed
    assert_parity(mlx, ref, TOL)


def test_slot_text_is_never_pinned_and_the_cap_holds(tiny):
    """60 slots through a cap of 200: the timestamps do not pile up as pinned text."""
    model, tok, spec, _ = tiny[0]
    cfg = InfiniPotConfig(capacity=200, block_slots=2, reserve=40)
    session = StreamSession(model, tok, spec, cfg, "mlx", fps=FPS)
    session.add_frames(frames_for(4, seed=9))
    pinned = session.cache.n_pinned
    for seed in range(28):
        session.add_frames(frames_for(4, seed=seed))
        assert session.cache.n_pinned == pinned and session.cache.n_cached <= 200 - 40
    layer = session.cache.layers[0]
    text = layer.patch_ids == SLOT_TEXT
    assert text.any() and (layer.slot_ids[text] >= 0).all()  # slot text, labelled by its slot
    assert "".join(session.ask(QUESTIONS[0], max_tokens=4)) is not None
    assert session.cache.n_cached <= 200


# ----- 3. the chat CLI -------------------------------------------------------------------------
def test_chat_cli_answers(tiny_qwen3_vl_dir, video_dir):
    from videos import write_video

    video = write_video(video_dir / "noise_qwen3_vl.mp4", frames_for(20, seed=5), fps=10.0)
    out = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(video), "--model", str(tiny_qwen3_vl_dir),
                          "-q", "What happened?", "--max-tokens", "6", "--fps", "10"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "A: " in out.stdout
