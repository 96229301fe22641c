"""The video library (python -m infinipot_mlx.library): index a folder once into saved
memories and a SQLite catalogue, skip what is indexed, list, ask each memory; a broken video
is recorded as failed and the run goes on; Ctrl-C and kill -9 lose nothing committed and
the next run finishes; bad input is one line and exit 2.

The CLI runs in-process (main(argv), the same code as `python -m`) where a subprocess adds
only import time, and as a subprocess where it is signalled."""

import contextlib
import io
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from infinipot_mlx.cli import chat
from infinipot_mlx.cli.library import main
from infinipot_mlx.library import CATALOGUE, Catalogue
from infinipot_mlx.stream.memory_file import content_hash, model_identity, read
from terminal import sigint_default
from videos import long_low_res_video, moving_shapes_video, non_video_file, static_events_video

BUDGET = ["--kv-budget", "700"]  # the default reserve (512) leaves room for 3 slots of 56 tokens


def library(*args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m infinipot_mlx.library ARGS`, in-process."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:  # argparse's one-line errors (OneLineParser) exit 2
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def check_agrees(root, settled: bool = True) -> list:
    """Every done row's memory loads (checksum verified) and holds its video; the memories
    folder holds exactly the done rows' files (no orphan, no temporary) once a run has ended
    (`settled`; after a kill -9 it may also hold the file being written). Returns the rows."""
    with Catalogue(root) as catalogue:
        entries = catalogue.entries()
        done = [e for e in entries if e.status == "done"]
        for e in done:
            meta, tensors = read(catalogue.memory_path(e))
            assert meta["state"]["videos"][0]["content"] == e.content == content_hash(e.path)
            assert meta["state"]["counters"]["slots_seen"] >= 1 and "0.keys" in tensors
        files, rows = {p.name for p in catalogue.memories.iterdir()}, {e.memory for e in done}
        assert (files == rows) if settled else (rows <= files and len(files - rows) <= 1), (files, rows)
    return entries


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three short videos (one in a subfolder, MJPG) and a text file named .mp4."""
    root = tmp_path_factory.mktemp("videos_to_index")
    moving_shapes_video(root / "shapes.mp4", n=30, fps=10.0)  # 3.0 s: 6 frames at 2 fps
    static_events_video(root / "events.mp4", n=40, fps=4.0)  # 10 s: 20 frames
    (root / "trips").mkdir()
    moving_shapes_video(root / "trips" / "short.avi", n=16, fps=8.0, fourcc="MJPG")  # 2 s
    non_video_file(root / "notes.mp4")
    return root


@pytest.fixture(scope="module")
def indexed(folder, tiny_qwen_dir, tmp_path_factory):
    """The first index run of `folder`: (library folder, exit code, stdout, stderr)."""
    root, out, err = tmp_path_factory.mktemp("library"), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["index", str(folder), "--library", str(root), "--model", str(tiny_qwen_dir), *BUDGET])
    return root, code, out.getvalue(), err.getvalue()


def test_index_records_done_and_failed_and_goes_on(indexed, tiny_qwen_dir):
    tmp_path, code, out, err = indexed
    assert code == 0, err
    assert sorted(line.split()[1] for line in lines(out, "done")) == ["events.mp4", "shapes.mp4", "trips/short.avi"]
    assert lines(out, "failed  notes.mp4: could not open") and "3 indexed, 0 skipped, 1 failed" in out
    assert "library" in err and "video" in err and "frame" in err  # the two progress bars
    entries = {e.name: e for e in check_agrees(tmp_path)}
    assert entries["notes.mp4"].status == "failed" and entries["notes.mp4"].memory is None
    assert "could not open" in entries["notes.mp4"].reason and "\n" not in entries["notes.mp4"].reason
    assert entries["shapes.mp4"].duration == pytest.approx(3.0)
    assert entries["events.mp4"].duration == pytest.approx(10.0)
    meta, _ = read(tmp_path / "memories" / entries["events.mp4"].memory)
    assert meta["model"] == model_identity(tiny_qwen_dir) and meta["fps"] == 2.0
    assert meta["config"]["capacity"] == 700 and meta["state"]["counters"]["slots_seen"] == 10
    assert meta["state"]["videos"][0]["name"] == "events.mp4"
    with sqlite3.connect(tmp_path / CATALOGUE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_second_run_skips_everything(indexed, folder, tiny_qwen_dir, capsys):
    root = indexed[0]
    before = {p.name: p.stat().st_mtime_ns for p in (root / "memories").iterdir()}
    rows = check_agrees(root)
    code, out, err = library("index", folder, "--library", root, "--model", tiny_qwen_dir, *BUDGET, capsys=capsys)
    assert code == 0, err
    assert len(lines(out, "skipped")) == 4 and not lines(out, "done") and "0 indexed, 4 skipped, 0 failed" in out
    assert "failed before: could not open" in out and "--retry-failed" in out
    assert {p.name: p.stat().st_mtime_ns for p in (root / "memories").iterdir()} == before
    assert check_agrees(root) == rows


def test_other_settings_or_another_model_make_new_rows(tiny_qwen_dir, build_tiny, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    moving_shapes_video(one / "clip.mp4", n=20, fps=10.0)
    root = tmp_path / "lib"
    other = build_tiny("qwen2_5_vl", tmp_path / "other_model", "float32", 1)  # same shapes, other weights
    for model, extra in ((tiny_qwen_dir, []), (tiny_qwen_dir, ["--fps", "1"]), (other, []), (tiny_qwen_dir, [])):
        code, out, err = library("index", one, "--library", root, "--model", model, *BUDGET, *extra, capsys=capsys)
        assert code == 0, err
    assert "skipped clip.mp4" in out  # the last run repeats the first
    entries = check_agrees(root)
    assert len(entries) == 3 and {e.model_name for e in entries} == {tiny_qwen_dir.name, other.name}
    code, out, _ = library("list", "--library", root, capsys=capsys)
    assert code == 0 and len(lines(out, "clip.mp4")) == 3 and "1 fps" in out and "2 fps" in out


def test_a_quantized_library_holds_smaller_memories_that_answer_as_chat_does(tiny_qwen_dir, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    moving_shapes_video(one / "clip.mp4", n=30, fps=10.0)
    sizes, quantized = {}, ["--kv-bits", "4", "--kv-group-size", "32"]
    for name, extra in (("float", []), ("4-bit", quantized)):
        code, out, err = library("index", one, "--library", tmp_path / name, "--model", tiny_qwen_dir, *BUDGET,
                                 *extra, capsys=capsys)
        assert code == 0, err
        (entry,) = check_agrees(tmp_path / name)
        sizes[name] = entry.memory_bytes
        assert entry.memory_bytes == (tmp_path / name / "memories" / entry.memory).stat().st_size
    meta, _ = read(tmp_path / "4-bit" / "memories" / entry.memory)
    assert meta["kv_quantization"] == dict(mode="affine", bits=4, group_size=32)
    assert sizes["float"] > 2 * sizes["4-bit"]  # float32 KV: 128 bytes per row and head, 4 bits: 24
    assert chat.main([str(one / "clip.mp4"), "--model", str(tiny_qwen_dir), *BUDGET, *quantized,
                      "--max-tokens", "6", "-q", "What moved?"]) == 0
    said = " ".join(capsys.readouterr().out.split("\nA: ", 1)[1].split())
    code, out, err = library("ask", "What moved?", "--library", tmp_path / "4-bit", "--max-tokens", 6, capsys=capsys)
    assert code == 0 and [(n, a) for _, n, _, _, a in ranked(out)] == [("clip.mp4", said)], (out, err)


def test_list_shows_one_line_per_video(indexed, tiny_qwen_dir, capsys):
    code, out, err = library("list", "--library", indexed[0], capsys=capsys)
    assert code == 0, err
    rows = out.splitlines()
    assert [row.split()[0] for row in rows] == ["events.mp4", "notes.mp4", "shapes.mp4", "trips/short.avi"]
    for row, duration in zip(rows, ["0:10", "-", "0:03", "0:02"]):
        assert row.split()[1] == duration and tiny_qwen_dir.name in row and "kv 700" in row
    assert rows[0].endswith("  done") and rows[2].endswith("  done") and rows[3].endswith("  done")
    assert "kB" in rows[2] or "MB" in rows[2]
    assert "failed: could not open" in rows[1]
    assert time.strftime("%Y-") in rows[0]  # the date it was indexed


def ranked(out: str) -> list[tuple[int, str, str, float, str]]:
    """(rank, name, mm:ss, score, answer) of each line `ask` printed."""
    found = []
    for line in out.splitlines():
        rank, name, clock, score, *answer = line.split(None, 4)
        found.append((int(rank.rstrip(".")), name, clock, float(score), (answer or [""])[0]))
    return found


def test_ask_answers_per_video_as_chat_does(indexed, folder, tiny_qwen_dir, capsys):
    """`ask` answers from each saved memory what `chat VIDEO -q Q` answers from the video,
    and ranks the videos by score, best first."""
    root = indexed[0]
    assert chat.main([str(folder / "shapes.mp4"), "--model", str(tiny_qwen_dir), *BUDGET, "--max-tokens", "6",
                      "-q", "What moved?"]) == 0
    said = " ".join(capsys.readouterr().out.split("\nA: ", 1)[1].split())  # the answer, on one line
    code, out, err = library("ask", "What moved?", "--library", root, "--max-tokens", 6, "--video", "shapes",
                             capsys=capsys)
    assert code == 0 and [(r, n, a) for r, n, _, _, a in ranked(out)] == [(1, "shapes.mp4", said)], (out, err)
    code, out, err = library("ask", "What moved?", "--library", root, "--max-tokens", 6, capsys=capsys)
    hits = ranked(out)
    assert code == 0 and [h[0] for h in hits] == [1, 2, 3], err
    assert sorted(h[1] for h in hits) == ["events.mp4", "shapes.mp4", "trips/short.avi"]  # not the failed one
    assert [h[3] for h in hits] == sorted((h[3] for h in hits), reverse=True)
    assert [h[4] for h in hits if h[1] == "shapes.mp4"] == [said]


def test_ask_evidence_gives_a_moment_of_the_video(indexed, capsys):
    code, out, err = library("ask", "What moved?", "--library", indexed[0], "--max-tokens", 2, "--video", "events",
                             "--evidence", capsys=capsys)
    assert code == 0, err
    (rank, name, clock, score, answer), = ranked(out)
    assert (rank, name) == (1, "events.mp4") and 0 <= score <= 1 and "% of the attention)" in answer
    assert 0 <= int(clock[:2]) * 60 + int(clock[3:5]) <= 10  # events.mp4 lasts 10 s


def test_ask_with_a_damaged_memory_answers_the_others(indexed, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(indexed[0], root)
    with Catalogue(root) as catalogue:
        damaged = {e.name: catalogue.memory_path(e) for e in catalogue.entries("done")}["events.mp4"]
    damaged.write_bytes(damaged.read_bytes()[:1000])
    code, out, err = library("ask", "What moved?", "--library", root, "--max-tokens", 3, capsys=capsys)
    assert code == 2 and "Traceback" not in err
    assert lines(err, "error: events.mp4: ") and "truncated or damaged" in err
    assert sorted(h[1] for h in ranked(out)) == ["shapes.mp4", "trips/short.avi"]


def test_a_removed_memory_is_listed_missing_and_indexed_again(indexed, folder, tiny_qwen_dir, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(indexed[0], root)
    with Catalogue(root) as catalogue:
        (catalogue.memory_path(next(e for e in catalogue.entries("done") if e.name == "shapes.mp4"))).unlink()
    code, out, _ = library("list", "--library", root, capsys=capsys)
    assert "missing: its memory file" in lines(out, "shapes.mp4")[0]
    code, out, err = library("index", folder, "--library", root, "--model", tiny_qwen_dir, *BUDGET, capsys=capsys)
    assert code == 0 and lines(out, "done    shapes.mp4") and "1 indexed, 3 skipped" in out, err
    check_agrees(root)


def test_the_reference_backend(tiny_qwen_dir, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    moving_shapes_video(one / "clip.mp4", n=20, fps=10.0)
    root = tmp_path / "lib"
    code, out, err = library("index", one, "--library", root, "--model", tiny_qwen_dir, "--backend", "reference",
                             "--device", "cpu", *BUDGET, capsys=capsys)
    assert code == 0 and lines(out, "done    clip.mp4"), err
    meta, _ = read(root / "memories" / check_agrees(root)[0].memory)
    assert meta["backend"] == "TorchBackend"
    code, out, err = library("list", "--library", root, capsys=capsys)
    assert "reference" in out
    code, out, err = library("ask", "What moved?", "--library", root, "--device", "cpu", "--max-tokens", 3,
                             capsys=capsys)
    assert code == 0 and [h[:2] for h in ranked(out)] == [(1, "clip.mp4")], err


def test_a_done_row_needs_its_memory_file(indexed, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(indexed[0], root)
    with Catalogue(root) as catalogue:
        entry = catalogue.entries("done")[0]
        entry.memory = "never-written.mem"
        with pytest.raises(ValueError, match="written memory file"):
            catalogue.record(entry)
    check_agrees(root)


# ----- interrupted runs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_folder(tmp_path_factory):
    """A 1 s video first, then three of about a minute (about a second each to index here)."""
    root = tmp_path_factory.mktemp("long_videos")
    moving_shapes_video(root / "a.mp4", n=10, fps=10.0)
    for i, name in enumerate("bcd"):
        long_low_res_video(root / f"{name}.mp4", minutes=1.0 + 0.1 * i, fps=5.0)  # distinct contents
    return root


def start_index(folder, root, model, stderr) -> tuple[subprocess.Popen, int, int]:
    """An index run whose stdout is a pipe the test also holds the writing end of (the gate:
    fill_pipe). Returns (child, the reading end, the test's writing end)."""
    read_end, write_end = os.pipe()
    child = subprocess.Popen([sys.executable, "-m", "infinipot_mlx.library", "index", str(folder), "--library",
                              str(root), "--model", str(model), *BUDGET], stdout=write_end, stderr=stderr,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"), preexec_fn=sigint_default)
    return child, read_end, write_end


def fill_pipe(write_end: int) -> None:
    """Fill the pipe to the brim with '#' and let go of our end: the child's next line on
    stdout waits until the test reads, so the run cannot end (it has a summary to print)."""
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"#" * 512)
    os.close(write_end)


def signal_after_first_done(child, read_end: int, write_end: int, signum: int) -> tuple[str, list[str]]:
    """Read stdout until a video's "done" line, close the gate, send `signum`, then read the
    rest. Returns (that line, the result lines printed up to it)."""
    before, pending = [], b""
    with os.fdopen(read_end, "rb", buffering=0) as out:
        while not before or not before[-1].startswith("done"):
            ready, _, _ = select.select([out], [], [], 5.0)  # wake now and then to see the child
            if not ready:
                assert child.poll() is None, "the run ended before any video was done"
                continue
            pending += out.read(4096)
            *done_lines, pending = pending.split(b"\n")
            before += [line.decode() for line in done_lines]
            before = before[:next((i + 1 for i, x in enumerate(before) if x.startswith("done")), None)]
        fill_pipe(write_end)
        child.send_signal(signum)
        while out.read(1 << 16):  # the padding, and whatever the child prints after the signal
            pass
    return before[-1], before

def test_ctrl_c_then_kill_9_then_a_run_that_finishes(long_folder, tiny_qwen_dir, tmp_path):
    """Each signal lands while the run is gated at its next line on stdout (fill_pipe): after a
    video's "done" line and before the run can end, whatever the machine's speed."""
    root, log = tmp_path / "lib", tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # Ctrl-C after the first video: exit 130, it stays committed
        child, out, gate = start_index(long_folder, root, tiny_qwen_dir, stderr)
        assert signal_after_first_done(child, out, gate, signal.SIGINT)[0].split()[1] == "a.mp4"
        assert child.wait(timeout=120) == 130
    assert "interrupted (Ctrl-C)" in log.read_text() and "Traceback" not in log.read_text()
    first = [e.name for e in check_agrees(root)]
    assert first in (["a.mp4"], ["a.mp4", "b.mp4"])  # b: done in the instant before the signal

    with open(log, "w") as stderr:  # kill -9 after the next video, in the middle of the run
        child, out, gate = start_index(long_folder, root, tiny_qwen_dir, stderr)
        line, before = signal_after_first_done(child, out, gate, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    assert [b.split()[1] for b in before] == [*first, line.split()[1]]  # skipped, skipped..., done
    done = check_agrees(root, settled=False)
    names = [e.name for e in done]
    assert names[:len(first) + 1] == [*first, line.split()[1]] and len(done) < 4  # gated: the run went on

# ----- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["index", "{tmp}/missing"], "is not a folder"),
    (["index", "{tmp}"], "no video files in"),
    (["index", "{videos}", "--fps", "0"], "--fps must be positive"),
    (["index", "{videos}", "--kv-budget", "100"], "must be above the reserve"),
    (["index", "{videos}", "--max-pixels", "10"], "below one visual token"),
    (["index", "{videos}", "--model", "{tmp}/no_model"], "does not exist"),
    (["index", "{videos}", "--backend", "tpu"], "invalid choice"),
    (["index"], "required: folder"),
    (["list", "--library", "{tmp}/nothing"], "no video library at"),
    (["list", "--library", "{notdb}"], "cannot open the library catalogue"),
    (["list", "--bogus"], "unrecognized arguments"),
    (["ask", " "], "the question is empty"),
    (["ask", "Hi?", "--max-tokens", "0"], "--max-tokens must be a positive integer"),
    (["ask", "Hi?", "--video", "nope.mp4"], "no indexed video named 'nope.mp4'"),
    (["ask", "Hi?", "--top", "0"], "--top must be a positive integer"),
    (["ask", "Hi?", "--top", "x"], "invalid int value"),
    (["ask", "Hi?", "--model", "{tmp}/no_model"], "does not exist"),
    ([], "required"),
])
def test_bad_input_is_one_line_and_exit_2(indexed, folder, tmp_path, capsys, monkeypatch, args, words):
    notdb = tmp_path / "notdb"
    notdb.mkdir()
    (notdb / CATALOGUE).write_text("not a database\n" * 100)
    monkeypatch.setenv("INFINIPOT_LIBRARY", str(indexed[0]))  # the default --library
    args = [a.format(tmp=tmp_path, videos=folder, notdb=notdb) for a in args]
    code, out, err = library(*args, capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and words in err, err
    assert not os.path.exists(tmp_path / "nothing") and not (tmp_path / "no_model").exists()


def test_a_missing_folder_from_the_shell(tmp_path):
    done = subprocess.run([sys.executable, "-m", "infinipot_mlx.library", "index", str(tmp_path / "nope"),
                           "--library", str(tmp_path / "lib")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is not a folder" in done.stderr
    assert not (tmp_path / "lib").exists()


def test_a_model_that_cannot_load_ends_the_run_and_fails_no_video(folder, tiny_qwen_dir, tmp_path, capsys):
    """A checkpoint folder without weights is bad input to the command (exit 2), found at the
    first video that needs the model; no video is recorded as failed for it."""
    empty = tmp_path / "no_weights"
    empty.mkdir()
    shutil.copy(tiny_qwen_dir / "config.json", empty)
    code, out, err = library("index", folder, "--library", tmp_path / "lib", "--model", empty, *BUDGET,
                             capsys=capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no *.safetensors weights"), err
    assert "Traceback" not in err and check_agrees(tmp_path / "lib") == []
