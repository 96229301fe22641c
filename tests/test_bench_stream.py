"""Smoke tests of `bench stream` (tiny random Qwen2.5-VL, and --model-type) and `bench kv` (tiny KV
shape); no timings."""

import json

import pytest

from infinipot_mlx.cli.bench import build_parser
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


@pytest.mark.parametrize("model_type, side", [("qwen2_vl", 112), ("qwen3_vl", 128), ("llava_onevision", 112)])
def test_bench_stream_model_type(model_type, side, tmp_path):
    """--model-type builds that model at the tiny preset (same 4 x 4 token grid per slot), streams
    to 4x the visual capacity under the cap (Qwen3-VL's slot text counted in it) and beside
    mlx-vlm's rotating cache, and records the type."""
    args = build_parser().parse_args(["stream", "--size", "tiny", "--model-type", model_type,
                                      "--out", str(tmp_path), "--points", "1", "4", "--no-plots",
                                      "--methods", "infinipot_v", "mlx_vlm_rotating"])
    args.run(args)
    record = json.loads((tmp_path / "stream.json").read_text())
    assert record["model_type"] == model_type
    assert record["stream"]["frame_size"] == side and record["plan"]["T"] == 16
    assert (record["plan"]["slot_text_tokens"] > 0) == (model_type == "qwen3_vl")
    capacity = record["plan"]["capacity"]
    points = record["methods"]["infinipot_v"]["points"]
    assert [p["x_capacity"] for p in points] == [1.0, 4.0]
    assert all(p["max_tokens_cached"] <= capacity for p in points) and points[-1]["compressions"] >= 1
    assert len(record["methods"]["mlx_vlm_rotating"]["points"]) == 2


def test_bench_stream_default_model_type_is_qwen2_5_vl():
    args = build_parser().parse_args(["stream"])
    assert args.model_type == "qwen2_5_vl"


def test_bench_kv_compresses_and_reports_full_kv(tmp_path, capsys):
    args = build_parser().parse_args([
        "kv", "--out", str(tmp_path), "--slots", "40", "--layers", "2", "--kv-heads", "2",
        "--head-dim", "8", "--tokens-per-slot", "4", "--block-slots", "2",
        "--capacity-slots", "4", "--prompt-tokens", "3", "--reserve", "4",
        "--full-limit-gb", "0.000002", "--points", "4", "--bank-tokens", "16"])
    args.run(args)
    record = json.loads((tmp_path / "kv.json").read_text())
    capacity = record["capacity"]["tokens"]
    assert record["points"][-1]["slots"] == 40
    assert all(p["tokens_cached"] <= capacity - record["capacity"]["reserve"] for p in record["points"])
    assert record["summary"]["compressions"] >= 1
    per_token = record["shape"]["bytes_per_token"]
    assert record["full_measured"][-1]["kv_bytes"] <= 2000  # --full-limit-gb 0.000002
    assert record["full_measured"][-1]["slots"] < 40  # stopped at the byte limit
    assert record["summary"]["full_kv_bytes_end_analytic"] == (3 + 40 * 4) * per_token
    out = capsys.readouterr().out
    assert (tmp_path / "kv_memory.png").exists() and "analytic" in out
    summary = next(line for line in out.splitlines() if line.startswith("peak "))
    ratio = record["summary"]["full_over_peak"]  # tiny full KV: the peak is the larger here
    assert ratio < 1 and summary.endswith(f"at the end: {1 / ratio:.1f}x more"), summary  # not "0x less"


def test_bench_kv_streams_each_width_at_the_same_cap_and_the_memory_files_shrink(tmp_path, capsys):
    args = build_parser().parse_args([
        "kv", "--out", str(tmp_path), "--slots", "24", "--layers", "2", "--kv-heads", "2",
        "--head-dim", "64", "--tokens-per-slot", "4", "--block-slots", "2", "--dtype", "bfloat16",
        "--capacity-slots", "6", "--prompt-tokens", "3", "--reserve", "4", "--points", "2",
        "--bank-tokens", "16", "--kv-bits", "16,8,4"])
    args.run(args)
    by_bits = json.loads((tmp_path / "kv.json").read_text())["by_bits"]
    held = {bits: b["tokens_held"] for bits, b in by_bits.items()}
    assert len(set(held.values())) == 1 and all(b["summary"]["compressions"] >= 1 for b in by_bits.values())
    kv = {bits: b["points"][-1]["kv_bytes"] for bits, b in by_bits.items()}
    tokens, per_element = held["16"] * 2 * 2 * 2 * 64, {"16": 2, "8": 1 + 4 / 64, "4": 0.5 + 4 / 64}
    assert kv == {bits: tokens * per_element[bits] for bits in kv}  # K and V x layers x heads x dims
    files = {bits: b["memory_file_bytes"] for bits, b in by_bits.items()}
    assert all(kv[bits] < files[bits] < kv[bits] + 4096 for bits in files)  # the rows, labels and a header
    assert "memory file" in capsys.readouterr().out


def test_the_kv_summary_says_how_many_times_less_or_more():
    from infinipot_mlx.bench.kv import times_fewer

    assert [times_fewer(r) for r in (77.4, 3.26, 1.0, 0.4, 0.04)] == [
        "77x less", "3.3x less", "1.0x less", "2.5x more", "25x more"]


def test_mlx_vlm_caches_run_through_our_adapter():
    """Under the cap RotatingKVCache equals our cache; 8-bit KV is close but not equal."""
    import mlx.core as mx
    import numpy as np

    from infinipot_mlx.mlx.adapters import adapter_class
    from infinipot_mlx.bench import random_model, vlm_caches
    from infinipot_mlx.mlx.cache import StreamCache

    model, tokenizer, spec, _ = random_model.build_model(random_model.SIZES["tiny"])
    adapter = adapter_class("qwen2_5_vl")(model, tokenizer, spec)
    embeds = mx.random.normal((1, 12, 128), key=mx.random.key(1))  # (1, L, E)
    caches = {"ours": StreamCache(2), "rotating": vlm_caches.rotating(64)(2),
              "quant8": vlm_caches.quantized(8)(2)}
    logits = {}
    for name, cache in caches.items():
        for start in (0, 8):  # two prefills: 8 tokens, then 4 (masks from each cache)
            stop = 8 if start == 0 else 12
            positions = np.tile(np.arange(start, stop), (3, 1))  # (3, L)
            out = adapter.forward(embeds[:, start:stop], positions, cache)
        logits[name] = np.array(out[0, -1])
        assert cache.n_cached == 12
    np.testing.assert_allclose(logits["rotating"], logits["ours"], atol=1e-5)
    assert not np.array_equal(logits["quant8"], logits["ours"])
    np.testing.assert_allclose(logits["quant8"], logits["ours"], atol=0.05)
    small = vlm_caches.rotating(6)(2)  # past its size it keeps 6 - 1 + L tokens after a prefill
    adapter.forward(embeds[:, :8], np.tile(np.arange(8), (3, 1)), small)
    adapter.forward(embeds[:, 8:], np.tile(np.arange(8, 12), (3, 1)), small)
    assert small.n_cached == 6 - 1 + 4
