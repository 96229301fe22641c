"""conversions/convert.py on the tiny checkpoints: float32 exact, q8/q4 report figures, bad input exits 2."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "conversions" / "convert.py"
FIXTURES = {"qwen2_5_vl": "tiny_qwen_dir", "qwen2_vl": "tiny_qwen2_vl_dir", "qwen3_vl": "tiny_qwen3_vl_dir",
            "llava_onevision": "tiny_llava_dir"}
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


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_a_tampered_conversion_fails_the_float32_check(model_type, request, convert, capsys, tmp_path):
    import mlx.core as mx

    out, source = tmp_path / "mlx", request.getfixturevalue(FIXTURES[model_type])
    code, text, _ = run_convert(convert, capsys, "--hf-path", source, "--mlx-path", out,
                                "--no-verify")
    assert code == 0 and "verification" not in text
    weights = mx.load(str(out / "model.safetensors"))
    key = next(k for k in weights if k.endswith("lm_head.weight"))
    weights[key] = weights[key] * 1.01
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = json.loads((source / "config.json").read_text())
    metrics = convert.verify(source, out, config)
    assert metrics["max_abs_diff"] > 1e-4
    assert "more than 0.0001" in convert.float32_mismatch(metrics, out)
    assert convert.float32_mismatch({"max_abs_diff": float("nan")}, out)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"])
def test_verification_prompt_has_the_models_own_positions(model_type, request, convert):
    """The check's prompt (qwen_inputs, laid out from the ModelSpec) gets from transformers'
    get_rope_index the positions it passes to both frameworks: slot time (Qwen2.5-VL), slot
    index (Qwen2-VL), each slot within its timestamp text (Qwen3-VL)."""
    import torch
    import transformers

    from infinipot_mlx.contract.specs import MODEL_TYPES

    source = request.getfixturevalue(FIXTURES[model_type])
    config = json.loads((source / "config.json").read_text())
    inputs = convert.qwen_inputs(source, config)
    ids = torch.tensor([inputs["ids"]])
    n_video = int((ids == config["video_token_id"]).sum())
    gt, gh, gw = inputs["grid"]
    assert n_video == gt * gh * gw // config["vision_config"]["spatial_merge_size"] ** 2 == 12
    stamps = re.findall(r"<[0-9.]+ seconds>", transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(source / "tokenizer.json")).decode(inputs["ids"]))
    # frames 0, 1 and 2, 3 at 2 fps, stamped as Qwen3VLProcessor does (positions.qwen3_timestamp_text)
    assert stamps == (["<0.2 seconds>", "<1.2 seconds>"] if model_type == "qwen3_vl" else [])
    model = getattr(transformers, MODEL_TYPES[model_type].hf_class).from_pretrained(str(source))
    extra = {"second_per_grid_ts": torch.tensor([2 / convert.FPS])} if model_type == "qwen2_5_vl" else {}
    theirs, _ = model.model.get_rope_index(ids, (ids == config["video_token_id"]).int() * 2,
                                           video_grid_thw=torch.tensor([inputs["grid"]]), **extra)
    np.testing.assert_array_equal(theirs[:, 0].numpy(), inputs["positions"])


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
