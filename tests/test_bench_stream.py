"""Smoke test of `bench stream` on a tiny random Qwen2.5-VL; no timing assertions."""

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
