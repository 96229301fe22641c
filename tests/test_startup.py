"""Start-up: every command line answers --help and bad input before mlx, mlx-vlm, torch or
transformers is imported (a fraction of a second instead of ~6 s). Exit codes and stderr
are checked; times are measured by `python -m infinipot_mlx.bench startup`, never asserted."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("mlx", "mlx_vlm", "torch", "transformers")

# Runs `python -m MODULE ARGS...` in this process and reports its exit code and the heavy
# packages in sys.modules afterwards, on the last line of stdout.
PROBE = textwrap.dedent(f"""
    import json, runpy, sys
    sys.argv = sys.argv[1:]
    try:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = 0 if stop.code is None else stop.code
    print("PROBE " + json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))
""")


def probe(module: str, *argv) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, stderr) of `python -m module argv` in a fresh process."""
    done = subprocess.run([sys.executable, "-c", PROBE, module, *map(str, argv)], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert last.startswith("PROBE "), (done.stdout[-2000:], done.stderr[-2000:])
    code, heavy = json.loads(last[len("PROBE "):])
    return code, heavy, done.stderr


HELP = [
    ("infinipot_mlx.chat", []),
    ("infinipot_mlx.parity", []),
    ("infinipot_mlx.bench", []),
    ("infinipot_mlx.bench", ["kv"]),
    ("infinipot_mlx.bench", ["accuracy"]),
    ("infinipot_mlx.bench", ["startup"]),
    ("infinipot_mlx.server", []),
    ("infinipot_mlx.library", []),
    ("infinipot_mlx.library", ["index"]),
]


@pytest.mark.parametrize("module, before", HELP, ids=[" ".join([m.split(".")[-1], *b]) for m, b in HELP])
def test_help_imports_no_array_library(module, before):
    code, heavy, stderr = probe(module, *before, "--help")
    assert code == 0, stderr
    assert heavy == [], f"--help imported {heavy}"


BAD = [  # (module, argv): argparse errors, then each command's own checks
    ("infinipot_mlx.chat", ["v.mp4", "--no-such-flag"]),
    ("infinipot_mlx.chat", ["v.mp4", "--method", "nonsense"]),
    ("infinipot_mlx.chat", []),  # no video
    ("infinipot_mlx.chat", ["v.mp4", "--fps", "0"]),
    ("infinipot_mlx.chat", ["--demo", "--kv-budget", "0"]),
    ("infinipot_mlx.chat", ["v.mp4", "--model", "/nonexistent/model"]),
    ("infinipot_mlx.chat", ["--load", "/nonexistent/video.mem"]),
    ("infinipot_mlx.parity", ["--no-such-flag"]),
    ("infinipot_mlx.parity", ["--model", "m", "--video", "v.mp4", "--max-tokens", "0"]),
    ("infinipot_mlx.bench", ["no-such-subcommand"]),
    ("infinipot_mlx.bench", ["kv", "--no-such-flag"]),
    ("infinipot_mlx.bench", ["kv", "--reserve", "-1"]),
    ("infinipot_mlx.bench", ["stream", "--model-type", "llama"]),
    ("infinipot_mlx.bench", ["accuracy", "--n", "0"]),
    ("infinipot_mlx.bench", ["startup", "--repeats", "0"]),
    ("infinipot_mlx.server", ["--no-such-flag"]),
    ("infinipot_mlx.server", ["--port", "0"]),
    ("infinipot_mlx.server", ["--max-body-bytes", "lots"]),
    ("infinipot_mlx.library", ["--no-such-flag"]),
    ("infinipot_mlx.library", ["ask", " "]),
    ("infinipot_mlx.library", ["index", "/nonexistent/folder"]),
]


@pytest.mark.parametrize("module, argv", BAD, ids=[" ".join([m.split(".")[-1], *a]) for m, a in BAD])
def test_bad_input_is_one_line_before_any_array_library(module, argv, tmp_path):
    code, heavy, stderr = probe(module, *argv)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert heavy == [], f"{argv} imported {heavy} before refusing: {lines}"


def test_a_missing_video_is_found_before_the_model_loads(tiny_qwen_dir, tmp_path):
    code, heavy, stderr = probe("infinipot_mlx.chat", tmp_path / "missing.mp4", "--model", tiny_qwen_dir)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert heavy == [], heavy


def test_package_import_is_light_and_preloads_blas():
    """`import infinipot_mlx` loads the BLAS (when there is one) and no array library."""
    script = ("import sys, infinipot_mlx; from infinipot_mlx import _blas; "
              f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), _blas.loaded_blas)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "INFINIPOT_BLAS"})
    assert done.returncode == 0, done.stderr
    heavy, loaded = done.stdout.strip().split(" ", 1)
    assert heavy == "[]"
    from infinipot_mlx._blas import CANDIDATES

    if sys.platform.startswith("linux") and any(os.path.exists(path) for path in CANDIDATES):
        assert loaded in CANDIDATES  # preloaded by __init__, before any mlx import


