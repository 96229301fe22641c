"""Smoke test of `python -m infinipot_mlx.bench select` at a tiny size (no timing assertions)."""

import json

from infinipot_mlx.cli.bench import build_parser


def test_bench_select_writes_json(tmp_path, capsys):
    args = build_parser().parse_args([
        "select", "--out", str(tmp_path), "--repeats", "1", "--layers", "4", "--heads", "2",
        "--dim", "8", "--frames", "4", "--keep-frames", "3", "--grid", "2", "2"])
    args.run(args)
    record = json.loads((tmp_path / "select.json").read_text())
    assert record["shape"]["candidates"] == 16 and record["shape"]["keep"] == 12
    assert {r["config"] for r in record["results"]} == {"infinipot_v", "infinipot_v+pool"}
    for r in record["results"]:
        for backend in ("mlx_ms", "torch_ms"):
            assert 0 < r[backend]["min"] <= r[backend]["median"]
        assert r["torch_over_mlx"] > 0
    assert record["blas"] and record["threads"]["os_cpu_count"] >= 1
    assert {"mlx", "torch", "numpy", "python"} <= set(record["versions"])
    assert "torch/mlx" in capsys.readouterr().out
