"""Shared fixtures. Importing infinipot_mlx first loads the optimized BLAS before mlx.

Every session in the tests, in-process or in a CLI subprocess, asserts the cap invariant
n_cached <= capacity after every forward (INFINIPOT_CHECK_CAP, StreamSession.check_cap).
"""

import os

os.environ["INFINIPOT_CHECK_CAP"] = "1"

import infinipot_mlx  # noqa: E402,F401  (must precede any mlx import)

import importlib.util  # noqa: E402
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tiny_builder():
    """conversions/make_tiny_checkpoint.py's build_tiny_checkpoint (conversions/ is no package)."""
    path = ROOT / "conversions" / "make_tiny_checkpoint.py"
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_tiny_checkpoint


@pytest.fixture(scope="session")
def build_tiny():
    """build_tiny(model_type, out_dir, dtype="float32", seed=0) -> Path (torch + transformers)."""
    return _tiny_builder()


@pytest.fixture(scope="session")
def tiny_qwen_dir(build_tiny, tmp_path_factory) -> Path:
    """Tiny random Qwen2.5-VL in the Qwen/Qwen2.5-VL-7B-Instruct layout, float32, seed 0."""
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny_qwen"), "float32", 0)


@pytest.fixture(scope="session")
def tiny_qwen_published_dir(build_tiny, tmp_path_factory) -> Path:
    """The tiny Qwen2.5-VL (seed 0) with the published checkpoint's pixel limits: image
    max_pixels 12,845,056 and the video processor's 128 .. 768 tokens per frame."""
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny_qwen_published"), "float32", 0, "published")


@pytest.fixture(scope="session")
def tiny_qwen_bf16_dir(build_tiny, tmp_path_factory) -> Path:
    """The same tiny Qwen2.5-VL (seed 0) saved in bfloat16."""
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny_qwen_bf16"), "bfloat16", 0)


@pytest.fixture(scope="session")
def tiny_qwen2_vl_dir(build_tiny, tmp_path_factory) -> Path:
    """Tiny random Qwen2-VL in the Qwen/Qwen2-VL-7B-Instruct layout, float32, seed 0."""
    return build_tiny("qwen2_vl", tmp_path_factory.mktemp("tiny_qwen2_vl"), "float32", 0)


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(build_tiny, tmp_path_factory) -> Path:
    """Tiny random Qwen3-VL in the Qwen/Qwen3-VL-8B-Instruct layout, float32, seed 0."""
    return build_tiny("qwen3_vl", tmp_path_factory.mktemp("tiny_qwen3_vl"), "float32", 0)


@pytest.fixture(scope="session")
def tiny_llava_dir(build_tiny, tmp_path_factory) -> Path:
    """Tiny random LLaVA-OneVision in the llava-hf layout, float32, seed 0."""
    return build_tiny("llava_onevision", tmp_path_factory.mktemp("tiny_llava"), "float32", 0)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> Path:
    """A session folder for generated test videos."""
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def moving_shapes_mp4(video_dir) -> Path:
    """30 frames of moving shapes, 112x168 (multiples of 28), 10 fps, mp4v: 3.0 s."""
    from videos import moving_shapes_video

    return moving_shapes_video(video_dir / "moving_shapes.mp4", n=30, fps=10.0)


@pytest.fixture(scope="session")
def static_events_mp4(video_dir) -> Path:
    """40 frames of a static 112x112 scene with short events at frames 10 and 25, 4 fps: 10 s."""
    from videos import static_events_video

    return static_events_video(video_dir / "static_events.mp4", n=40, fps=4.0)
