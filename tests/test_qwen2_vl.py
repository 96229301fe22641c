"""Qwen2-VL (Qwen/Qwen2-VL-7B-Instruct layout) in both backends, on a tiny float32 checkpoint.

The checkpoint loads through mlx_vlm.load and transformers' from_pretrained; block-wise
streaming equals one forward of the whole prompt through each upstream model with the
upstream model's own positions (Qwen2-VL's t = slot, no time scaling); the MLX session and
the reference agree at every compression; the chat CLI answers.
"""

import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import torch  # noqa: E402  (a dev dependency: a missing torch must fail, not skip)

from infinipot_mlx.contract.pixels import qwen_patchify
from infinipot_mlx.contract.positions import mrope_slot_positions
from infinipot_mlx.contract.specs import load_spec
from parity_checks import assert_parity, load_both, qwen_one_shot_inputs, stream_uncapped  # noqa: E402
from parity_checks import run_both as run_pair  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FPS, TOL, MAX_TOKENS = 2.0, 1e-4, 12
QUESTIONS = ["What moved in the video?", "And after that?"]


def frames_for(n: int, seed: int = 0, hw: tuple[int, int] = (112, 168)) -> np.ndarray:
    """n random RGB frames (n, H, W, 3) uint8; 112 x 168 gives a 4 x 6 merged grid (T = 24)."""
    return np.random.default_rng(seed).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tiny_qwen2_vl_dir):
    """(MLX (model, tokenizer, spec, path), reference (model, tokenizer, spec, path))."""
    return load_both(tiny_qwen2_vl_dir)


def stream(loaded, frames, backend: str, block_slots: int, question: str = QUESTIONS[0]):
    return stream_uncapped(loaded, frames, backend, block_slots, question, FPS)


