"""Smoke tests of `bench stream` (tiny random Qwen2.5-VL) and `bench kv` (tiny KV shape); no timings."""

import json

from infinipot_mlx.bench.__main__ import build_parser
from infinipot_mlx.bench.stream import METHODS
from infinipot_mlx.bench.stream_report import POINT_FIELDS

ENVIRONMENT = ("blas", "threads", "machine", "versions", "date", "load_average_start",
               "load_average_end")


def test_bench_stream_writes_every_field_and_holds_the_cap(tmp_path, capsys):
    args = build_parser().parse_args(["stream", "--size", "tiny", "--out", str(tmp_path),
                                      "--points", "1", "4"])
    args.run(args)
    record = json.loads((tmp_path / "stream.json").read_text())
    assert set(record["methods"]) == set(METHODS)
    for key in ("size", "stream", "plan", "question", "summary", "plots", *ENVIRONMENT):
        assert key in record, key
    assert {"mlx", "mlx_vlm", "numpy", "python"} <= set(record["versions"])
    capacity = record["plan"]["capacity"]
    for method, result in record["methods"].items():
        assert len(result["points"]) == 2, method
        for point in result["points"]:
            assert set(POINT_FIELDS) <= set(point), (method, set(POINT_FIELDS) - set(point))
            assert point["answer_tokens"] == record["question"]["answer_tokens"]
            assert set(point["ms_per_frame"]) == {"vision", "prefill", "compress"}
    for point in record["methods"]["infinipot_v"]["points"]:
        assert point["tokens_cached"] <= capacity and point["max_tokens_cached"] <= capacity
    assert record["methods"]["infinipot_v"]["points"][-1]["compressions"] >= 1
    full = [p["tokens_cached"] for p in record["methods"]["full"]["points"]]
    assert full == sorted(full) and full[0] < full[-1]
    assert all((tmp_path / name).exists() for name in
               ("stream_memory.png", "stream_ms_per_frame.png", "stream_decode.png"))
    out = capsys.readouterr().out
    assert "relative to full KV" in out and "BLAS (MLX)" in out


def test_bench_kv_compresses_and_reports_full_kv(tmp_path, capsys):
    args = build_parser().parse_args([
        "kv", "--out", str(tmp_path), "--frames", "40", "--layers", "2", "--kv-heads", "2",
        "--head-dim", "8", "--tokens-per-frame", "4", "--block-frames", "2",
        "--capacity-frames", "4", "--prompt-tokens", "3", "--reserve", "4",
        "--full-limit-gb", "0.000002", "--points", "4", "--bank-tokens", "16"])
    args.run(args)
    record = json.loads((tmp_path / "kv.json").read_text())
    capacity = record["capacity"]["tokens"]
    assert record["points"][-1]["frames"] == 40
    assert all(p["tokens_cached"] <= capacity - record["capacity"]["reserve"] for p in record["points"])
    assert record["summary"]["compressions"] >= 1
    per_token = record["shape"]["bytes_per_token"]
    assert record["full_measured"][-1]["kv_bytes"] <= 2000  # --full-limit-gb 0.000002
    assert record["full_measured"][-1]["frames"] < 40  # stopped at the byte limit
    assert record["summary"]["full_kv_bytes_end_analytic"] == (3 + 40 * 4) * per_token
    assert (tmp_path / "kv_memory.png").exists() and "analytic" in capsys.readouterr().out
