"""Tier 4: the MLX session vs the PyTorch reference session on the tiny float32 Qwen2.5-VL.

ALGORITHM.md section 9: the same kept (frame, patch) set per layer and head at every
compression, logits within 1e-4 and the same greedy tokens, over several compressions and
two turns with frames in between. Also: the reference stream equals one transformers
forward of the whole prompt, transformers' mask over our cache, the reference without
mlx, and the parity and chat CLIs as subprocesses.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: E402  (a dev dependency: a missing torch must fail, not skip)

from infinipot_mlx import InfiniPotConfig  # noqa: E402
from infinipot_mlx.stream.session import StreamSession
from infinipot_mlx.cli.parity import Trace, compare, run_session, split_frames  # noqa: E402
from infinipot_mlx.contract.positions import mrope_video_positions
from parity_checks import assert_parity, qwen_one_shot_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FPS, TOL, MAX_TOKENS = 2.0, 1e-4, 20
QUESTIONS = ["What moved in the video?", "And after that?"]
T = 24  # 112 x 168 frames: 4 x 6 merged tokens per slot (a non-square grid)


def frames_for(n: int, seed: int = 0) -> np.ndarray:
    """n random RGB frames (n, 112, 168, 3) uint8 (no ties between scores)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 168, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tiny_qwen_dir):
    """(MLX (model, tokenizer, spec, path), reference (model, tokenizer, spec, path))."""
    from infinipot_mlx.mlx import backend as mlx_session
    from infinipot_mlx.reference import backend as ref_session

    return mlx_session.load_model(str(tiny_qwen_dir)), ref_session.load_model(str(tiny_qwen_dir), device="cpu")


def sessions(tiny, **config):
    cfg = InfiniPotConfig(**config)
    (mm, mt, ms, _), (rm, rt, rs, _) = tiny
    return (StreamSession(mm, mt, ms, cfg, "mlx", fps=FPS, record_kept=True),
            StreamSession(rm, rt, rs, cfg, "reference", fps=FPS, record_kept=True))


def run_both(tiny, frames, **config) -> tuple[Trace, Trace]:
    mlx, ref = sessions(tiny, **config)
    chunks = split_frames(frames, len(QUESTIONS), mlx.config.block_slots * 2)
    return (run_session(mlx, chunks, QUESTIONS, MAX_TOKENS),
            run_session(ref, chunks, QUESTIONS, MAX_TOKENS))


METHODS = {
    "infinipot_v": {},
    "tar_only": dict(tar_ratio=1.0),
    "van_only": dict(tar_ratio=0.0),
    "van_pooling": dict(van_pooling=True),
    "uniform": dict(method="uniform"),
    "sliding_window": dict(method="sliding_window"),
}


# every method, and two capacities among them: 200 (K = 75, then 29 per head) and 280 (K = 109);
# each run compresses 4-5 times, before blocks and before a question
CASES = [("infinipot_v", 200), ("infinipot_v", 280), ("tar_only", 200), ("van_only", 280),
         ("van_pooling", 200), ("van_pooling", 280), ("uniform", 200), ("sliding_window", 280)]


@pytest.mark.parametrize("method,capacity", CASES)
def test_backends_agree_at_every_compression(tiny, method, capacity):
    mlx, ref = run_both(tiny, frames_for(28), capacity=capacity, block_slots=2, reserve=48, **METHODS[method])
    assert len(mlx.kept_log) >= 3  # several compressions, one of them before a question
    assert mlx.frames_before == [12, 28]  # two turns, frames streamed in between
    assert_parity(mlx, ref)


# a quantized cache (mlx-lm's affine layout, groups of 32 = the tiny head dim): the reference
# stores the same bytes (reference/quant.py matches MLX's CPU quantize bit for bit), so the kept
# sets are identical; attention differs only in how it reads them (MLX: quantized matmuls,
# the reference: dequantize, then attention), which QUANTIZED_TOL allows (measured here: 1.4e-6 at
# 8 bits, 3.1e-7 at 4, 3.9e-7 unquantized)
QUANTIZED_TOL = 1e-4


