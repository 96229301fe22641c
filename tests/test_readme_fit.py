"""The README's small-budget example runs as written: frames shrink until a block and one
kept slot fit, so the flags it names stream a 1080p video (and answer)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import videos

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_small_budget_example_streams_1080p(tmp_path, tiny_qwen_published_dir):
    example = re.search(r"for\s+example `(--kv-budget [^`]+)` still streams 1080p", README)
    assert example, "the README's small-budget example moved"
    video = videos.sized_video(tmp_path / "1080p.mp4", 1920, 1080, n=20, fps=10.0)
    out = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(video), "--model",
                          str(tiny_qwen_published_dir), *example.group(1).split(), "--max-tokens", "2",
                          "-q", "What moved?"], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1"))
    assert out.returncode == 0, out.stderr
    assert re.search(r"^A: ", out.stdout, flags=re.M), out.stdout
