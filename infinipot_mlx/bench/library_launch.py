"""python -m infinipot_mlx.bench library-launch: indexing throughput of 1 and more ranks (mlx.launch).

A folder of --n organism test videos (bench/library.py's FFV1 files, 16 s each) is indexed
afresh with the library command, once per rank count of --ranks: 1 rank is the plain command
(no launcher), R > 1 is `mlx.launch -n R --backend ring` on this machine. With --pin, rank r
runs on core r alone (taskset), so R ranks have R cores and 1 rank has one: the nearest this
machine comes to R Macs; without it, every rank shares all the cores. Each count is then run
again on the indexed library (every video skipped): that run's time is the fixed cost
(start-up, model load, hashing), and the rest is streaming.

Recorded per count: wall seconds, video seconds, the fixed cost, streaming seconds per video
second (the wall less the fixed cost: decoding, the model's load and its work), the model's
own seconds per video second (vision, prefill, compression: the memories' counters),
throughput (video seconds per wall second), the CPU seconds of every process of the run (the
launcher's included: mlx.launch 0.32's I/O threads poll without pause, about a core here),
and the cores each rank had. The JSON
also holds, from the 1-rank costs, the hours that N Macs would take for 1,000 hours of video
(on paper: N ranks like this one's, each with its own cores; the rounds' gathers cost
milliseconds; the last round waits for its longest video).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError
from .common import environment, load_average, parse_list, print_environment, require_positive, write_json

LIBRARY_HOURS = 1000.0  # the library of the estimate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=8, help="videos to index (default 8, 16 s each)")
    p.add_argument("--ranks", default="1,2", help="rank counts to measure (default 1,2)")
    p.add_argument("--pin", action="store_true", help="rank r on core r only (taskset): R ranks, R cores")
    p.add_argument("--weights", type=Path, default=None, help="a checkpoint (default: the shipped organism)")
    p.add_argument("--out", type=Path, default=Path("bench_out/library_launch"))


def command(ranks: int, pin: bool, videos: Path, library: Path, weights: Path) -> list[str]:
    """The index command line for `ranks` ranks (1: no launcher), pinned or not."""
    index = [sys.executable, "-m", "infinipot_mlx.library", "index", str(videos), "--library", str(library),
             "--model", str(weights), "--fps", "2"]
    if pin:  # rank r on the r-th of $CORES (timed() sets it), read when the rank starts
        index = ["sh", "-c", 'c=$(echo "$CORES" | cut -d, -f$(( ${MLX_RANK:-0} + 1 ))); exec taskset -c "$c" "$@"',
                 "sh", *index]
    if ranks == 1:
        return index
    launcher = shutil.which("mlx.launch")
    if launcher is None:
        raise UserError("mlx.launch is not on PATH; install mlx (it ships mlx.launch) or measure --ranks 1")
    return [launcher, "-n", str(ranks), "--backend", "ring", "--", *index]


def timed(cmd: list[str], cores: str, work: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the run and all its processes, stdout) of one index run;
    UserError when it did not index everything. Its stdin is a pipe kept open and empty (a
    launcher selecting on /dev/null would spin)."""
    from .inputs import child_env

    work.mkdir(parents=True, exist_ok=True)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(work / "stdout.txt", "w+") as out, open(work / "stderr.txt", "w+") as err:
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                 env=dict(child_env(), CORES=cores))
        code = child.wait()
        child.stdin.close()
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0 or ", 0 failed" not in stdout or "Traceback" in stderr:
        last = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"indexing the benchmark videos failed: {last}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return seconds, cpu, stdout