@pytest.fixture()
def mlx_on_cpu():
    """MLX on its CPU device for the test: reference/quant.py matches MLX's CPU quantize bit for
    bit; Apple's GPU kernel rounds ties away from zero and starts its max at 0 (docs/ALGORITHM.md),
    so on a Mac's GPU the stored bytes may differ at the edges. On Linux MLX runs on the CPU."""
    import mlx.core as mx

    device = mx.default_device()
    mx.set_default_device(mx.cpu)
    yield
    mx.set_default_device(device)


@pytest.mark.parametrize("bits", [4, 8])
def test_backends_agree_on_a_quantized_cache(tiny, bits, mlx_on_cpu):
    mlx, ref = run_both(tiny, frames_for(28), capacity=200, block_slots=2, reserve=48,
                        kv_bits=bits, kv_group_size=32)
    assert len(mlx.kept_log) >= 3
    assert_parity(mlx, ref, tol=QUANTIZED_TOL)


def test_backends_agree_without_compression(tiny):
    mlx, ref = run_both(tiny, frames_for(12, seed=1), capacity=None, method="full", block_slots=3)
    assert mlx.kept_log == [] and ref.kept_log == []
    assert_parity(mlx, ref)


def test_parity_report_flags_a_difference():
    kept = [[np.array([[[0, 1], [1, 2]]])]]
    logits = [np.zeros(4, np.float32)]
    a = Trace(kept_log=kept, question_logits=logits, tokens=[[1, 2]], step_logits=[np.zeros((2, 4))],
              frames_before=[4])
    b = Trace(kept_log=[[np.array([[[0, 1], [1, 3]]])]], question_logits=[logits[0] + 2e-4],
              tokens=[[1, 3]], step_logits=[np.zeros((2, 4))], frames_before=[4])
    assert compare(a, a).ok
    report = compare(a, b)
    assert not report.ok and report.compressions[0]["differ"] == ["L0H0:1"]
    assert report.questions[0]["agree"] == 1 and report.questions[0]["logit_diff"] > TOL
    assert compare(a, b, dtype="float16").ok  # half precision reports, fails only on structure


# ----- the reference alone ------------------------------------------------------------------
def test_reference_blockwise_stream_equals_one_shot_forward(tiny):
    model, tok, spec, _ = tiny[1]
    frames = frames_for(12)
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=100_000, block_slots=2), "reference", fps=FPS)
    session.add_frames(frames)  # 3 blocks, no compression
    answer = "".join(session.ask(QUESTIONS[0], max_tokens=6))
    ids, types, pixels, grid, positions = one_shot_inputs(tok, spec, frames, QUESTIONS[0])
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), mm_token_type_ids=torch.tensor([types]),
                    pixel_values_videos=torch.from_numpy(pixels), video_grid_thw=torch.tensor([grid]),
                    position_ids=torch.from_numpy(positions[:, None, :]), use_cache=False)
    np.testing.assert_allclose(session.question_logits, out.logits[0, -1].numpy(), atol=TOL, rtol=0)

    fresh = StreamSession(model, tok, spec, InfiniPotConfig(capacity=100_000, block_slots=6), "reference", fps=FPS)
    fresh.add_frames(frames)  # one block: another schedule, the same answer
    assert "".join(fresh.ask(QUESTIONS[0], max_tokens=6)) == answer


def test_transformers_own_positions_differ_after_the_video(tiny):
    """Why positions are passed explicitly: transformers >= 5.3 restarts text after a video
    at start + max(h, w) / merge, not at max(positions) + 1 (ALGORITHM.md section 6)."""
    import transformers
    from packaging.version import Version

    model, tok, spec, _ = tiny[1]
    ids, types, _, grid, ours = one_shot_inputs(tok, spec, frames_for(8), QUESTIONS[0])
    theirs, _ = model.model.get_rope_index(torch.tensor([ids]), video_grid_thw=torch.tensor([grid]),
                                           second_per_grid_ts=torch.tensor([2 / FPS]),
                                           mm_token_type_ids=torch.tensor([types]))
    theirs, video = theirs[:, 0].numpy(), np.array(types) == 2  # (3, L), (L,)
    np.testing.assert_array_equal(theirs[:, video], ours[:, video])  # absolute time on t
    after = int(np.argmax(video)) + int(video.sum())  # first text token after the video
    assert ours[0, after] == ours[:, video].max() + 1
    if Version(transformers.__version__) >= Version("5.3"):
        assert theirs[0, after] < ours[0, after]


