"""Tier 4: MLX vs the PyTorch reference on the tiny float32 LLaVA-OneVision (ALGORITHM.md section 9).

The same kept (frame, patch) set per layer and head at every compression, logits within
1e-4 at every question and answer step, the same 20 greedy tokens, over two turns with
frames in between; under the `compact` policy (this model's default, keys re-rotated at
every compression) and under `absolute`. Also the parity and chat CLIs on a video file.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import torch  # noqa: E402  (a dev dependency: a missing torch must fail, not skip)

from infinipot_mlx import InfiniPotConfig  # noqa: E402
from infinipot_mlx.stream.session import StreamSession
from infinipot_mlx.cli.parity import Trace, run_session, split_frames  # noqa: E402
from parity_checks import assert_parity  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL, MAX_TOKENS = 1e-4, 20
QUESTIONS = ["What moved in the video?", "And after that?"]


def frames_for(n: int, seed: int = 0) -> np.ndarray:
    """n random RGB frames (n, 98, 98, 3) uint8 (no ties between scores)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 98, 98, 3), dtype=np.uint8)


def load_both(folder):
    from infinipot_mlx.mlx import backend as mlx_session
    from infinipot_mlx.reference import backend as ref_session

    return mlx_session.load_model(str(folder)), ref_session.load_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def tiny(tiny_llava_dir):
    return load_both(tiny_llava_dir)


@pytest.fixture(scope="module")
def short(tiny_llava_dir, tmp_path_factory):
    """The same weights with max_position_embeddings = 300: a stream of ~550 positions makes
    `compact` renumber (and re-rotate every kept key) about twice, in both backends."""
    path = tmp_path_factory.mktemp("llava300") / "model"
    shutil.copytree(tiny_llava_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 300
    (path / "config.json").write_text(json.dumps(config))
    return load_both(path)


def run_both(tiny, frames, **config) -> tuple[Trace, Trace]:
    cfg = InfiniPotConfig(**config)
    (mm, mt, ms, _), (rm, rt, rs, _) = tiny
    mlx = StreamSession(mm, mt, ms, cfg, "mlx", record_kept=True)
    ref = StreamSession(rm, rt, rs, cfg, "reference", record_kept=True)
    chunks = split_frames(frames, len(QUESTIONS), cfg.block_slots)
    return run_session(mlx, chunks, QUESTIONS, MAX_TOKENS), run_session(ref, chunks, QUESTIONS, MAX_TOKENS)


# 16 tokens per frame, blocks of 2 frames, reserve 48: capacity 200 keeps 93 visual tokens per
# head in the first turn and 47 in the second (9 compressions); 240 keeps 133, then 87 (7)
CASES = [("compact", 200, {}), ("compact", 240, {}), ("absolute", 200, {}),
         ("compact", 240, dict(van_pooling=True)), ("compact", 200, dict(method="uniform"))]


@pytest.mark.parametrize("policy,capacity,extra", CASES)
def test_backends_agree_at_every_compression(tiny, short, policy, capacity, extra):
    models = short if policy == "compact" else tiny
    mlx, ref = run_both(models, frames_for(24), capacity=capacity, block_slots=2, reserve=48,
                        position_policy=policy, **extra)
    assert len(mlx.kept_log) >= 4  # several compressions, one of them before a question
    assert mlx.frames_before == [12, 24]  # two turns, frames streamed in between
    assert all(len(tokens) == MAX_TOKENS for tokens in mlx.tokens)  # 20 greedy steps compared
    assert_parity(mlx, ref)


def test_backends_agree_without_compression(tiny):
    mlx, ref = run_both(tiny, frames_for(8, seed=1), capacity=None, method="full", block_slots=2)
    assert mlx.kept_log == [] and ref.kept_log == []
    assert_parity(mlx, ref)


def test_compact_and_absolute_differ_after_a_compression(tiny, short):
    """`compact` renumbers only when the range runs out (not before the first question, ~250
    positions in), and the re-rotation is not a no-op: it changes the second answer's logits."""
    compact, _ = run_both(short, frames_for(24), capacity=200, block_slots=2, reserve=48)
    absolute, _ = run_both(tiny, frames_for(24), capacity=200, block_slots=2, reserve=48,
                           position_policy="absolute")
    np.testing.assert_array_equal(compact.question_logits[0], absolute.question_logits[0])  # not yet
    assert np.abs(compact.question_logits[1] - absolute.question_logits[1]).max() > 1e-3  # renumbered


# ----- the CLIs -------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_parity_cli_passes_on_llava(tiny_llava_dir, moving_shapes_mp4):
    out = run_cli("infinipot_mlx.parity", "--model", str(tiny_llava_dir), "--video", str(moving_shapes_mp4),
                  "--kv-budget", "200", "--reserve", "48", "--fps", "10", "--block-slots", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "30 frames of 98x98" in out.stdout and "PASS" in out.stdout and " NO" not in out.stdout
    assert out.stdout.count("20/20 same") == 2  # two turns, 20 greedy tokens each


def test_chat_cli_on_llava(tiny, tiny_llava_dir, moving_shapes_mp4):
    """The model type comes from config.json; frames are resized to the vision size (98x98)."""
    from infinipot_mlx.stream.session import StreamSession
    from infinipot_mlx.video.source import VideoSource

    out = run_cli("infinipot_mlx.chat", str(moving_shapes_mp4), "--model", str(tiny_llava_dir),
                  "--kv-budget", "200", "--reserve", "48", "--block-slots", "2", "--fps", "10",
                  "-q", QUESTIONS[0], "--max-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert "streaming" in out.stderr
    model, tok, spec, _ = tiny[0]
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=200, block_slots=2, reserve=48), fps=10.0)
    frames, _ = VideoSource(moving_shapes_mp4, fps=10.0, size=spec.frame_size).read()
    session.add_frames(frames)
    answer = "".join(session.ask(QUESTIONS[0], max_tokens=8))
    assert session.counters.compressions >= 2 and session.policy == "compact"
    assert f"A: {answer}\n" in out.stdout
