"""The chat CLI as a user runs it: a generated video, non-interactive and interactive, bad input."""

import os
import subprocess
import sys

import pytest

from videos import corrupt_video, moving_shapes_video, non_video_file, zero_frame_video


def run_chat(*args, stdin: str | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", *map(str, args)],
                          input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return moving_shapes_video(tmp_path_factory.mktemp("chat") / "shapes.mp4", n=60, fps=10.0)


def test_questions_non_interactive(video, tiny_qwen_dir):
    out = run_chat(video, "--model", tiny_qwen_dir, "--kv-budget", 200, "--reserve", 40,
                   "--block-slots", 2, "--fps", 4, "-q", "What moved?", "-q", "Where?",
                   "--max-tokens", 4)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Q: ") == 2 and out.stdout.count("A: ") == 2
    assert "streaming" in out.stderr and "cached" in out.stderr  # the progress bar


def test_interactive_stats_reset_quit(video, tiny_qwen_dir):
    out = run_chat(video, "--model", tiny_qwen_dir, "--kv-budget", 200, "--reserve", 40,
                   "--block-slots", 2, "--max-tokens", 3,
                   stdin="What moved?\n/stats\n\n/reset\n/stats\n/quit\n")
    assert out.returncode == 0, out.stderr
    stats = [line for line in out.stdout.splitlines() if "compressions" in line]
    assert len(stats) == 2
    assert "frames 0 |" in stats[1] and "frames 0 |" not in stats[0]
    assert "session reset" in out.stdout and "empty question" in out.stdout


@pytest.mark.parametrize("make, message", [
    (lambda d, v: d / "missing.mp4", "not found"),
    (lambda d, v: non_video_file(d / "notes.mp4"), "could not open"),
    (lambda d, v: zero_frame_video(d / "empty.mp4"), "could not open"),
    (lambda d, v: corrupt_video(d / "broken.mp4", v), "could not open"),
])
def test_bad_videos_exit_2(tmp_path, video, tiny_qwen_dir, make, message):
    out = run_chat(make(tmp_path, video), "--model", tiny_qwen_dir, "-q", "hi")
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.parametrize("args, message", [
    # explicitly impossible: 8 slots of 24 tokens (112x168) and one kept slot need 236 + the prompt
    (["--kv-budget", 300, "--block-slots", 8, "--max-pixels", 112 * 168],
     "cannot hold the prompt"),
    (["--kv-budget", 0], "--kv-budget must be a positive integer"),
    (["-q", "   "], "question is empty"),
    (["--fps", 0], "--fps must be positive"),
])
def test_bad_flags_exit_2(video, tiny_qwen_dir, args, message):
    args = ["--reserve", 200, *args] if args[0] == "--kv-budget" and args[1] else args
    out = run_chat(video, "--model", tiny_qwen_dir, *args, *([] if "-q" in args else ["-q", "hi"]))
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_wrong_model_paths_exit_2(video, tmp_path):
    missing = run_chat(video, "--model", tmp_path / "nowhere", "-q", "hi")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    no_config = run_chat(video, "--model", tmp_path, "-q", "hi")
    assert no_config.returncode == 2 and "no config.json" in no_config.stderr


def test_offline_default_model_says_how_to_pass_model(video):
    out = run_chat(video, "-q", "hi")
    assert out.returncode == 2
    assert "--model" in out.stderr and len(out.stderr.strip().splitlines()) == 1
