"""Start-up of the command lines: --help, a bad flag, import times, the first streamed block.

`python -m infinipot_mlx.bench startup [--out DIR] [--repeats 5] [--chat-runs 3] [--model DIR]`

Every measurement is a fresh process (`python -m infinipot_mlx.<command> ...`, stdin empty):
- the wall time of `--help`, of a bad flag (argparse) and of a bad value (each CLI's own
  check) per command, median of --repeats, with the exit codes and the stderr lines; one more
  run under `python -X importtime` says which heavy packages (mlx, mlx_vlm, torch,
  transformers, cv2, fastapi, uvicorn) the case imported;
- `python -X importtime` of `chat --help` and of a real chat run: the imports with the largest
  cumulative time;
- the time from the start of a real chat run (a tiny random Qwen2.5-VL in the published layout,
  built once into --out by conversions/make_tiny_checkpoint.py, and a short generated video of
  moving squares) to its progress bar (the model is loaded and the video open: streaming starts)
  and to the first block in the KV cache, median of --chat-runs. The bar (cli/console.py) shows
  the cache from the start and is redrawn at once until the first block is cached, so the first
  bar line whose `cached N/...` count is above the starting one is printed right after that block
  went in; no environment variable or extra output is needed.
Writes startup.json (with the environment() record) and prints a table. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from .common import (
    environment,
    load_average,
    print_environment,
    require_positive,
    write_json,
)
from .inputs import ROOT, child_env, synthetic_video, tiny_checkpoint

HEAVY = ("mlx", "mlx_vlm", "torch", "transformers", "cv2", "fastapi", "uvicorn")
QUESTION = "What is shown?"
# (command, case, argv after `python -m infinipot_mlx.`); MODEL and VIDEO: the tiny checkpoint and
# the generated video (cases naming them run only when there is one: --chat-runs above 0)
CASES = (
    ("chat", "--help", ["chat", "--help"]),
    ("chat", "bad flag", ["chat", "v.mp4", "--no-such-flag"]),
    ("chat", "bad value", ["chat", "v.mp4", "--fps", "0"]),
    ("chat", "no checkpoint", ["chat", "v.mp4", "--model", "/nonexistent/model"]),
    ("chat", "no video", ["chat", "/nonexistent/video.mp4", "--model", "MODEL"]),
    ("chat --demo", "bad value", ["chat", "--demo", "--kv-budget", "0"]),
    ("parity", "--help", ["parity", "--help"]),
    ("parity", "bad flag", ["parity", "--no-such-flag"]),
    ("parity", "bad value", ["parity", "--model", "m", "--video", "v.mp4", "--max-tokens", "0"]),
    ("bench", "--help", ["bench", "--help"]),
    ("bench", "bad flag", ["bench", "no-such-subcommand"]),
    ("bench kv", "--help", ["bench", "kv", "--help"]),
    ("bench kv", "bad value", ["bench", "kv", "--reserve", "-1"]),
    ("server", "--help", ["server", "--help"]),
    ("server", "bad flag", ["server", "--no-such-flag"]),
    ("server", "bad value", ["server", "--port", "0"]),
    ("library", "--help", ["library", "--help"]),
    ("library", "bad flag", ["library", "--no-such-flag"]),
    ("library", "bad value", ["library", "ask", " "]),
)
_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")
_CACHED = re.compile(r"cached (\d+)/")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `python -m infinipot_mlx.bench startup`."""
    p.add_argument("--out", type=Path, default=Path("bench_out/startup"),
                   help="output folder (startup.json; the tiny checkpoint and the video are kept there)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each --help / bad-input case (median)")
    p.add_argument("--chat-runs", type=int, default=3,
                   help="real chat runs timed to the first streamed block (median); 0: none, and no "
                        "checkpoint is built")
    p.add_argument("--model", default=None,
                   help="a local Qwen2.5-VL checkpoint folder (default: a tiny random one built in --out)")
    p.add_argument("--video-seconds", type=float, default=8.0, help="length of the generated video (default 8)")
    p.add_argument("--top", type=int, default=12, help="import-time lines shown per run (default 12)")


