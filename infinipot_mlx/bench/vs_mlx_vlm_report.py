"""The table, the ours/mlx-vlm ratios, the targets and the plot of `bench vs-mlx-vlm` (vs_mlx_vlm.py).

Targets (from the issue; reported, never assumed): our peak memory is flat once the KV cap is
reached (peak RSS within FLAT_TOLERANCE of its smallest value over the lengths that compressed),
and ours is ahead of mlx-vlm at the same tokens per frame (side A) in peak RSS at every length
from the first that reached the cap. A run of A stopped at a limit counts as behind ours when
the RSS it had reached already passes our peak; a length A skipped after a memory stop counts
as behind ours, after a time stop as unknown (left out of the verdict, listed).
"""

from __future__ import annotations

from pathlib import Path

from .plots import Line, Panel, line_panels

MB = 10**6  # decimal, as the limit in GB (10^9 bytes)
OURS, SAME, DEFAULT = "infinipot", "mlx_vlm", "mlx_vlm_default"
LABELS = {SAME: "A mlx-vlm (our frame size)", OURS: "B ours (InfiniPot-V)",
          DEFAULT: "C mlx-vlm (its default size)"}
STYLES = {SAME: dict(color="tab:blue"), OURS: dict(color="tab:red"),
          DEFAULT: dict(color="tab:purple", linestyle="--")}
FLAT_TOLERANCE = 0.10


def _mb(x) -> str:
    return "-" if x is None else f"{x / MB:.0f}"


