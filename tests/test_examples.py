"""Every script in examples/ runs, on a tiny checkpoint and a generated video."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import videos

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1")
    out = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return videos.sized_video(tmp_path_factory.mktemp("examples") / "clip.mp4", 1280, 720, n=120, fps=10.0)


def test_every_example_has_a_test():
    tested = {"stream_and_ask.py", "memory_budget.py", "select_step.py", "parity_one_video.py",
              "save_and_reload.py", "live_questions.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_stream_and_ask(tiny_qwen_published_dir, clip):
    out = run_example("stream_and_ask.py", tiny_qwen_published_dir, clip, "What moved?")
    assert "streamed 24 frames" in out and out.count("Q: ") == 1 and "A: " in out


def test_memory_budget(tiny_qwen_dir):
    out = run_example("memory_budget.py", tiny_qwen_dir, "1GB")
    assert "capacity" in out and "InfiniPotConfig(capacity=" in out


@pytest.mark.parametrize("folder", ["tiny_qwen_dir", "tiny_qwen_bf16_dir"])
def test_memory_budget_and_chat_memory_count_the_kv_bytes_the_cache_holds(folder, request, tmp_path):
    """The example (files only) and `chat --memory` (the loaded model) state the same KV bytes
    per token, and they are what the session's cache holds per token (its actual dtype)."""
    import re

    import numpy as np

    from infinipot_mlx import InfiniPotConfig
    from infinipot_mlx.contract.budget import format_bytes
    from infinipot_mlx.mlx.backend import load_model
    from infinipot_mlx.stream.session import StreamSession

    model_dir = request.getfixturevalue(folder)
    per_token = re.compile(r"\| KV ([\d.]+ [KMG]?B)/token \|")
    example = per_token.search(run_example("memory_budget.py", model_dir, "1GB")).group(1)
    video = videos.moving_shapes_video(tmp_path / "clip.mp4", n=8)
    chat = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(video), "--model", str(model_dir),
                           "--memory", "400MB", "--max-tokens", "2", "-q", "What moved?"], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert chat.returncode == 0, chat.stderr[-3000:]
    model, tok, spec, _ = load_model(str(model_dir))
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=None, method="full"))
    session.add_frames(np.zeros((2, 112, 112, 3), np.uint8))
    held = format_bytes(session.cache.nbytes / session.cache.n_cached)
    assert example == per_token.search(chat.stdout).group(1) == held, (example, chat.stdout, held)


def test_select_step():
    out = run_example("select_step.py")
    assert "kept 1536 of 2048 tokens per head; MLX and reference agree: True" in out


def test_parity_one_video(tiny_qwen_dir, clip):
    out = run_example("parity_one_video.py", tiny_qwen_dir, clip)
    assert "same kept (frame, patch) sets: True" in out
    assert float(out.rsplit("max logit difference ", 1)[1]) < 1e-4


def test_save_and_reload(tiny_qwen_published_dir, clip, tmp_path):
    memory = tmp_path / "clip.mem"
    out = run_example("save_and_reload.py", tiny_qwen_published_dir, clip, memory)
    assert f"saved 12 slots of {clip} to {memory}" in out and memory.is_file()
    assert "\nA: " in out and "\nevidence: 00:" in out


def test_live_questions(tiny_qwen_published_dir, tmp_path):
    clip = videos.sized_video(tmp_path / "live.mp4", 640, 360, n=60, fps=10.0)  # 6 s, played in real time
    out = run_example("live_questions.py", tiny_qwen_published_dir, clip, "What now?", "And now?")
    asked = [line for line in out.splitlines() if line.startswith("[")]
    assert len(asked) == 2 and all("Q: " in line for line in asked)
    first_in = int(asked[0][1:].split()[0])
    assert first_in < 12 and "streamed 12 frames" in out  # asked mid-stream; every frame got in
