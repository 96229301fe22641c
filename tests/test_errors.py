"""Bad input is one line on stderr and exit code 2, no traceback; a bug keeps its traceback.

Each breach is checked by running the real command in a subprocess (HF_HUB_OFFLINE=1) on a
broken copy of the tiny checkpoint: a truncated config.json, a config without a required key,
a folder without its *.safetensors weights, bad benchmark flags, an INFINIPOT_BLAS that
cannot be loaded. A few in-process checks pin the classes and the bug path.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infinipot_mlx.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONVERT = ROOT / "conversions" / "convert.py"
BAD_BLAS = "/nonexistent/lib.so"


def run(*argv, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """python *argv from the repository root, offline, with INFINIPOT_BLAS unset unless given."""
    base = {k: v for k, v in os.environ.items() if k != "INFINIPOT_BLAS"}
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**base, "HF_HUB_OFFLINE": "1", **(env or {})})


def one_line_error(done: subprocess.CompletedProcess, *words: str) -> str:
    """Assert exit 2, one non-empty stderr line `error: ...` holding every word, no traceback."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def commands(model: Path, video: Path, out: Path) -> dict:
    """The three CLIs that open a checkpoint, pointed at `model`."""
    return {
        "chat": ["-m", "infinipot_mlx.chat", video, "--model", model, "-q", "hi"],
        "parity": ["-m", "infinipot_mlx.parity", "--model", model, "--video", video],
        "convert": [CONVERT, "--hf-path", model, "--mlx-path", out],
    }


@pytest.fixture(scope="module")
def broken(tiny_qwen_dir, tmp_path_factory) -> dict:
    """Copies of the tiny Qwen checkpoint, each broken one way."""
    root = tmp_path_factory.mktemp("broken")
    folders = {name: Path(shutil.copytree(tiny_qwen_dir, root / name))
               for name in ("truncated", "no_key", "no_weights")}
    (folders["truncated"] / "config.json").write_text('{"model_type": "qwen2_5_vl",')
    config = json.loads((tiny_qwen_dir / "config.json").read_text())
    del config["vision_config"]
    (folders["no_key"] / "config.json").write_text(json.dumps(config))
    for weights in folders["no_weights"].glob("*.safetensors"):
        weights.unlink()
    return folders


# ----- 1. a corrupt or incomplete config.json names the file ---------------------------------
@pytest.mark.parametrize("cli", ["chat", "parity", "convert"])
def test_truncated_config_names_the_file(cli, broken, moving_shapes_mp4, tmp_path):
    model = broken["truncated"]
    done = run(*commands(model, moving_shapes_mp4, tmp_path / "out")[cli])
    one_line_error(done, f"{model / 'config.json'} is not valid JSON (line 1 column", "re-download")


@pytest.mark.parametrize("cli", ["chat", "parity", "convert"])
def test_config_without_a_key_names_the_file_and_the_key(cli, broken, moving_shapes_mp4, tmp_path):
    model = broken["no_key"]
    done = run(*commands(model, moving_shapes_mp4, tmp_path / "out")[cli])
    one_line_error(done, str(model / "config.json"), "'vision_config'")


def test_read_json_and_load_spec_raise_user_errors(tmp_path):
    from infinipot_mlx.contract.model_path import ModelPathError
    from infinipot_mlx.contract.specs import CheckpointConfigError, load_spec, read_json

    assert issubclass(CheckpointConfigError, UserError) and issubclass(ModelPathError, UserError)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointConfigError, match="JSON list, not an object"):
        load_spec(tmp_path)
    with pytest.raises(CheckpointConfigError, match="cannot read .*nope.json"):
        read_json(tmp_path / "nope.json")


# ----- 2. no weights: checked before mlx_vlm / transformers load -------------------------------
@pytest.mark.parametrize("cli", ["chat", "parity", "convert"])
def test_missing_safetensors_is_one_line(cli, broken, moving_shapes_mp4, tmp_path):
    model = broken["no_weights"]
    done = run(*commands(model, moving_shapes_mp4, tmp_path / "out")[cli])
    one_line_error(done, f"no *.safetensors weights in {model};")