def test_public_api_stays_importable():
    import infinipot_mlx
    import infinipot_mlx.reference
    from infinipot_mlx import InfiniPotConfig, StreamSession, VideoSource, load, select_tokens

    assert callable(load) and callable(select_tokens) and callable(infinipot_mlx.reference.select_tokens)
    assert {"load", "StreamSession", "VideoSource", "select_tokens"} <= set(dir(infinipot_mlx))
    assert InfiniPotConfig and StreamSession and VideoSource


def test_chat_default_models_are_the_backends():
    """chat finds the default checkpoints in model_path.py (no mlx-vlm or torch import), the
    same ones the backends' load() opens."""
    from infinipot_mlx.contract.model_path import DEFAULT_MODELS
    from infinipot_mlx.mlx.backend import DEFAULT_MODEL as MLX_DEFAULT
    from infinipot_mlx.reference.backend import DEFAULT_MODEL as REFERENCE_DEFAULT

    assert DEFAULT_MODELS == {"mlx": MLX_DEFAULT, "reference": REFERENCE_DEFAULT}


def test_bench_builds_every_sub_parser_on_request():
    """Tests and tools can still ask for every subcommand's flags at once."""
    from infinipot_mlx.bench import SUBCOMMANDS
    from infinipot_mlx.cli.bench import build_parser

    parser = build_parser(fill_all=True)
    subparsers = next(a for a in parser._actions if a.dest == "subcommand")
    assert set(subparsers.choices) == set(SUBCOMMANDS)
    assert not subparsers.modules  # all imported and filled
    assert build_parser().parse_args(["kv", "--reserve", "3"]).reserve == 3


def test_importtime_lines_are_parsed():
    from infinipot_mlx.bench.startup import import_summary, parse_imports

    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:        50 |         50 |     mlx.core\n"
              "import time:       100 |        150 |   mlx\n"
              "\rstreaming:   0%| 0/4 [00:00<?, ?frame/s, cached 23/2048 tok]import time:"
              "      2000 |       3000 | infinipot_mlx.cli.chat\n")
    rows = parse_imports(stderr)
    assert [(r["name"], r["depth"]) for r in rows] == [("mlx.core", 2), ("mlx", 1), ("infinipot_mlx.cli.chat", 0)]
    summary = import_summary(rows, top=2)
    assert summary["import_s"] == 0.003 and summary["heavy"] == ["mlx"]
    assert [r["name"] for r in summary["top"]] == ["infinipot_mlx.cli.chat", "mlx"]


def test_bench_startup_smoke(tmp_path, capsys):
    """The startup bench without chat runs: every case measured once, startup.json written."""
    from infinipot_mlx.cli.bench import build_parser

    args = build_parser().parse_args(["startup", "--repeats", "1", "--chat-runs", "0", "--out", str(tmp_path)])
    record = args.run(args)
    saved = json.loads((tmp_path / "startup.json").read_text())
    assert saved["cases"] and saved["environment"]["blas"]
    by_case = {(row["command"], row["case"]): row for row in record["cases"]}
    assert by_case[("chat", "--help")]["exit_codes"] == [0]
    assert by_case[("chat", "bad flag")]["exit_codes"] == [2]
    assert "chat --help" in saved["importtime"] and "first_block" not in saved
    assert "--help" in capsys.readouterr().out
