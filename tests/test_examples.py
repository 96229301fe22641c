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
