"""Peak memory and time, our chat vs stock mlx-vlm, on one checkpoint, per video length.

`python -m infinipot_mlx.bench vs-mlx-vlm [--minutes 1 2 5 10 20 40] [--model DIR] [--out DIR]`
runs three sides on the same generated videos, each (side, length) in a fresh process:
- mlx_vlm (A): mlx-vlm's own video path (what `python -m mlx_vlm generate --video V --fps F
  --video-max-frames N --temperature 0` runs: load, apply_chat_template, stream_generate), with
  the video processor's min/max pixels opened so every sampled frame keeps our frame size:
  the same tokens per frame as ours;
- infinipot (B): `python -m infinipot_mlx.chat V --model DIR -q Q --fps F --max-pixels H*W
  --max-tokens K`, every other flag at its default (a 6144-token KV cap);
- mlx_vlm_default (C): as A, but at mlx-vlm's own frame sizing (the checkpoint's video pixel
  limits, which mlx-vlm applies to the whole clip); the tokens per frame it used are recorded.
All sides sample every frame (the videos are written at --fps; A and C lift mlx-vlm's 768-frame
default cap), answer greedily, and stop at --max-tokens or end of sequence.

Per run: peak RSS (the child's VmHWM, the run's alone: polled from /proc, and read by the child
itself at its end), MLX peak (mx.get_peak_memory in the child), time to the first answer token
and total time (both from the child's start, imports and model load included, as a CLI user sees
them), frames, tokens. The parent kills a child whose RSS passes --memory-limit-gb or that runs
past --time-limit-s (status over-limit); a side that fails or passes a limit skips its longer
lengths (status skipped, with the reason). Memory is in decimal units (MB 10^6, GB 10^9).

Defaults (DEFAULTS; chosen so the full run takes 15-25 minutes on 2 shared cores: 18.6 measured
at a load average of 4 to 5, side A stopped by the memory limit at 40 min): lengths 1, 2, 5,
10, 20, 40 min; 2 fps; 224 x 224 frames (64 tokens per 2-frame slot on Qwen2.5-VL, 32 per
frame); answers of at most 16 tokens; memory limit 8 GB (10^9 bytes); 600 s per run; the
checkpoint: a tiny random Qwen2.5-VL in the published layout and pixel limits, built once into
--out by conversions/make_tiny_checkpoint.py (needs torch and transformers); videos: moving
squares (random_model.moving_frames), mp4v, cached in --out/videos.
Writes vs_mlx_vlm.json, vs_mlx_vlm_memory.png and per-run logs under --out; prints a table, the
ours/mlx-vlm memory ratios and whether the targets are met.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError
from . import inputs
from .inputs import child_env, tiny_checkpoint

SIDES = {
    "mlx_vlm": "A: mlx-vlm generate, frames at our size (same tokens per frame)",
    "infinipot": "B: infinipot_mlx.chat, InfiniPot-V under its default KV cap",
    "mlx_vlm_default": "C: mlx-vlm generate at its own default frame sizing",
}
DEFAULTS = {"minutes": [1, 2, 5, 10, 20, 40], "fps": 2.0, "frame_size": 224, "max_tokens": 16,
            "memory_limit_gb": 8.0, "time_limit_s": 600.0, "question": "What happened in the video?",
            "out": "bench_out/vs_mlx_vlm", "model": "a tiny random Qwen2.5-VL, published layout"}
MARKER = "VS_MLX_VLM_RESULT "  # the child's one JSON line
POLL_S = 0.05
GB = 10**9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path(DEFAULTS["out"]),
                   help="output folder (JSON, PNG, logs, the cached videos and checkpoint)")
    p.add_argument("--model", default=None,
                   help="a local Qwen2.5-VL checkpoint folder (default: a tiny random one built in --out)")
    p.add_argument("--minutes", type=float, nargs="+", default=DEFAULTS["minutes"],
                   help="video lengths in minutes (fractions allowed)")
    p.add_argument("--sides", nargs="+", choices=list(SIDES), default=list(SIDES))
    p.add_argument("--memory-limit-gb", type=float, default=DEFAULTS["memory_limit_gb"],
                   help="stop a run whose RSS passes this (10^9 bytes); its side skips longer videos")
    p.add_argument("--time-limit-s", type=float, default=DEFAULTS["time_limit_s"],
                   help="stop a run that takes longer")
    p.add_argument("--fps", type=float, default=DEFAULTS["fps"], help="frames per second (written and sampled)")
    p.add_argument("--frame-size", type=int, default=DEFAULTS["frame_size"],
                   help="square frame side in pixels, a multiple of 28 (224: 64 tokens per slot)")
    p.add_argument("--max-tokens", type=int, default=DEFAULTS["max_tokens"], help="answer length cap, every side")
    p.add_argument("--question", default=DEFAULTS["question"])
    p.add_argument("--kv-budget", type=int, default=None,
                   help="passed to our chat (default: not passed, the chat's own 6144)")
    p.add_argument("--no-plot", action="store_true", help="write the JSON and the table only")


def check_args(args) -> list[float]:
    """The lengths, sorted; UserError (one line) for any flag that cannot work."""
    from .common import require_positive

    for name in ("minutes", "memory_limit_gb", "time_limit_s", "fps"):
        value = getattr(args, name)
        bad = [v for v in (value if isinstance(value, list) else [value]) if not math.isfinite(v)]
        if bad:
            raise UserError(f"--{name.replace('_', '-')} must be finite, got {bad[0]}")
    require_positive(args, "minutes", "memory_limit_gb", "time_limit_s", "fps", "max_tokens")
    if args.kv_budget is not None:
        from ..door import DEFAULT_RESERVE as reserve  # the chat's default

        if args.kv_budget <= reserve:
            raise UserError(f"--kv-budget must be above the chat's default reserve ({reserve} tokens), "
                            f"got {args.kv_budget}")
    if args.frame_size < 28 or args.frame_size % 28:
        raise UserError(f"--frame-size must be a positive multiple of 28 (one visual token), "
                        f"got {args.frame_size}")
    if not args.question.strip():
        raise UserError("--question is empty; write a question about the video")
    for m in args.minutes:
        if frame_count(m, args.fps) < 4:
            raise UserError(f"--minutes {m:g} at --fps {args.fps:g} gives fewer than 4 frames "
                            "(mlx-vlm's minimum); use a longer video or a higher --fps")
    if args.model is not None:
        config = Path(args.model).expanduser() / "config.json"
        if not config.is_file():
            raise UserError(f"--model {args.model}: no config.json there; give a local checkpoint folder")
        model_type = json.loads(config.read_text()).get("model_type")
        if model_type != "qwen2_5_vl":
            raise UserError(f"--model {args.model} is a {model_type} checkpoint; this benchmark compares "
                            "Qwen2.5-VL (qwen2_5_vl) video paths")
    return sorted(set(args.minutes))


def frame_count(minutes: float, fps: float) -> int:
    """Frames of a video of that length, even (one temporal slot is two frames)."""
    return 2 * int(round(minutes * 60 * fps / 2))


def synthetic_video(folder: Path, minutes: float, fps: float, side: int) -> Path:
    """The cached video of `minutes` at `fps` (inputs.synthetic_video)."""
    return inputs.synthetic_video(folder, frame_count(minutes, fps), fps, side)


# ----- one run in its own process ---------------------------------------------------------
def child_command(side: str, args, model: Path, video: Path) -> list[str]:
    cmd = [sys.executable, "-m", "infinipot_mlx.bench.vs_mlx_vlm_child", side, str(video),
           "--model", str(model), "--fps", f"{args.fps:g}", "--frame-size", str(args.frame_size),
           "--max-tokens", str(args.max_tokens), "--question", args.question]
    return cmd + (["--kv-budget", str(args.kv_budget)] if args.kv_budget is not None else [])


def _rss(pid: int | str) -> int:
    """max(VmRSS, VmHWM) of a running process ("self": this one) in bytes, 0 when it is gone.

    VmHWM is the peak of the process's own address space since its exec; getrusage's and
    wait4's ru_maxrss are not usable here: they start from the forking parent's RSS."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    kb = [int(line.split()[1]) for line in text.splitlines() if line.startswith(("VmRSS:", "VmHWM:"))]
    return max(kb, default=0) * 1024