def _s(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _num(x, spec: str = "d") -> str:
    return "-" if x is None else format(x, spec)


def progress_line(row: dict) -> str:
    """One line per finished run."""
    return (f"{row['side']:>15} {row['minutes']:>5g} min: {row['status']}"
            + (f" ({row['reason']})" if row["reason"] else "")
            + f"; peak RSS {_mb(row['peak_rss_bytes'])} MB, MLX peak {_mb(row['mlx_peak_bytes'])} MB, "
              f"TTFT {_s(row['ttft_s'])} s, total {_s(row['total_s'])} s, "
              f"{_num(row['tokens_per_slot'], 'g')} tokens/slot, {_num(row['prompt_tokens'])} prompt tokens")


def print_table(results: dict[str, list[dict]]) -> None:
    print(f"\n{'side':16} {'min':>5} {'frames':>6} {'tok/frame':>9} {'prompt tok':>10} {'video tok':>9} "
          f"{'peak RSS MB':>11} {'MLX peak MB':>11} {'TTFT s':>7} {'total s':>7}  status")
    for side, rows in results.items():
        for r in rows:
            print(f"{side:16} {r['minutes']:>5g} {_num(r['frames']):>6} {_num(r['tokens_per_frame'], 'g'):>9} "
                  f"{_num(r['prompt_tokens']):>10} {_num(r['video_tokens']):>9} {_mb(r['peak_rss_bytes']):>11} "
                  f"{_mb(r['mlx_peak_bytes']):>11} {_s(r['ttft_s']):>7} {_s(r['total_s']):>7}  {r['status']}")


def _by_minutes(rows: list[dict]) -> dict[float, dict]:
    return {r["minutes"]: r for r in rows}


def _ratio(a, b):
    return a / b if a is not None and b else None


def ratios(results: dict[str, list[dict]]) -> list[dict]:
    """Ours over each mlx-vlm side, peak RSS and MLX peak, per length where ours ran (their value
    is a lower bound of their need where they were stopped at a limit: the ratio an upper bound)."""
    ours = _by_minutes(results.get(OURS, []))
    out = []
    for side in (SAME, DEFAULT):
        theirs = _by_minutes(results.get(side, []))
        for m, o in ours.items():
            t = theirs.get(m)
            if o["status"] != "ok" or t is None or t["status"] == "skipped":
                continue
            out.append(dict(minutes=m, vs=side, their_status=t["status"],
                            peak_rss_ratio=_ratio(o["peak_rss_bytes"], t["peak_rss_bytes"]),
                            mlx_peak_ratio=_ratio(o["mlx_peak_bytes"], t["mlx_peak_bytes"]),
                            ours_peak_rss_bytes=o["peak_rss_bytes"], their_peak_rss_bytes=t["peak_rss_bytes"],
                            ours_mlx_peak_bytes=o["mlx_peak_bytes"], their_mlx_peak_bytes=t["mlx_peak_bytes"]))
    return out


def print_ratios(rows: list[dict]) -> None:
    print("\nours / mlx-vlm peak memory (below 1: ours uses less)")
    for r in rows:
        bound = "" if r["their_status"] == "ok" else f"  (theirs {r['their_status']}: at most this)"
        mlx = "-" if r["mlx_peak_ratio"] is None else f"{r['mlx_peak_ratio']:.2f}x"
        print(f"  {r['minutes']:>5g} min vs {LABELS[r['vs']]:28}: peak RSS {r['peak_rss_ratio']:.2f}x "
              f"({_mb(r['ours_peak_rss_bytes'])} vs {_mb(r['their_peak_rss_bytes'])} MB), MLX peak {mlx} "
              f"({_mb(r['ours_mlx_peak_bytes'])} vs {_mb(r['their_mlx_peak_bytes'])} MB){bound}")


def targets(results: dict[str, list[dict]]) -> dict:
    """Whether the issue's two targets are met on this run (None: not measurable here)."""
    ours = [r for r in results.get(OURS, []) if r["status"] == "ok"]
    capped = [r for r in ours if (r.get("extra") or {}).get("compressions", 0) > 0]
    flat = dict(met=None, tolerance=FLAT_TOLERANCE, minutes=[r["minutes"] for r in capped])
    if len(capped) >= 2:
        for key in ("peak_rss_bytes", "mlx_peak_bytes"):
            values = [r[key] for r in capped]
            flat[key.replace("_bytes", "_spread")] = (max(values) - min(values)) / min(values)
        flat["met"] = flat["peak_rss_spread"] <= FLAT_TOLERANCE
    else:
        flat["why"] = "fewer than two lengths reached the cap (compressed)"
    ahead = dict(met=None, from_minutes=capped[0]["minutes"] if capped else None, per_length=[])
    if capped and SAME in results:
        same = _by_minutes(results[SAME])
        for r in (r for r in ours if r["minutes"] >= capped[0]["minutes"]):
            t = same.get(r["minutes"])
            verdict = mlx_ahead = _ahead(r, t)
            if t is not None and t["status"] == "ok":
                mlx_ahead = r["mlx_peak_bytes"] < t["mlx_peak_bytes"]
            elif t is not None and t["status"] == "over-limit":
                mlx_ahead = None  # a killed run reports no MLX peak
            ahead["per_length"].append(dict(minutes=r["minutes"], ahead=verdict, mlx_peak_ahead=mlx_ahead,
                                            their_status=None if t is None else t["status"]))
        known = [x["ahead"] for x in ahead["per_length"] if x["ahead"] is not None]
        ahead["met"] = (all(known) if known else None)  # lengths where A ran out of time: unknown
        ahead["not_measurable"] = [x["minutes"] for x in ahead["per_length"] if x["ahead"] is None]
    else:
        ahead["why"] = "ours never reached the cap" if not capped else "side A (mlx_vlm) was not run"
    return dict(flat_after_cap=flat, ahead_from_cap=ahead)


def _ahead(ours: dict, theirs: dict | None) -> bool | None:
    """Ours below A in peak RSS: measured, or implied by what A reached before it was stopped
    (its peak is at least that), or A skipped after a memory stop; None when nothing says."""
    if theirs is None or theirs["status"] == "failed":
        return None
    if theirs["status"] == "ok":
        return ours["peak_rss_bytes"] < theirs["peak_rss_bytes"]
    if theirs["status"] == "over-limit":
        return True if theirs["peak_rss_bytes"] > ours["peak_rss_bytes"] else None
    return True if theirs.get("limit") == "memory" else None  # skipped


def _yes(met) -> str:
    return {True: "MET", False: "NOT MET", None: "not measurable"}[met]


def print_targets(t: dict) -> None:
    flat, ahead = t["flat_after_cap"], t["ahead_from_cap"]
    print("\ntargets")
    detail = (f"peak RSS spread {flat['peak_rss_spread']:.1%}, MLX peak spread {flat['mlx_peak_spread']:.1%} "
              f"over {', '.join(f'{m:g}' for m in flat['minutes'])} min (tolerance {flat['tolerance']:.0%})"
              if "peak_rss_spread" in flat else flat.get("why", ""))
    print(f"  our peak memory flat once the cap is reached: {_yes(flat['met'])}: {detail}")
    per = ", ".join(f"{x['minutes']:g} min {_yes(x['ahead'])} (MLX peak {_yes(x['mlx_peak_ahead'])}"
                    f"{'' if x['their_status'] == 'ok' else ', A ' + str(x['their_status'])})"
                    for x in ahead["per_length"])
    print(f"  ours ahead of mlx-vlm (A) in peak RSS from the first length past the cap"
          f" ({_num(ahead['from_minutes'], 'g')} min): {_yes(ahead['met'])}: {per or ahead.get('why', '')}")


def plot(results: dict[str, list[dict]], path: Path, settings: dict) -> Path:
    """Peak RSS, MLX peak and time to first token against video length, one line per side."""
    lines = [Line(LABELS.get(side, side), [r for r in rows if r["status"] == "ok"], STYLES.get(side, {}))
             for side, rows in results.items()]
    for side, rows in results.items():  # a killed run: the RSS it had reached, unjoined
        stopped = [r for r in rows if r["status"] == "over-limit" and r["peak_rss_bytes"]]
        if stopped:
            style = {**STYLES.get(side, {}), "linestyle": "none"}
            lines.append(Line(f"{LABELS.get(side, side)}: RSS when stopped", stopped, style))

    def mb(key: str):
        return lambda p: None if p[key] is None else p[key] / MB

    limit = settings["memory_limit_bytes"]
    near = any(r["peak_rss_bytes"] and r["peak_rss_bytes"] > limit / 2 for rows in results.values() for r in rows)
    panels = [Panel("peak RSS (MB)", mb("peak_rss_bytes"), hlines={"memory limit": limit / MB} if near else {}),
              Panel("MLX peak (MB)", mb("mlx_peak_bytes")),
              Panel("time to first token (s)", lambda p: p["ttft_s"])]
    size = settings["frame_size"]
    title = (f"ours vs mlx-vlm, {settings['fps']:g} fps, {size[0]}x{size[1]} frames, answers <= "
             f"{settings['max_tokens']} tokens; model {Path(settings['model']).name}; lines: runs that "
             "finished under the limits")
    return line_panels(path, lines, lambda p: p["minutes"], "video length (minutes)", panels, title,
                       logx=True)
