"""conversions/convert.py on the tiny checkpoints: float32 exact, q8/q4 report figures, bad input exits 2."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "conversions" / "convert.py"
FIXTURES = {"qwen2_5_vl": "tiny_qwen_dir", "llava_onevision": "tiny_llava_dir"}
METRICS = re.compile(r"max \|logit difference\| (\S+), top-1 agreement (\S+)%, mean KL (\S+) over")


@pytest.fixture(scope="module")
def convert():
    """The script as a module (conversions/ is no package), run in-process to import once."""
    spec = importlib.util.spec_from_file_location("convert", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_convert(convert, capsys, *argv) -> tuple[int, str, dict | None]:
    """(exit code, printed text, the verification figures it printed)."""
    code = convert.main([str(a) for a in argv])
    printed = capsys.readouterr()
    found = METRICS.search(printed.out)
    metrics = None
    if found:
        metrics = dict(max_abs=float(found[1]), top1=float(found[2]) / 100, kl=float(found[3]))
    return code, printed.out + printed.err, metrics


@pytest.mark.parametrize("model_type", FIXTURES)
def test_float32_conversion_is_exact_and_opens_in_transformers(model_type, request, convert,
                                                                capsys, tmp_path):
    from transformers import AutoImageProcessor, AutoTokenizer

    source, out = request.getfixturevalue(FIXTURES[model_type]), tmp_path / "mlx"
    code, text, metrics = run_convert(convert, capsys, "--hf-path", source, "--mlx-path", out)
    assert code == 0, text
    assert metrics["max_abs"] <= 1e-4 and metrics["top1"] == 1.0, text
    assert re.search(r"\d+\.\d MB -> \d+\.\d MB on disk", text)
    # mlx-vlm's processor_config.json is replaced by the source's, which transformers opens
    assert (out / "processor_config.json").read_bytes() == (source / "processor_config.json").read_bytes()
    assert AutoImageProcessor.from_pretrained(str(out)).image_mean is not None
    assert len(AutoTokenizer.from_pretrained(str(out))) == len(AutoTokenizer.from_pretrained(str(source)))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("model_type", FIXTURES)
def test_quantized_conversion_reports_agreement(model_type, bits, request, convert, capsys, tmp_path):
    source, out = request.getfixturevalue(FIXTURES[model_type]), tmp_path / "mlx"
    code, text, metrics = run_convert(convert, capsys, "--hf-path", source, "--mlx-path", out,
                                      "-q", "--q-bits", bits)
    assert code == 0, text
    assert all(math.isfinite(v) for v in metrics.values()), text
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["kl"] >= -1e-9
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == bits
    assert convert.folder_bytes(out) < convert.folder_bytes(source)


def test_a_tampered_conversion_fails_the_float32_check(convert, capsys, tiny_qwen_dir, tmp_path):
    import mlx.core as mx

    out = tmp_path / "mlx"
    code, text, _ = run_convert(convert, capsys, "--hf-path", tiny_qwen_dir, "--mlx-path", out,
                                "--no-verify")
    assert code == 0 and "verification" not in text
    weights = mx.load(str(out / "model.safetensors"))
    key = next(k for k in weights if k.endswith("lm_head.weight"))
    weights[key] = weights[key] * 1.01
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = json.loads((tiny_qwen_dir / "config.json").read_text())
    metrics = convert.verify(tiny_qwen_dir, out, config)
    assert metrics["max_abs_diff"] > 1e-4
    assert "more than 0.0001" in convert.float32_mismatch(metrics, out)
    assert convert.float32_mismatch({"max_abs_diff": float("nan")}, out)


def run_script(*argv, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def bad_sources(tmp_path, tiny_qwen_dir) -> dict:
    (tmp_path / "empty").mkdir()
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    return {
        "missing folder": (["--hf-path", tmp_path / "nope", "--mlx-path", tmp_path / "o"], "does not exist"),
        "no config": (["--hf-path", tmp_path / "empty", "--mlx-path", tmp_path / "o"], "no config.json"),
        "unsupported": (["--hf-path", tmp_path / "llama", "--mlx-path", tmp_path / "o"], "'llama' model"),
        "output not empty": (["--hf-path", tiny_qwen_dir, "--mlx-path", tmp_path / "full"], "not an empty"),
        "offline repo": (["--hf-path", "someone/not-a-model", "--mlx-path", tmp_path / "o"], "hub"),
        "q-bits without -q": (["--hf-path", tiny_qwen_dir, "--mlx-path", tmp_path / "o",
                               "--q-bits", "8"], "need -q"),
    }


@pytest.mark.parametrize("case", ["missing folder", "no config", "unsupported", "output not empty",
                                  "offline repo", "q-bits without -q"])
def test_bad_input_exits_2_with_one_line(case, bad_sources):
    argv, message = bad_sources[case]
    done = run_script(*argv, env={"HF_HUB_OFFLINE": "1"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