def test_reference_load_model_checks_weights_and_device(broken, tiny_qwen_dir):
    import torch

    from infinipot_mlx.reference.backend import load_model

    with pytest.raises(UserError, match="no \\*.safetensors or pytorch_model\\*.bin weights"):
        load_model(str(broken["no_weights"]), device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="cuda"):
            load_model(str(tiny_qwen_dir), device="cuda")


def test_an_index_naming_a_missing_shard_is_an_incomplete_download(tiny_qwen_dir, tmp_path):
    from infinipot_mlx.contract.model_path import ModelPathError, require_weights

    folder = Path(shutil.copytree(tiny_qwen_dir, tmp_path / "sharded"))
    index = {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelPathError, match="model-00002-of-00002.safetensors.*download the checkpoint again"):
        require_weights(folder)
    (folder / "model.safetensors.index.json").unlink()
    require_weights(folder)  # the whole checkpoint passes


# ----- 3. convert.py ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--hf-path", "/nonexistent/model", "--mlx-path", "OUT"], ["does not exist"]),
    (["--hf-path", "/nonexistent/model"], ["--mlx-path", "--help"]),  # argparse: one line too
    (["--hf-path", "DIR", "--mlx-path", "OUT", "--dtype", "int3"], ["--dtype", "invalid choice"]),
])
def test_convert_bad_input_is_one_line(argv, words, tiny_qwen_dir, tmp_path):
    argv = [{"DIR": tiny_qwen_dir, "OUT": tmp_path / "out"}.get(a, a) for a in argv]
    one_line_error(run(CONVERT, *argv), *words)


# ----- 4. benchmarks and parity flags ------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["accuracy", "--methods", "nonsense"], ["--methods", "nonsense", "infinipot_v"]),
    (["stream", "--methods", "zz"], ["invalid choice", "bench stream --help"]),  # argparse
    (["stream", "--model-type", "llama"], ["--model-type", "invalid choice", "qwen3_vl"]),
])
def test_bench_bad_flags_are_one_line(argv, words):
    one_line_error(run("-m", "infinipot_mlx.bench", *argv), *words)


@pytest.mark.parametrize("argv, words", [
    (["accuracy", "--budgets", "half"], ["--budgets", "'half'"]),
    (["accuracy", "--budgets", "0.5,0"], ["--budgets", "(0, 1]"]),
    (["accuracy", "--splits", "test,nope"], ["--splits", "nope", "pan"]),
    (["accuracy", "--n", "0"], ["--n must be positive"]),
    (["select", "--frames", "4", "--keep-frames", "8"], ["--keep-frames", "--frames"]),
    (["stream", "--points", "2", "0"], ["--points must be positive"]),
    (["kv", "--capacity-frames", "1", "--block-slots", "8"], ["--capacity-frames"]),
    (["kv", "--reserve", "-1"], ["--reserve must be zero or more"]),
    (["nonsense"], ["invalid choice", "--help"]),
])
def test_bench_flags_are_checked_before_any_work(argv, words, capsys, tmp_path):
    """In-process (the bench imports in ~6 s): main returns 2, argparse exits 2; one line each."""
    from infinipot_mlx.cli.bench import main

    try:
        code = main([*argv, "--out", str(tmp_path)] if argv[0] != "nonsense" else argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    one_line_error(subprocess.CompletedProcess(argv, code, "", err), *words)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("argv, words", [
    (["--method", "zz"], ["--method", "invalid choice", "parity --help"]),
    (["--kv-budget", "100"], ["capacity", "reserve"]),
    (["--max-tokens", "0"], ["must be positive"]),
])
def test_parity_bad_flags_are_one_line(argv, words, tiny_qwen_dir, moving_shapes_mp4):
    done = run("-m", "infinipot_mlx.parity", "--model", tiny_qwen_dir, "--video", moving_shapes_mp4, *argv)
    one_line_error(done, *words)


# ----- 5. an INFINIPOT_BLAS that cannot be loaded ------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["-m", "infinipot_mlx.bench", "select", "--repeats", "1"],
    ["-m", "infinipot_mlx.parity", "--model", "MODEL", "--video", "VIDEO"],
    [CONVERT, "--hf-path", "MODEL", "--mlx-path", "OUT"],
], ids=["bench", "parity", "convert"])
def test_bad_blas_path_fails_the_clis_with_one_line(argv, tiny_qwen_dir, moving_shapes_mp4, tmp_path):
    names = {"MODEL": tiny_qwen_dir, "VIDEO": moving_shapes_mp4, "OUT": tmp_path / "out"}
    done = run(*[names.get(a, a) for a in argv], env={"INFINIPOT_BLAS": BAD_BLAS})
    one_line_error(done, f"INFINIPOT_BLAS={BAD_BLAS}", "no such file", "unset INFINIPOT_BLAS")


