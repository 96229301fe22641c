"""Smoke test of `python -m infinipot_mlx.bench select` at a tiny size (no timing assertions)."""

import json

import pytest

from infinipot_mlx.cli.bench import build_parser


def test_bench_select_writes_json(tmp_path, capsys):
    args = build_parser().parse_args([
        "select", "--out", str(tmp_path), "--repeats", "1", "--layers", "4", "--heads", "2",
        "--dim", "8", "--slots", "4", "--keep-slots", "3", "--grid", "2", "2"])
    args.run(args)
    record = json.loads((tmp_path / "select.json").read_text())
    assert record["shape"]["candidates"] == 16 and record["shape"]["keep"] == 12
    assert record["shape"]["kv_bytes"] == 4 * 2 * 2 * (100 + 16) * 8 * 4  # layers, K+V, H, rows, D, fp32
    assert {r["config"] for r in record["results"]} == {"infinipot_v", "infinipot_v+pool"}
    assert set(record["copy_ms"]) == {"mlx", "torch", "numpy"}
    for r in record["results"]:
        for backend in ("mlx_ms", "torch_ms"):
            assert 0 < r[backend]["min"] <= r[backend]["median"]
        assert r["bound_ms_median"] == min(c["median"] for c in record["copy_ms"].values())
        assert r["mlx_over_bound"] == pytest.approx(r["mlx_ms_median"] / r["bound_ms_median"])
        assert r["mlx_over_torch"] == pytest.approx(r["mlx_ms_median"] / r["torch_ms_median"])
    assert record["blas"] and record["threads"]["os_cpu_count"] >= 1
    assert {"mlx", "torch", "numpy", "python"} <= set(record["versions"])
    assert "mlx/bound" in capsys.readouterr().out


def test_bench_select_refuses_keeping_everything(capsys):
    from infinipot_mlx.cli.bench import main

    assert main(["select", "--slots", "4", "--keep-slots", "4"]) == 2
    assert "--keep-slots (4) must be below --slots (4)" in capsys.readouterr().err
