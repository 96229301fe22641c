"""The catalogue of bad input to `python -m infinipot_mlx.chat`: each case gets one line on
stderr that says what to do, exit code 2, no traceback and no crash. Bad flags are refused
before mlx, mlx-vlm or torch is imported. (The other CLIs' cases are in test_errors.py.)
"""

import os
import shutil
import subprocess
import sys

import pytest

from videos import moving_shapes_video, non_video_file

HEAVY = ("mlx", "mlx_vlm", "torch", "transformers", "cv2")


def run_chat(argv, env=None, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", *argv], capture_output=True,
                          timeout=300, env=env, cwd=cwd)  # bytes: a path may not be UTF-8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_qwen_dir):
    d = tmp_path_factory.mktemp("bad_input")
    video = moving_shapes_video(d / "clip.mp4", n=20)
    corrupt = shutil.copytree(tiny_qwen_dir, d / "corrupt_config")
    (corrupt / "config.json").write_text('{"model_type": "qwen2_5_vl", "vision_config": {')
    no_weights = shutil.copytree(tiny_qwen_dir, d / "no_weights")
    for f in no_weights.glob("*.safetensors*"):
        f.unlink()
    return dict(dir=str(d), video=str(video), model=str(tiny_qwen_dir), corrupt=str(corrupt),
                no_weights=str(no_weights), notes=str(non_video_file(d / "notes.mp4")))


def _missing_non_utf8(s):
    return [os.path.join(os.fsencode(s["dir"]), b"\xff\xfe missing.mp4"), "--model", s["model"], "-q", "hi"]


# (argv(setup), env, words the line must hold)
CASES = {
    "missing video": (lambda s: [s["dir"] + "/nowhere.mp4", "--model", s["model"], "-q", "hi"], {}, "not found"),
    "non-UTF-8 path of a missing file": (_missing_non_utf8, {}, "not found"),
    "a folder as video": (lambda s: [s["dir"], "--model", s["model"], "-q", "hi"], {}, "is not a file"),
    "a text file as video": (lambda s: [s["notes"], "--model", s["model"], "-q", "hi"], {}, "could not open"),
    "no camera": (lambda s: ["0", "--model", s["model"], "-q", "hi"], {}, "camera 0"),
    "corrupt config": (lambda s: [s["video"], "--model", s["corrupt"], "-q", "hi"], {}, "config.json is not valid JSON"),
    "missing weights": (lambda s: [s["video"], "--model", s["no_weights"], "-q", "hi"], {}, "no *.safetensors"),
    "missing model folder": (lambda s: [s["video"], "--model", s["dir"] + "/nope", "-q", "hi"], {}, "does not exist"),
    "unknown method": (lambda s: [s["video"], "--method", "h2o", "-q", "hi"], {}, "invalid choice: 'h2o'"),
    "question longer than the cap": (
        lambda s: [s["video"], "--model", s["model"], "--kv-budget", "300", "--reserve", "64",
                   "-q", "why " * 400], {}, "shorten the question"),
    "empty question": (lambda s: [s["video"], "-q", "  "], {}, "question is empty"),
    "max-pixels below one token": (lambda s: [s["video"], "--max-pixels", "500", "-q", "hi"], {}, "below one visual token"),
    "kv-budget below the reserve": (lambda s: [s["video"], "--model", s["model"], "--kv-budget", "300", "-q", "hi"],
                                    {}, "above the reserve"),
    "impossible explicit block": (
        lambda s: [s["video"], "--model", s["model"], "--kv-budget", "300", "--reserve", "200",
                   "--block-slots", "8", "--max-pixels", str(112 * 168), "-q", "hi"], {}, "tokens needed"),
    "negative fps": (lambda s: [s["video"], "--fps", "-1", "-q", "hi"], {}, "--fps must be positive"),
    "unknown flag": (lambda s: [s["video"], "--frobnicate"], {}, "unrecognized arguments"),
    "no video": (lambda s: ["-q", "hi"], {}, "give a video"),
    "memory budget misspelt": (lambda s: [s["video"], "--model", s["model"], "--memory", "6 parsecs", "-q", "hi"],
                               {}, "memory budget"),
    "kv bits other than 4 or 8": (lambda s: [s["video"], "--kv-bits", "3", "-q", "hi"], {},
                                  "invalid choice: 3 (choose from 4, 8)"),
    "kv group size that does not divide the head dim": (
        lambda s: [s["video"], "--model", s["model"], "--kv-bits", "4", "--kv-group-size", "64", "-q", "hi"], {},
        "does not divide this model's head dimension (32)"),
    "memory plan with a late quantization start": (
        lambda s: [s["video"], "--memory", "2GB", "--kv-bits", "4", "--quantized-kv-start", "100", "-q", "hi"], {},
        "drop --quantized-kv-start"),
    "a BLAS library that fails to load": (lambda s: [s["video"], "-q", "hi"],
                                          {"INFINIPOT_BLAS": "/nonexistent/libblas.so"}, "INFINIPOT_BLAS"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(setup, case):
    argv, env, words = CASES[case]
    out = run_chat(argv(setup), env)
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 2, (out.returncode, err[-3000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert words in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["clip.mp4", "--method", "h2o"], ["clip.mp4", "--max-pixels", "10", "-q", "hi"],
    ["clip.mp4", "--kv-budget", "0"], ["clip.mp4", "-q", ""], ["--fps", "0", "--demo"],
    ["clip.mp4", "--kv-bits", "2"], ["clip.mp4", "--kv-group-size", "48"],
])
def test_bad_flags_are_refused_before_heavy_imports(argv):
    code = ("import sys\nfrom infinipot_mlx.chat import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            f"print(rc, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert out.stdout.split(maxsplit=1) == ["2", "[]\n"], (out.stdout, out.stderr)
