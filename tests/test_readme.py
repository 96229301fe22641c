"""The README runs as written: every code block that can run offline is executed here.

The blocks are read from README.md itself (not copied), with only the placeholders a user
fills in replaced: the checkpoint folder and the video file. The set-up commands (install
and demo, install and tests) are what .ci/run runs.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import videos

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def block_after(heading: str, lang: str, nth: int = 0) -> str:
    """The nth ```lang block after the line that starts with `heading`."""
    start = README.index(heading)
    blocks = re.findall(rf"```{lang}\n(.*?)```", README[start:], flags=re.S)
    return blocks[nth]


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1")
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env, **kwargs)


def test_python_api_snippet_runs(tmp_path, tiny_qwen_published_dir):
    video = videos.sized_video(tmp_path / "video.mp4", 1280, 720, n=60, fps=10.0)
    code = block_after("## Python API", "python")
    assert "path/to/Qwen2.5-VL-7B-Instruct-4bit" in code and '"video.mp4"' in code
    code = code.replace("path/to/Qwen2.5-VL-7B-Instruct-4bit", str(tiny_qwen_published_dir))
    code = code.replace('"video.mp4"', repr(str(video)))
    out = run([sys.executable, "-c", code], cwd=tmp_path)  # the snippet saves video.mem where it runs
    assert out.returncode == 0, out.stderr[-3000:]
    assert "frames_seen" in out.stdout and "(4, 6144)" in out.stdout and "Moment(slot=" in out.stdout


def test_transcript_runs_as_shown(tmp_path):
    text = block_after("A transcript with the tiny random checkpoint", "text")
    commands = [line[2:] for line in text.splitlines() if line.startswith("$ ")]
    typed = [line[2:] for line in text.splitlines() if line.startswith("> ")]
    assert len(commands) == 2 and typed[-1] == "/quit"
    clip = videos.sized_video(tmp_path / "clip.mp4", 1280, 720, n=600, fps=30.0)  # 20 s, not a minute
    folder = tmp_path / "tiny-qwen"

    def argv(command: str) -> list[str]:
        words = [str(folder) if w == "/tmp/tiny-qwen" else str(clip) if w == "clip.mp4" else w
                 for w in shlex.split(command)]
        return [sys.executable if w == "python" else w for w in words]

    made = run(argv(commands[0]))
    assert made.returncode == 0 and "wrote qwen2_5_vl" in made.stdout, made.stderr
    out = run(argv(commands[1]), input="\n".join(typed) + "\n")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("Ask about the video.") and out.stdout.count("> ") == len(typed)
    assert re.search(r"frames 40 \| cached \d+ tok .* / capacity 6144 \| peak \d+", out.stdout)


def test_parity_command_runs_on_a_wide_clip(tmp_path, tiny_qwen_dir):
    """The README's parity command on a 640x272 clip (the size that the old fit refused)."""
    command = block_after("## Checking MLX against the PyTorch reference", "bash").strip()
    clip = videos.sized_video(tmp_path / "clip.mp4", 640, 272, n=80, fps=10.0)
    words = [str(tiny_qwen_dir) if w == "path/to/hf-checkpoint" else str(clip) if w == "clip.mp4" else w
             for w in shlex.split(command)]
    out = run([sys.executable if w == "python" else w for w in words])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "PASS" in out.stdout


@pytest.mark.parametrize("heading", ["Install and run the main job", "Run the tests"])
def test_ci_runs_the_readme_setup_commands(heading):
    """.ci/run runs both set-up commands exactly as the README writes them."""
    command = block_after(heading, "bash").strip()
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert command in ci
