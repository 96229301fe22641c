"""The library under `mlx.launch -n 2 --backend ring` on this machine (library/distributed.py,
library/sharded.py): the index of two ranks is the index of one process, a rank killed with
kill -9 in the middle of a video loses only that video and the next run finishes without
streaming anything twice, and a search of two ranks prints what one process prints.

Each run is a real mlx.launch of two ranks (10-30 s each on this 2-core machine); the kill
lands while rank 1 holds its video open (seen in /proc/PID/fd), whatever the machine's speed.
The kill test (a 2-rank index, a kill, a 2-rank rerun that must equal one process's index)
runs in the default suite; the plain 2-rank index against one process repeats half of it and
is marked slow (pytest -m slow)."""

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from infinipot_mlx.cli.library import main
from infinipot_mlx.library import CATALOGUE, Catalogue
from infinipot_mlx.library.distributed import balance, group
from infinipot_mlx.stream.memory_file import read
from test_library import BUDGET, check_agrees, lines
from videos import long_low_res_video, moving_shapes_video

pytestmark = pytest.mark.skipif(shutil.which("mlx.launch") is None or not Path("/proc/self/fd").is_dir(),
                                reason="needs mlx.launch and /proc")


def free_port() -> int:
    """A port the ring can listen on (it takes this one and the next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args, wrap: tuple = ()) -> subprocess.Popen:
    """`mlx.launch -n 2 --backend ring -- [WRAP] python -m infinipot_mlx.library ARGS`, started,
    its stdin an open pipe (on /dev/null the launcher's loop spins) and its output in files."""
    command = [shutil.which("mlx.launch"), "-n", "2", "--backend", "ring", "--starting-port", str(free_port()), "--",
               *wrap, sys.executable, "-m", "infinipot_mlx.library", *map(str, args)]
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, text=True,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
    child.files = out, err
    return child


def finish(child: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) of a launch, once it has ended."""
    child.wait(timeout=300)
    child.stdin.close()
    texts = []
    for f in child.files:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return texts[0], texts[1]


def launched(*args) -> tuple[str, str]:
    """(stdout, stderr) of a launch that runs to its end."""
    return finish(launch(*args))


def in_process(*args) -> tuple[int, str]:
    """(exit code, stdout) of `python -m infinipot_mlx.library ARGS` in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main([str(a) for a in args])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two videos of half a minute (c the longer) and two of a second or two. Balanced by
    duration, rank 0 streams c and rank 1 streams b, then d, then a."""
    root = tmp_path_factory.mktemp("launch_videos")
    moving_shapes_video(root / "a.mp4", n=10, fps=10.0)
    long_low_res_video(root / "b.mp4", minutes=0.5, fps=5.0)
    long_low_res_video(root / "c.mp4", minutes=0.6, fps=5.0)
    moving_shapes_video(root / "d.mp4", n=20, fps=10.0)
    return root


@pytest.fixture(scope="module")
def single(folder, tiny_qwen_dir, tmp_path_factory):
    """The library one process indexes (the reference)."""
    root = tmp_path_factory.mktemp("single_library")
    code, out = in_process("index", folder, "--library", root, "--model", tiny_qwen_dir, *BUDGET)
    assert code == 0 and "4 indexed" in out
    return root


def contents(root) -> dict:
    """name -> (row, memory metadata, memory tensors), less what differs between two runs of
    the same thing: the dates, the seconds each part took (and so the file's size)."""
    found = {}
    with Catalogue(root) as catalogue:
        for e in catalogue.entries():
            row = {k: v for k, v in asdict(e).items() if k not in ("created", "memory_bytes")}
            meta, tensors = read(catalogue.memory_path(e))
            del meta["created"], meta["sha256"], meta["state"]["counters"]["seconds"]
            found[e.name] = (row, meta, tensors)
    return found


def assert_same_library(one, other) -> None:
    a, b = contents(one), contents(other)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name][0] == b[name][0] and a[name][1] == b[name][1], name
        assert sorted(a[name][2]) == sorted(b[name][2]), name
        assert all(np.array_equal(a[name][2][k], b[name][2][k]) for k in a[name][2]), name


def test_without_mlx_a_process_is_rank_0_of_1(monkeypatch):
    """A torch-only install (the reference backend, no mlx) still runs `library` alone."""
    monkeypatch.setitem(sys.modules, "mlx.core", None)  # `import mlx.core` raises ImportError
    alone = group()
    assert (alone.rank(), alone.size()) == (0, 1)


def test_balance_by_duration():
    assert balance([36.0, 30.0, 1.0, 2.0], 2) == [[0], [1, 3, 2]]
    assert balance([5.0, 5.0, 5.0], 2) == [[0, 2], [1]]  # ties: the lowest index, the lowest rank
    assert balance([], 3) == [[], [], []]


@pytest.mark.slow
def test_two_ranks_index_what_one_process_indexes(folder, single, tiny_qwen_dir, tmp_path):
    root = tmp_path / "lib"
    out, err = launched("index", folder, "--library", root, "--model", tiny_qwen_dir, *BUDGET)
    assert "4 indexed, 0 skipped, 0 failed" in out and "Traceback" not in err, (out, err)
    assert sorted(line.split()[1] for line in lines(out, "done")) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]  # once
    assert out.count("library ") == 1 and "library:" in err  # one summary, one progress bar: rank 0's
    check_agrees(root)
    assert_same_library(single, root)