LIBRARY_USE = textwrap.dedent("""
    import sys, warnings
    import infinipot_mlx
    from infinipot_mlx import _blas
    from infinipot_mlx.errors import UserError
    from infinipot_mlx.mlx.backend import load_model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            try:
                load_model(sys.argv[1])  # a folder without weights: fails right after the warning
            except UserError:
                pass
    print(len(caught), [str(w.message) for w in caught if w.category is RuntimeWarning])
    try:
        _blas.check_blas()
        print("check_blas: ok")
    except UserError as err:
        print("check_blas:", err)
""")


def _torch_exit_warning() -> list[str]:
    """torch < 2.7 leaves a TemporaryDirectory to the interpreter's exit when imported
    (torch/distributed/nn/jit/instantiator.py; pytorch#147744, fixed in 2.7 by #147813), and
    mlx-vlm imports transformers, which imports torch where it is installed. That one
    upstream warning is let through on those versions; on torch >= 2.7 nothing is."""
    try:
        from importlib.metadata import version
        major, minor = (int(p) for p in version("torch").split(".")[:2])
    except Exception:  # no torch: nothing to let through
        return []
    return ["-W", "ignore:Implicitly cleaning up:ResourceWarning"] if (major, minor) < (2, 7) else []


TORCH_EXIT_WARNING = _torch_exit_warning()


def test_library_users_get_one_warning_and_off_stays_silent(broken):
    done = run("-c", LIBRARY_USE, broken["no_weights"], env={"INFINIPOT_BLAS": BAD_BLAS})
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    assert done.stdout.startswith("1 [") and f"INFINIPOT_BLAS={BAD_BLAS}" in done.stdout  # once only
    assert "check_blas: INFINIPOT_BLAS=" in done.stdout
    off = run("-W", "error", *TORCH_EXIT_WARNING, "-c", LIBRARY_USE, broken["no_weights"],
              env={"INFINIPOT_BLAS": "off"})
    assert off.returncode == 0 and not off.stderr.strip(), off.stderr
    assert off.stdout.splitlines() == ["0 []", "check_blas: ok"]


# ----- 6. only UserError is one line: a bug keeps its traceback -------------------------------------
def test_parity_main_lets_a_bug_through(monkeypatch, tiny_qwen_dir, moving_shapes_mp4):
    from infinipot_mlx.cli import parity

    def bug(args):
        raise ValueError("an internal bug")

    monkeypatch.setattr(parity, "run", bug)
    with pytest.raises(ValueError, match="internal bug"):
        parity.main(["--model", str(tiny_qwen_dir), "--video", str(moving_shapes_mp4)])


def test_bench_main_lets_a_bug_through(monkeypatch, tmp_path):
    from infinipot_mlx.cli import bench as bench
    from infinipot_mlx.bench import select

    def bug(args):
        raise ValueError("an internal bug")

    monkeypatch.setattr(select, "run", bug)
    with pytest.raises(ValueError, match="internal bug"):
        bench.main(["select", "--out", str(tmp_path)])