# ----- 1. the checkpoint ------------------------------------------------------------------------
def test_checkpoint_loads_in_both_backends(tiny, tiny_qwen2_vl_dir):
    import transformers

    (mm, _, ms, _), (rm, _, rs, _) = tiny
    config = json.loads((tiny_qwen2_vl_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl" and "text_config" not in config
    assert config["rope_scaling"] == {"type": "mrope", "mrope_section": [4, 6, 6]}
    assert {"embed_dim", "depth", "num_heads", "mlp_ratio", "in_chans", "hidden_size"} <= set(config["vision_config"])
    assert type(mm).__module__ == "mlx_vlm.models.qwen2_vl.qwen2_vl"
    assert isinstance(rm, transformers.Qwen2VLForConditionalGeneration)
    spec = load_spec(tiny_qwen2_vl_dir)
    assert spec.model_type == ms.model_type == rs.model_type == "qwen2_vl"
    assert spec.tokens_per_slot((448, 448)) == 256 and spec.position_axes == 3 and not spec.slot_time
    pre = json.loads((tiny_qwen2_vl_dir / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Qwen2VLImageProcessor" and pre["processor_class"] == "Qwen2VLProcessor"
    processor = transformers.AutoProcessor.from_pretrained(str(tiny_qwen2_vl_dir))
    assert type(processor).__name__ == "Qwen2VLProcessor"


def test_patchify_matches_transformers_video_processor(tiny_qwen2_vl_dir):
    import transformers

    spec = load_spec(tiny_qwen2_vl_dir)
    frames = frames_for(4)
    processor = transformers.AutoVideoProcessor.from_pretrained(str(tiny_qwen2_vl_dir))
    out = processor(videos=[torch.from_numpy(frames).permute(0, 3, 1, 2)], do_resize=False, return_tensors="np")
    ours, grid = qwen_patchify(frames, spec.image_mean, spec.image_std)
    assert list(out["video_grid_thw"][0]) == list(grid)
    np.testing.assert_allclose(np.asarray(out["pixel_values_videos"]), ours, atol=1e-5)


# ----- 2. MLX vs one mlx-vlm forward -----------------------------------------------------------
def test_mlx_blockwise_stream_equals_one_shot_forward(tiny):
    model, tok, spec, _ = tiny[0]
    frames = frames_for(16)  # 8 slots of a 4 x 6 grid: the time axis outruns the grid
    session, answer = stream(tiny[0], frames, "mlx", block_slots=2)  # 4 blocks
    ids, _, pixels, grid, positions = one_shot_inputs(tok, spec, frames, QUESTIONS[0])
    # mlx-vlm's own Qwen2-VL positions of the whole prompt are ours
    stock, _ = model.language_model.get_rope_index(mx.array([ids]), video_grid_thw=mx.array([grid]))
    np.testing.assert_array_equal(np.array(stock)[:, 0], positions)
    model.language_model._position_ids = model.language_model._rope_deltas = None
    out = model(mx.array([ids]), pixel_values=mx.array(pixels), video_grid_thw=mx.array([grid]))
    np.testing.assert_allclose(session.question_logits, np.array(out.logits[0, -1]), atol=TOL, rtol=0)
    # another schedule (one block) gives the same greedy answer
    assert stream(tiny[0], frames, "mlx", block_slots=8)[1] == answer


# ----- 3. the reference vs one transformers forward --------------------------------------------
def test_reference_blockwise_stream_equals_one_shot_forward(tiny):
    model, tok, spec, _ = tiny[1]
    frames = frames_for(12)  # 6 slots of a 4 x 6 grid
    session, answer = stream(tiny[1], frames, "reference", block_slots=2)  # 3 blocks
    ids, types, pixels, grid, positions = one_shot_inputs(tok, spec, frames, QUESTIONS[0])
    theirs, _ = model.model.get_rope_index(torch.tensor([ids]), torch.tensor([types]),
                                           video_grid_thw=torch.tensor([grid]))
    np.testing.assert_array_equal(theirs[:, 0].numpy(), positions)  # t = slot, text after at max + 1
    with torch.no_grad():  # transformers' own positions (no position_ids given)
        out = model(input_ids=torch.tensor([ids]), mm_token_type_ids=torch.tensor([types]),
                    pixel_values_videos=torch.from_numpy(pixels), video_grid_thw=torch.tensor([grid]),
                    use_cache=False)
    np.testing.assert_allclose(session.question_logits, out.logits[0, -1].numpy(), atol=TOL, rtol=0)
    assert stream(tiny[1], frames, "reference", block_slots=6)[1] == answer


def test_transformers_restarts_text_after_a_long_video(tiny):
    """With more slots than grid rows or columns transformers >= 5.3 puts the text after the
    video at start + max(h, w) / merge; we keep Qwen2-VL's original max + 1 (as mlx-vlm), like
    Qwen2.5-VL here (ALGORITHM.md section 10). The video tokens themselves agree; before 5.3
    the text continued from max + 1 as ours does."""
    import transformers
    from packaging.version import Version

    model, tok, spec, _ = tiny[1]
    ids, types, _, grid, ours = one_shot_inputs(tok, spec, frames_for(16), QUESTIONS[0])
    theirs, _ = model.model.get_rope_index(torch.tensor([ids]), torch.tensor([types]),
                                           video_grid_thw=torch.tensor([grid]))
    theirs, video = theirs[:, 0].numpy(), np.array(types) == 2
    np.testing.assert_array_equal(theirs[:, video], ours[:, video])
    restarts = Version(transformers.__version__) >= Version("5.3")
    assert ours[0, -1] - theirs[0, -1] == (8 - 6 if restarts else 0)  # 8 slots against 6 columns


# ----- 4. MLX vs the reference -----------------------------------------------------------------
def run_both(tiny, frames, **config):
    return run_pair(tiny, frames, QUESTIONS, MAX_TOKENS, FPS, **config)


@pytest.mark.parametrize("config", [dict(capacity=200, block_slots=2, reserve=48),
                                    dict(capacity=280, block_slots=2, reserve=48, van_pooling=True),
                                    dict(capacity=None, method="full", block_slots=3)],
                         ids=["infinipot_v-200", "van_pooling-280", "full"])
def test_backends_agree_at_every_compression(tiny, config):
    mlx, ref = run_both(tiny, frames_for(28 if config["capacity"] else 12, seed=2), **config)
    if config["capacity"]:
        assert len(mlx.kept_log) >= 3
    assert_parity(mlx, ref, TOL)


# ----- 5. the chat CLI -------------------------------------------------------------------------
def test_chat_cli_answers(tiny_qwen2_vl_dir, video_dir):
    from videos import write_video

    video = write_video(video_dir / "noise_qwen2_vl.mp4", frames_for(20, seed=5), fps=10.0)
    out = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(video), "--model", str(tiny_qwen2_vl_dir),
                          "-q", "What happened?", "--max-tokens", "6", "--fps", "10"],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "A: " in out.stdout


def one_shot_inputs(tokenizer, spec, frames: np.ndarray, question: str):
    """The whole prompt with Qwen2-VL's positions (t = the slot's index)."""
    return qwen_one_shot_inputs(tokenizer, spec, frames, question,
                                lambda start, gt, grid: mrope_slot_positions(start, 0, gt, grid))