def rank_process(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of mlx.launch's rank `rank` (its child process with MLX_RANK=rank), once started."""
    while launcher.poll() is None:
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == launcher.pid \
                        and f"MLX_RANK={rank}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
        time.sleep(0.01)  # polling the process table, not a wait standing in for an event
    raise AssertionError("mlx.launch ended before its ranks started")


def wait_until_open(pid: int, video: Path) -> None:
    """Return once process `pid` has `video` open (it is streaming it)."""
    target = str(video.resolve())
    while True:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return
        time.sleep(0.002)  # polling the descriptor table, as above


def test_kill_9_of_a_rank_loses_its_video_only_and_a_rerun_finishes(folder, single, tiny_qwen_dir, tmp_path):
    root = tmp_path / "lib"
    args = ("index", folder, "--library", root, "--model", tiny_qwen_dir, *BUDGET)
    launcher = launch(*args)
    rank1 = rank_process(launcher, 1)
    wait_until_open(rank1, folder / "b.mp4")  # rank 1's first video (balance above)
    os.kill(rank1, signal.SIGKILL)
    out, err = finish(launcher)
    assert "Traceback" not in err and ("rank 0: stopped by mlx.launch" in err or "rank 0: another rank stopped" in err)
    assert lines(out, "done    c.mp4") and not lines(out, "done    b.mp4"), (out, err)  # rank 0 finished its video
    done = {e.name: e.memory for e in check_agrees(root, settled=False) if e.status == "done"}
    assert set(done) == {"c.mp4"}
    kept = (root / "memories" / done["c.mp4"]).stat().st_mtime_ns

    out, err = launched(*args)  # the rerun streams what is missing, each once, and nothing else
    assert "Traceback" not in err, err
    streamed = sorted(line.split()[1] for line in lines(out, "done"))
    assert streamed in (["a.mp4", "b.mp4", "d.mp4"], ["a.mp4", "d.mp4"]), out  # b: saved just before the kill
    assert lines(out, "skipped c.mp4 (indexed") and (streamed[1] == "b.mp4" or lines(out, "skipped b.mp4 (streamed"))
    assert (root / "memories" / done["c.mp4"]).stat().st_mtime_ns == kept
    check_agrees(root)
    assert_same_library(single, root)


def test_two_ranks_search_as_one_process(single, tiny_qwen_dir):
    """The same hits, in the same order, with the same scores to the last bit, printed once."""
    question = ["ask", "Is there a moving shape?", "--library", single, "--max-tokens", "4", "--top", "3", "--json"]
    out, err = launched(*question)
    code, one = in_process(*question)
    assert code == 0 and "Traceback" not in err, err
    hits = json.loads(out)  # one document: rank 0 alone printed
    assert hits == json.loads(one) and [h["rank"] for h in hits] == [1, 2, 3], (out, one)


def test_per_host_libraries_search_as_one(single, tmp_path):
    """Each rank reads its own library folder (a Mac's own, here $INFINIPOT_LIBRARY set per
    rank): rank 0's holds a, b, c and rank 1's b, c, d; the hits are those of one process over
    the four, each memory scored once."""
    for rank, drop in ((0, "d.mp4"), (1, "a.mp4")):
        root = shutil.copytree(single, tmp_path / f"lib{rank}")
        with sqlite3.connect(root / CATALOGUE) as db:
            (memory,) = db.execute("SELECT memory FROM videos WHERE name = ?", (drop,)).fetchone()
            db.execute("DELETE FROM videos WHERE name = ?", (drop,))
        (root / "memories" / memory).unlink()
    question = ["ask", "Is there a moving shape?", "--max-tokens", "4", "--json"]
    out, err = finish(launch(*question, wrap=("sh", "-c", f'INFINIPOT_LIBRARY={tmp_path}/lib$MLX_RANK exec "$@"', "sh")))
    code, one = in_process(*question, "--library", single)
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out) == json.loads(one) and len(json.loads(out)) == 4, (out, one)


def test_a_memory_left_without_its_row_is_recorded_not_streamed(folder, single, tiny_qwen_dir, tmp_path):
    """What a rank stopped between its memory file and rank 0's row leaves (and a single run
    killed between the two): the next run records the file instead of streaming again."""
    root = shutil.copytree(single, tmp_path / "lib")
    with sqlite3.connect(root / CATALOGUE) as db:
        (memory,) = db.execute("SELECT memory FROM videos WHERE name = 'b.mp4'").fetchone()
        db.execute("DELETE FROM videos WHERE name = 'b.mp4'")
    before = (root / "memories" / memory).stat().st_mtime_ns
    code, out = in_process("index", folder, "--library", root, "--model", tiny_qwen_dir, *BUDGET)
    assert code == 0 and "0 indexed, 4 skipped" in out and lines(out, "skipped b.mp4 (streamed by a run that was"), out
    assert (root / "memories" / memory).stat().st_mtime_ns == before
    check_agrees(root)
    assert_same_library(single, root)