def test_transformers_mask_over_compressed_cache(tiny):
    """After compressions (n_cached != next_position) new tokens see every slot, causally."""
    from transformers.masking_utils import create_causal_mask

    _, ref = sessions(tiny, capacity=200, block_slots=2, reserve=48)
    ref.add_frames(frames_for(12))
    assert ref.counters.compressions >= 1
    config, embeds = ref.adapter.lm.config, torch.zeros(1, 5, 128)
    assert config._attn_implementation == "sdpa"
    mask = create_causal_mask(config, embeds, None, ref.cache, allow_is_causal_skip=False)  # (1, 1, 5, n + 5)
    n = ref.cache.n_cached
    assert mask.shape == (1, 1, 5, n + 5) and mask[0, 0, :, :n].all()
    np.testing.assert_array_equal(mask[0, 0, :, n:].numpy(), np.tril(np.ones((5, 5), bool)))
    assert create_causal_mask(config, embeds[:, :1], None, ref.cache) is None  # decode: no mask


def test_reference_load_errors(tmp_path, tiny_qwen_dir):
    from infinipot_mlx.reference.backend import load, resolve_device, resolve_dtype

    with pytest.raises(ValueError, match="does not exist"):
        load(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float64")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            load(str(tiny_qwen_dir), device="cuda")
    quantized = tmp_path / "mlx4bit"
    quantized.mkdir()
    text = (tiny_qwen_dir / "config.json").read_text()
    (quantized / "config.json").write_text(text[:-2] + ', "quantization": {"group_size": 64, "bits": 4}}')
    with pytest.raises(ValueError, match="MLX-quantized"):
        load(str(quantized))


def test_reference_imports_without_mlx():
    code = ("import sys\n"
            "for m in ('mlx', 'mlx.core', 'mlx_vlm', 'mlx_lm'): sys.modules[m] = None\n"
            "import infinipot_mlx.reference.backend, infinipot_mlx.reference.adapters.qwen2_5_vl\n"
            "assert not [m for m, v in sys.modules.items() if m.startswith('mlx') and v is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)


# ----- the CLIs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noise_mp4(video_dir) -> Path:
    """30 frames of random noise, 112x168, 10 fps: textured everywhere, so no near-tied scores
    (flat regions, as in moving_shapes' grey background, can swap twin tokens in float32)."""
    from videos import write_video

    return write_video(video_dir / "noise.mp4", frames_for(30, seed=5), fps=10.0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_parity_cli_passes_on_a_matching_run(tiny_qwen_dir, noise_mp4):
    out = run_cli("infinipot_mlx.parity", "--model", str(tiny_qwen_dir), "--video", str(noise_mp4),
                  "--kv-budget", "200", "--reserve", "48", "--fps", "10", "--method", "infinipot_v")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS" in out.stdout and " NO" not in out.stdout
    assert out.stdout.count("20/20 same") == 2  # two turns, 20 greedy tokens each


def test_chat_reference_backend_matches_mlx(tiny, tiny_qwen_dir, noise_mp4):
    """--backend reference streams with progress and answers as the MLX session does."""
    from infinipot_mlx.video.source import VideoSource

    out = run_cli("infinipot_mlx.chat", str(noise_mp4), "--model", str(tiny_qwen_dir),
                  "--backend", "reference", "--device", "cpu", "--dtype", "float32", "--kv-budget", "200",
                  "--reserve", "48", "--block-slots", "2", "--fps", "10", "-q", QUESTIONS[0], "--max-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert "streaming" in out.stderr
    model, tok, spec, _ = tiny[0]
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=200, block_slots=2, reserve=48), fps=10.0)
    frames, _ = VideoSource(noise_mp4, fps=10.0, min_pixels=spec.min_pixels,
                            max_pixels=spec.max_pixels, factor=spec.pixels_per_token).read()
    session.add_frames(frames)
    answer = "".join(session.ask(QUESTIONS[0], max_tokens=8))
    assert session.counters.compressions >= 2
    assert f"A: {answer}\n" in out.stdout


def one_shot_inputs(tokenizer, spec, frames: np.ndarray, question: str):
    """The whole prompt with Qwen2.5-VL's positions (time from the fps)."""
    return qwen_one_shot_inputs(tokenizer, spec, frames, question, lambda start, gt, grid: mrope_video_positions(
        start, 0, gt, grid, 2 / FPS, spec.tokens_per_second))