def measure(ranks: int, args, videos: Path, weights: Path, n_videos: int) -> dict:
    """One rank count: a fresh index, then a run that skips everything."""
    library = args.out / "work" / f"library_{ranks}"
    shutil.rmtree(library, ignore_errors=True)
    cores = sorted(os.sched_getaffinity(0))
    if args.pin and ranks > len(cores):
        raise UserError(f"--pin needs a core per rank: {ranks} ranks, {len(cores)} cores here")
    cmd = command(ranks, args.pin, videos, library, weights)
    core_list = ",".join(map(str, cores))
    wall, cpu, out = timed(cmd, core_list, library.parent / f"logs_{ranks}")
    fixed, _, again = timed(cmd, core_list, library.parent / f"logs_{ranks}")
    if f"{n_videos} indexed" not in out or f"{n_videos} skipped" not in again:
        raise UserError(f"{ranks} ranks did not index the {n_videos} videos once: {out.strip().splitlines()[-1]}")
    video_s, model_s = library_seconds(library)
    streaming = max(wall - fixed, 1e-9)
    row = dict(ranks=ranks, wall_s=round(wall, 2), cpu_s=round(cpu, 2), fixed_s=round(fixed, 2), video_s=round(video_s, 2),
               videos=n_videos, stream_s_per_video_s=round(streaming / video_s, 4),
               model_s_per_video_s=round(model_s / video_s, 4),
               throughput_video_s_per_s=round(video_s / wall, 3),
               cores_per_rank=[[cores[r]] for r in range(ranks)] if args.pin else [cores] * ranks,
               load_average_after=load_average())
    print(f"{ranks} rank(s), cores {row['cores_per_rank']}: {n_videos} videos ({video_s:.0f} s) in {wall:.1f} s "
          f"(fixed {fixed:.1f} s, {cpu:.1f} s of CPU in all): {row['throughput_video_s_per_s']:.2f} video s per s")
    return row


def library_seconds(library: Path) -> tuple[float, float]:
    """(seconds of video indexed, seconds the model spent on them: vision, prefill and
    compression, from each memory's counters)."""
    from ..stream.memory_file import read

    with sqlite3.connect(library / "catalogue.sqlite") as db:
        rows = db.execute("SELECT duration, memory FROM videos WHERE status = 'done'").fetchall()
    model = sum(sum(read(library / "memories" / memory)[0]["state"]["counters"]["seconds"].values())
                for _, memory in rows)
    return sum(d for d, _ in rows), model


def estimate(one: dict, macs: list[int]) -> list[dict]:
    """Hours for LIBRARY_HOURS of video on N Macs, each streaming at the 1-rank cost (module
    docstring); the fixed cost counted once per run."""
    per = one["stream_s_per_video_s"]
    return [dict(macs=n, hours=round((one["fixed_s"] + LIBRARY_HOURS * 3600 * per / n) / 3600, 2)) for n in macs]


def run(args) -> int:
    from ..organism import weights_dir
    from .library import write_videos

    require_positive(args, "n")
    counts = sorted(set(parse_list(args.ranks, "ranks", kind=int)))
    if not counts or counts[0] < 1:
        raise UserError(f"--ranks must be positive integers, got {args.ranks}")
    if args.pin and shutil.which("taskset") is None:
        raise UserError("--pin needs taskset (util-linux); leave --pin out")
    weights = (args.weights or weights_dir()).resolve()
    env = environment()
    print_environment(env)
    videos = args.out / "work" / "videos"
    write_videos(videos, args.n, 0)
    rows = [measure(r, args, videos, weights, args.n) for r in counts]
    base = next((r for r in rows if r["ranks"] == 1), None)
    paper = estimate(base, [1, 2, 3, 4, 8]) if base else []
    for e in paper:
        print(f"on paper: {LIBRARY_HOURS:.0f} h of video on {e['macs']} Mac(s) like this one: {e['hours']:.1f} h")
    env.update(load_average_start=env["load_average"], load_average_end=load_average())
    write_json(args.out, "library_launch.json", dict(
        environment=env, weights=str(weights), pinned=args.pin, runs=rows, library_hours=LIBRARY_HOURS,
        estimate=paper, note="1 rank: the plain command; R ranks: mlx.launch -n R --backend ring on this machine"))
    return 0
