"""The one door (door.py) on the real command lines: a saved memory's settings win over the
flags when more video is streamed into it; anything checkable without the model (an absurd
cap, --memory 0, an output path that cannot be written, a port out of range or in use) is
refused before the model loads, with one line and exit 2; an output path is printed as it
was written; the library records every stream flag in its settings key."""

import json
import os
import socket
import subprocess
import sys

import pytest

from infinipot_mlx.stream.memory_file import read
from test_startup import probe
from videos import moving_shapes_video

BUDGET = ["--kv-budget", "700", "--max-tokens", "2"]


def chat(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", *map(str, args)], capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL, env=dict(os.environ, HF_HUB_OFFLINE="1"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """3 s at 10 fps: 3 frames at 1 fps, 6 at the default 2 fps."""
    return moving_shapes_video(tmp_path_factory.mktemp("door") / "clip.mp4", n=30, fps=10.0)


def refused_before_loading(module: str, *argv) -> str:
    """The one error line of a command that must refuse before importing any array library."""
    code, heavy, stderr = probe(module, *argv)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert heavy == [], f"{argv} loaded {heavy} before refusing: {lines}"
    return lines[0]


def test_more_video_into_a_loaded_memory_is_sampled_at_the_memory_fps(tiny_qwen_dir, clip, tmp_path):
    first, second = tmp_path / "first.mem", tmp_path / "second.mem"
    done = chat(clip, "--model", tiny_qwen_dir, "--fps", "1", *BUDGET, "--save", first, "-q", "hi")
    assert done.returncode == 0, done.stderr[-2000:]
    before = read(first)[0]["state"]["counters"]["frames_seen"]
    assert before == 3
    done = chat("--load", first, clip, "--save", second, "-q", "hi", "--max-tokens", "2")  # no --fps: 2.0
    assert done.returncode == 0, done.stderr[-2000:]
    meta = read(second)[0]
    assert meta["fps"] == 1.0 and meta["state"]["counters"]["frames_seen"] == before + 3


@pytest.mark.parametrize("flags, words", [
    (["--memory", "0"], "--memory (the memory budget) 0: give a unit"),
    (["--memory", "0GB"], "must be positive"),
    (["--memory", "150%"], "not a share of memory in (0, 100]%"),
    (["--kv-budget", "1000000000000"], "is beyond any cache"),
    (["--kv-budget", "200000"], "more than the 128000 positions this model can place"),
])
def test_bad_caps_are_refused_before_the_model_loads(tiny_qwen_dir, clip, flags, words):
    line = refused_before_loading("infinipot_mlx.chat", clip, "--model", tiny_qwen_dir, *flags, "-q", "hi")
    assert words in line


@pytest.mark.parametrize("flag, path, words", [
    ("--save", "", "is a folder; give a file path in it"),
    ("--save", "missing/clip.mem", "does not exist or is not writable"),
    ("--memory-map", "missing/map.png", "does not exist or is not writable"),
    ("--memory-map", "missing/map", "does not exist or is not writable"),
])
def test_output_paths_are_refused_before_the_model_loads(tiny_qwen_dir, clip, tmp_path, flag, path, words):
    line = refused_before_loading("infinipot_mlx.chat", clip, "--model", tiny_qwen_dir, flag, tmp_path / path,
                                  "-q", "hi")
    assert line.startswith(f"error: {flag} ") and words in line


def test_the_memory_map_path_printed_is_the_file_written(tiny_qwen_dir, clip, tmp_path):
    done = chat(clip, "--model", tiny_qwen_dir, *BUDGET, "--memory-map", tmp_path / "map", "-q", "hi")
    assert done.returncode == 0, done.stderr[-2000:]
    written = tmp_path / "map.png"
    assert f"memory map drawn to {written}\n" in done.stderr and written.is_file()
    assert not (tmp_path / "map").exists()


def test_a_memory_map_that_cannot_be_drawn_keeps_the_memory_and_the_answers(tiny_qwen_dir, clip, tmp_path,
                                                                            capsys):
    """An output error after streaming (the folder went away after the check) is one line;
    the streamed memory stays and can still be answered from."""
    import argparse

    from infinipot_mlx.cli.chat import draw_memory_map
    from infinipot_mlx.door import open_stream, stream_source

    args = argparse.Namespace(video=str(clip), model=str(tiny_qwen_dir), backend="mlx", device="auto",
                              dtype=None, kv_budget=700, memory=None, reserve=512, block_slots=None, fps=2.0,
                              max_frames=None, max_pixels=None, method="infinipot_v", seed=0, load=None)
    opened = open_stream(args)
    stream_source(opened.session, opened.source, str(clip))
    gone = tmp_path / "gone"
    gone.mkdir()
    gone.rmdir()
    assert draw_memory_map(opened.session, str(gone / "map.png")) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --memory-map") and "kept" in err[0], err
    assert opened.session.counters.frames_seen == 6
    assert "".join(opened.session.ask("What moved?", max_tokens=2))


def test_server_port_out_of_range_is_one_line_before_loading(tiny_qwen_dir):
    line = refused_before_loading("infinipot_mlx.server", "--model", tiny_qwen_dir, "--port", "99999")
    assert "--port 99999 is not a TCP port" in line


def test_server_port_in_use_is_one_line_before_loading(tiny_qwen_dir):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = refused_before_loading("infinipot_mlx.server", "--model", tiny_qwen_dir, "--port", port)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "another --port" in line


def test_the_size_flags_share_one_parser():
    line = refused_before_loading("infinipot_mlx.server", "--max-body-bytes", "6")
    assert "--max-body-bytes 6: give a unit" in line
    line = refused_before_loading("infinipot_mlx.server", "--max-memories-bytes", "150%")
    assert "not a share of memory in (0, 100]%" in line


def test_the_three_front_ends_say_the_same_line_for_the_same_flag(tmp_path):
    lines = [refused_before_loading("infinipot_mlx.chat", "v.mp4", "--kv-budget", "300", "-q", "hi"),
             refused_before_loading("infinipot_mlx.server", "--kv-budget", "300"),
             refused_before_loading("infinipot_mlx.library", "index", tmp_path, "--kv-budget", "300")]
    assert len(set(lines)) == 1 and "must be above the reserve" in lines[0], lines


def test_library_index_records_every_stream_flag_in_its_key(tiny_qwen_dir, clip, tmp_path):
    from infinipot_mlx.cli.library import main
    from infinipot_mlx.library import Catalogue

    folder = tmp_path / "videos"
    folder.mkdir()
    os.link(clip, folder / "clip.mp4")
    base = ["index", folder, "--library", tmp_path / "lib", "--model", tiny_qwen_dir, "--kv-budget", "700"]
    for extra in ([], ["--max-frames", "4"], ["--method", "uniform"], ["--block-slots", "1"]):
        assert main([str(a) for a in base + extra]) == 0
    with Catalogue(tmp_path / "lib") as catalogue:
        settings = [json.loads(e.settings) for e in catalogue.entries()]
    assert len(settings) == 4
    assert {s.get("max_frames") for s in settings} == {None, 4}
    assert {s["config"]["method"] for s in settings} == {"infinipot_v", "uniform"}
    assert {s["config"]["block_slots"] for s in settings} == {None, 1}


def test_library_index_plans_a_memory_budget_and_records_it(tiny_qwen_dir, clip, tmp_path, capsys):
    """`index --memory` plans the cap as chat does (MLX); its key holds the budget, `list` shows
    it, and `ask` answers from the planned memory."""
    from infinipot_mlx.cli.library import main

    folder = tmp_path / "videos"
    folder.mkdir()
    os.link(clip, folder / "clip.mp4")
    lib = ["--library", str(tmp_path / "lib")]
    assert main(["index", str(folder), *lib, "--model", str(tiny_qwen_dir), "--memory", "400MB"]) == 0
    assert "done    clip.mp4" in capsys.readouterr().out
    assert main(["list", *lib]) == 0
    assert "(kv memory 400MB, 2 fps, mlx)" in capsys.readouterr().out
    assert main(["ask", "What moved?", *lib, "--max-tokens", "2"]) == 0
    assert capsys.readouterr().out.startswith("1. clip.mp4  ")  # ranked: rank, video, mm:ss, score, answer