# ----- inputs ------------------------------------------------------------------------------------
def squares_video(folder: Path, seconds: float, fps: float = 8.0, side: int = 224) -> Path:
    """A cached video of moving squares, `seconds` long (inputs.synthetic_video)."""
    return synthetic_video(folder, max(2, int(round(seconds * fps))), fps, side)


# ----- measuring ---------------------------------------------------------------------------------
def command(argv: list[str], importtime: bool = False) -> list[str]:
    """`python [-X importtime] -m infinipot_mlx.<argv[0]> argv[1:]`."""
    return [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", f"infinipot_mlx.{argv[0]}",
            *argv[1:]]


def parse_imports(stderr: str) -> list[dict]:
    """The `-X importtime` lines: name, depth (0: imported by the program itself), self and
    cumulative seconds, in the order printed (a package after what it imported)."""
    rows = []
    for match in _IMPORT.finditer(stderr):
        self_us, cumulative_us, indent, name = match.groups()
        rows.append(dict(name=name, depth=len(indent) // 2, self_s=int(self_us) / 1e6,
                         cumulative_s=int(cumulative_us) / 1e6))
    return rows


def import_summary(rows: list[dict], top: int) -> dict:
    """Total import time (top-level cumulative), heavy packages imported, the `top` slowest."""
    names = {row["name"] for row in rows}
    return dict(import_s=round(sum(r["cumulative_s"] for r in rows if r["depth"] == 0), 4),
                heavy=[h for h in HEAVY if h in names],
                top=sorted(rows, key=lambda r: -r["cumulative_s"])[:top])


def time_case(argv: list[str], repeats: int, top: int) -> dict:
    """Wall seconds of `repeats` runs (median, min, max), exit codes, stderr, heavy imports."""
    seconds, codes, done = [], [], None
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command(argv), capture_output=True, text=True, env=child_env(),
                              stdin=subprocess.DEVNULL, timeout=300)
        seconds.append(time.perf_counter() - start)
        codes.append(done.returncode)
    traced = subprocess.run(command(argv, importtime=True), capture_output=True, text=True, env=child_env(),
                            stdin=subprocess.DEVNULL, timeout=300)
    imports = import_summary(parse_imports(traced.stderr), top)
    stderr = done.stderr.strip().splitlines()
    return dict(seconds=[round(s, 4) for s in seconds], median_s=round(statistics.median(seconds), 4),
                min_s=round(min(seconds), 4), max_s=round(max(seconds), 4), exit_codes=sorted(set(codes)),
                stderr_lines=len(stderr), stderr_first=stderr[0][:200] if stderr else "",
                import_s=imports["import_s"], heavy=imports["heavy"])


def chat_argv(model: Path, video: Path) -> list[str]:
    return ["chat", str(video), "--model", str(model), "-q", QUESTION, "--max-tokens", "4"]


def first_block_run(argv: list[str]) -> dict:
    """One chat run: seconds from its start to the bar (streaming starts), to the first bar line
    with more tokens cached than at the start (the first block is in the cache), and to exit."""
    events: dict[str, float | None] = dict(bar_s=None, first_block_s=None)
    start_cached = None
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command(argv), stdout=out, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=child_env())
        tail, text = b"", []
        while chunk := proc.stderr.read1(65536):
            now = time.perf_counter() - start
            text.append(chunk)
            *lines, tail = re.split(rb"[\r\n]", tail + chunk)
            for line in lines:
                if b"streaming:" not in line:
                    continue
                cached = _CACHED.search(line.decode(errors="replace"))
                if events["bar_s"] is None:
                    events["bar_s"] = now
                if cached and start_cached is None:
                    start_cached = int(cached.group(1))
                elif cached and events["first_block_s"] is None and int(cached.group(1)) > start_cached:
                    events["first_block_s"] = now
        code = proc.wait()
        total = time.perf_counter() - start
        out.seek(0)
        answer = out.read().decode(errors="replace")
    stderr = b"".join(text).decode(errors="replace")
    if code != 0:
        raise UserError(f"{shlex.join(command(argv))} exited {code}: "
                        f"{(stderr.strip().splitlines() or ['(no output)'])[-1]}")
    return dict(events, total_s=total, exit_code=code, answered="A:" in answer)


