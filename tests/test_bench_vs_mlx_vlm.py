"""`bench vs-mlx-vlm` for real, small: the tiny published-layout checkpoint the bench builds,
56 x 56 frames, 0.1 and 0.2 minute videos, every side in its own process. No timing asserted."""

import json

from infinipot_mlx.bench.vs_mlx_vlm import RUN_FIELDS, SIDES
from infinipot_mlx.cli.bench import build_parser, main

SMALL = ["--minutes", "0.1", "0.2", "--frame-size", "56", "--max-tokens", "2"]


def bench(*argv: str) -> dict:
    args = build_parser().parse_args(["vs-mlx-vlm", *argv])
    assert args.run(args) == 0
    return json.loads((args.out / "vs_mlx_vlm.json").read_text())


def test_vs_mlx_vlm_measures_every_side_and_stops_a_side_over_the_limit(tmp_path, capsys):
    # a small cap (560 tokens, the chat's reserve 512) so that ours compresses on these videos
    record = bench("--out", str(tmp_path / "run"), "--kv-budget", "560", *SMALL)
    for key in ("environment", "settings", "sides", "results", "ratios", "targets", "plot"):
        assert key in record, key
    assert {"load_average_start", "load_average_end", "versions"} <= set(record["environment"])
    assert record["settings"]["model_built"] and record["settings"]["frame_size"] == [56, 56]
    assert set(record["results"]) == set(SIDES)
    for side, rows in record["results"].items():
        assert [r["minutes"] for r in rows] == [0.1, 0.2], side
        for row in rows:
            assert set(RUN_FIELDS) <= set(row), (side, set(RUN_FIELDS) - set(row))
            assert row["status"] == "ok", (side, row["reason"])
            unset = ("reason", "limit") + (("frame_hw",) if side != "infinipot" else ())  # mlx-vlm: counts only
            assert all(row[k] is not None for k in RUN_FIELDS if k not in unset), row
            assert row["peak_rss_bytes"] > 0 and row["mlx_peak_bytes"] > 0
            assert row["ttft_s"] <= row["total_s"]
    ours, same, default = (record["results"][s] for s in ("infinipot", "mlx_vlm", "mlx_vlm_default"))
    for o, a, c in zip(ours, same, default):
        assert a["tokens_per_frame"] == o["tokens_per_frame"] == 2  # 56 x 56: 4 tokens per 2-frame slot
        assert o["frame_hw"] == [56, 56]
        assert a["frames"] == o["frames"] == c["frames"] == round(o["minutes"] * 120)
        assert a["video_tokens"] == o["video_tokens"] == o["frames"] * 2
        assert c["video_tokens"] == c["tokens_per_frame"] * c["frames"]
    assert ours[-1]["extra"]["compressions"] >= 1 and ours[-1]["extra"]["peak_cached"] <= 560
    assert {"flat_after_cap", "ahead_from_cap"} <= set(record["targets"])
    assert len(record["ratios"]) == 4  # 2 lengths x (A, C)
    assert (tmp_path / "run" / "vs_mlx_vlm_memory.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "ours / mlx-vlm peak memory" in out and "targets" in out

    # the same videos and checkpoint, a limit every run passes at once: stopped, then skipped
    model = record["settings"]["model"]
    low = bench("--out", str(tmp_path / "low"), "--model", model, "--memory-limit-gb", "0.05",
                "--sides", "mlx_vlm", "infinipot", *SMALL)
    for side, rows in low["results"].items():
        first, second = rows
        assert first["status"] == "over-limit" and first["limit"] == "memory", first
        assert "passed the limit of 0.05 GB" in first["reason"]
        assert first["peak_rss_bytes"] > 0.05e9
        assert second["status"] == "skipped" and "stopped at 0.1 min" in second["reason"], second
        assert set(RUN_FIELDS) <= set(second)
    assert low["targets"]["flat_after_cap"]["met"] is None  # not measurable: ours never finished


def test_vs_mlx_vlm_bad_flags_are_one_line_and_exit_2(tmp_path, capsys):
    for flags in (["--minutes", "0"], ["--frame-size", "50"], ["--minutes", "0.01"], ["--sides", "x"],
                  ["--model", str(tmp_path)], ["--kv-budget", "100"], ["--memory-limit-gb", "nan"]):
        try:
            code = main(["vs-mlx-vlm", "--out", str(tmp_path / "x"), *flags])
        except SystemExit as exit_:  # argparse's own errors (OneLineParser)
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2, (flags, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()  # refused before anything was built