def run_child(cmd: list[str], log: Path, memory_limit: int, time_limit: float) -> dict:
    """Run cmd; kill it past either limit. Status, reason, peak RSS and the child's JSON line."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env())
        start, seen, stopped = time.perf_counter(), 0, None
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            seen = max(seen, _rss(proc.pid))
            if seen > memory_limit:
                stopped = ("memory", f"RSS {seen / GB:.2f} GB passed the limit of {memory_limit / GB:g} GB")
            elif time.perf_counter() - start > time_limit:
                stopped = ("time", f"still running after the time limit of {time_limit:g} s")
            if stopped is not None:
                proc.kill()  # not reaped yet: the pid is still ours
                pid, status, _ = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_S)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    result = next((json.loads(line[len(MARKER):]) for line in reversed(text.splitlines())
                   if line.startswith(MARKER)), None)
    peak = max(seen, (result or {}).get("vm_hwm_bytes") or 0)  # its last moments, after the last poll
    row = dict(status="ok", reason=None, limit=None, returncode=proc.returncode, wall_s=wall,
               peak_rss_bytes=peak)
    if stopped is not None:
        row.update(status="over-limit", limit=stopped[0], reason=stopped[1])
    elif proc.returncode != 0 or result is None:
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("$ ")]
        row.update(status="failed", reason=f"exit {proc.returncode}: " + (lines[-1].strip() if lines
                                                                         else "no output")[:300])
    elif peak > memory_limit:
        row.update(status="over-limit", limit="memory", reason=f"finished, but its peak RSS {peak / GB:.2f} GB passed "
                                                f"the limit of {memory_limit / GB:g} GB")
    row["child"] = result
    return row


RUN_FIELDS = ("side", "minutes", "frames", "frame_hw", "tokens_per_slot", "tokens_per_frame",
              "prompt_tokens", "video_tokens", "peak_rss_bytes", "mlx_peak_bytes", "ttft_s",
              "total_s", "load_s", "answer_tokens", "status", "reason", "limit")


def measure(side: str, minutes: float, args, model: Path, video: Path, out: Path) -> dict:
    """One (side, length): every RUN_FIELDS key (None where not measured) plus extras."""
    cmd = child_command(side, args, model, video)
    log = out / "logs" / f"{side}_{minutes:g}min.log"
    got = run_child(cmd, log, int(args.memory_limit_gb * GB), args.time_limit_s)
    child = got.pop("child") or {}
    row = {key: None for key in RUN_FIELDS}
    row.update({k: v for k, v in child.items() if k in RUN_FIELDS or k in ("extra",)})
    row.update(side=side, minutes=minutes, status=got["status"], reason=got["reason"], limit=got["limit"],
               peak_rss_bytes=got["peak_rss_bytes"], wall_s=got["wall_s"],
               returncode=got["returncode"], command=shlex.join(cmd), log=str(log))
    if row["frames"] is None:
        row["frames"] = frame_count(minutes, args.fps)  # what the video holds
    return row


def skipped(side: str, minutes: float, args, why: tuple[str, str | None]) -> dict:
    row = {key: None for key in RUN_FIELDS}
    row.update(side=side, minutes=minutes, frames=frame_count(minutes, args.fps), status="skipped",
               reason=why[0], limit=why[1])
    return row


def run(args) -> int:
    from . import vs_mlx_vlm_report as report
    from .common import environment, load_average, print_environment, write_json

    minutes = check_args(args)  # bad flags fail before anything is built
    start = time.perf_counter()
    env = environment()
    env["load_average_start"] = env["load_average"]
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model).expanduser().resolve() if args.model else tiny_checkpoint(out)
    results = {side: [] for side in args.sides}
    stopped: dict[str, tuple[str, str | None]] = {}  # side -> (why, limit)
    for m in minutes:
        video = synthetic_video(out / "videos", m, args.fps, args.frame_size)
        for side in args.sides:
            if side in stopped:
                results[side].append(skipped(side, m, args, stopped[side]))
                continue
            row = measure(side, m, args, model, video, out)
            row["video"] = str(video)
            results[side].append(row)
            print(report.progress_line(row), flush=True)
            if row["status"] != "ok":
                stopped[side] = (f"{side} stopped at {m:g} min ({row['status']}: {row['reason']})",
                                 row["limit"])
    env["load_average_end"] = load_average()
    record = dict(
        benchmark="vs_mlx_vlm", environment=env, seconds=time.perf_counter() - start,
        settings=dict(minutes=minutes, fps=args.fps, frame_size=[args.frame_size, args.frame_size],
                      max_tokens=args.max_tokens, question=args.question,
                      memory_limit_bytes=int(args.memory_limit_gb * GB), time_limit_s=args.time_limit_s,
                      kv_budget=args.kv_budget, model=str(model), model_built=args.model is None,
                      video="moving squares (bench/random_model.moving_frames), mp4v, written at --fps",
                      sampling="every frame on every side (mlx-vlm: --fps F --video-max-frames N)",
                      times="from the child's start: imports and model load included"),
        defaults=DEFAULTS, sides=SIDES, results=results)
    record["ratios"] = report.ratios(results)
    record["targets"] = report.targets(results)
    print_environment(env)
    report.print_table(results)
    report.print_ratios(record["ratios"])
    report.print_targets(record["targets"])
    if not args.no_plot and any(r["status"] == "ok" for rows in results.values() for r in rows):
        record["plot"] = str(report.plot(results, out / "vs_mlx_vlm_memory.png", record["settings"]))
        print(f"wrote {record['plot']}")
    write_json(out, "vs_mlx_vlm.json", record)
    return 0