def run_chat(model: Path, video: Path, runs: int, top: int) -> tuple[dict, dict]:
    """(the first-block timings, median of `runs`; the import times of one more run)."""
    argv = chat_argv(model, video)
    timings = [first_block_run(argv) for _ in range(runs)]
    summary = {"command": shlex.join(command(argv)), "runs": timings}
    for key in ("bar", "first_block", "total"):
        values = [t[f"{key}_s"] for t in timings if t[f"{key}_s"] is not None]
        summary[f"{key}_median_s"] = round(statistics.median(values), 3) if values else None
    traced = subprocess.run(command(argv, importtime=True), capture_output=True, text=True, env=child_env(),
                            stdin=subprocess.DEVNULL, timeout=600)
    return summary, import_summary(parse_imports(traced.stderr), top)


# ----- the report --------------------------------------------------------------------------------
def print_table(record: dict) -> None:
    print(f"\n{'command':<12} {'case':<14} {'median':>7} {'min':>6} {'max':>6} {'exit':>5} {'stderr':>7} "
          f"{'imports':>8}  heavy imported")
    for row in record["cases"]:
        print(f"{row['command']:<12} {row['case']:<14} {row['median_s']:>6.2f}s {row['min_s']:>5.2f}s "
              f"{row['max_s']:>5.2f}s {','.join(map(str, row['exit_codes'])):>5} {row['stderr_lines']:>7} "
              f"{row['import_s']:>7.2f}s  {', '.join(row['heavy']) or '-'}")
    for name, imports in record["importtime"].items():
        print(f"\npython -X importtime, {name}: {imports['import_s']:.2f} s of imports; heavy: "
              f"{', '.join(imports['heavy']) or 'none'}")
        print(f"  {'cumulative':>10} {'self':>8}  module (indented: imported by the less indented line above)")
        for row in imports["top"]:
            print(f"  {row['cumulative_s']:>9.3f}s {row['self_s']:>7.3f}s  {'  ' * row['depth']}{row['name']}")
    chat = record.get("first_block")
    if chat:
        print(f"\nchat on a tiny checkpoint ({chat['command']}), median of {len(chat['runs'])} runs:")
        print(f"  progress bar (model loaded, video open) {chat['bar_median_s']} s; first block in the "
              f"KV cache {chat['first_block_median_s']} s; exit {chat['total_median_s']} s")


def run(args) -> dict:
    """Measure every case, the import times and the first streamed block; startup.json."""
    require_positive(args, "repeats", "top", "video_seconds")
    require_positive(args, "chat_runs", strict=False)
    if args.model is not None and not (Path(args.model).expanduser() / "config.json").is_file():
        raise UserError(f"--model {args.model}: no config.json there; give a local checkpoint folder")
    out = Path(args.out)
    env = environment()
    model = video = None
    if args.chat_runs:
        model = Path(args.model).expanduser().resolve() if args.model else tiny_checkpoint(out)
        video = squares_video(out, args.video_seconds)
    cases = []
    for name, case, argv in CASES:
        if any(a in ("MODEL", "VIDEO") for a in argv) and model is None:
            continue
        argv = [{"MODEL": str(model), "VIDEO": str(video)}.get(a, a) for a in argv]
        print(f"timing {' '.join(argv)} ...", flush=True)
        cases.append(dict(command=name, case=case, argv=argv, **time_case(argv, args.repeats, args.top)))
    help_run = subprocess.run(command(["chat", "--help"], importtime=True), capture_output=True, text=True,
                              env=child_env(), stdin=subprocess.DEVNULL, timeout=300)
    record = dict(cases=cases, importtime={"chat --help": import_summary(parse_imports(help_run.stderr), args.top)},
                  environment=env, root=str(ROOT))
    if model is not None:
        print(f"timing {args.chat_runs} chat run(s) to the first streamed block ...", flush=True)
        record["first_block"], record["importtime"]["chat run"] = run_chat(model, video, args.chat_runs, args.top)
    record["load_average_end"] = load_average()
    print_table(record)
    print()
    print_environment(dict(env, load_average_end=record["load_average_end"]))
    write_json(out, "startup.json", record)
    return record
