"""What the process-level benches (vs_mlx_vlm.py, startup.py) run on: the tiny checkpoint in
the published layout, synthetic videos, and the environment of their child processes."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from ..errors import UserError

ROOT = Path(__file__).resolve().parents[2]  # the checkout whose code is measured (conversions/)


def child_env() -> dict:
    """This environment, with the checkout first on PYTHONPATH and the hub offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"  # a tiny local checkpoint: never a download
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def tiny_checkpoint(out: Path) -> Path:
    """out/tiny_qwen2_5_vl, built once by conversions/make_tiny_checkpoint.py (published limits)."""
    folder = out / "tiny_qwen2_5_vl"
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    script = ROOT / "conversions" / "make_tiny_checkpoint.py"
    if not script.is_file():
        raise UserError(f"no {script} to build the tiny checkpoint; give --model DIR")
    cmd = [sys.executable, str(script), "qwen2_5_vl", str(folder), "--processor", "published", "--force"]
    print("building the tiny checkpoint:", shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"building the tiny checkpoint failed ({last}); give --model DIR")
    return folder


def synthetic_video(folder: Path, n: int, fps: float, side: int) -> Path:
    """A cached mp4v video of n frames of moving squares (random_model.moving_frames) at fps."""
    import cv2

    from .random_model import moving_frames

    path = folder / f"squares_{n}f_{fps:g}fps_{side}px.mp4"
    if path.is_file() and path.stat().st_size > 0:
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (side, side))
    if not writer.isOpened():
        raise UserError(f"this OpenCV build cannot write mp4v to {tmp}")
    for start in range(0, n, 256):
        for frame in moving_frames(start, min(256, n - start), side):
            writer.write(frame[:, :, ::-1].copy())  # RGB -> BGR
    writer.release()
    tmp.replace(path)
    return path
