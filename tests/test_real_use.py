"""Acceptance: the product used as people use it.

`python -m infinipot_mlx.chat VIDEO --model M` with no other flag, on the videos people
have (4K, 1080p, 720p, 480p, vertical, 176x144; 24 to 60 fps and variable frame rate;
mp4v, MJPG, H.264; ten minutes long), long conversations, and Ctrl-C. The Qwen2.5-VL
checkpoint carries the published pixel limits (image max_pixels 12,845,056; the video
processor's 128 .. 768 tokens per frame). Every session asserts n_cached <= capacity after
every forward (INFINIPOT_CHECK_CAP, set in conftest.py), so a broken cap fails the run.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import videos
from terminal import sigint_default
from infinipot_mlx import InfiniPotConfig

QUESTIONS = ["What moved in the video?", "What colour was the bar?"]


def chat(*args, stdin: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1")
    return subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env)


def assert_answered(out: subprocess.CompletedProcess, n_questions: int) -> None:
    assert out.returncode == 0, out.stderr[-2000:]
    answers = [line for line in out.stdout.splitlines() if line.startswith("A: ")]
    assert len(answers) == n_questions, out.stdout[-2000:]
    assert any(a[3:].strip() for a in answers)  # the model said something
    assert "Traceback" not in out.stderr
    assert "100%" in out.stderr  # the progress bar ends at 100%


def cap_and_peak(out: str) -> list[tuple[int, int]]:
    """(peak, capacity) of every progress line and /stats line."""
    return [(int(p), int(c)) for c, p in re.findall(r"/(\d+) tok \(peak (\d+)\)", out)] + \
        [(int(p), int(c)) for c, p in re.findall(r"capacity (\d+) \| peak (\d+)", out)]


# (name, writer(path) -> path): sizes, frame rates and codecs people have
VIDEOS = {
    "4k-24fps-mp4v": lambda d: videos.sized_video(d / "4k.mp4", 3840, 2160, n=48, fps=24.0),
    "1080p-25fps-mjpg": lambda d: videos.sized_video(d / "1080p.avi", 1920, 1080, n=75, fps=25.0, fourcc="MJPG"),
    "720p-30fps-h264": lambda d: videos.h264_video(d / "720p.mp4", n=90, fps=30.0, height=720, width=1280),
    "480p-60fps-mp4v": lambda d: videos.sized_video(d / "480p.mp4", 640, 480, n=180, fps=60.0),
    "vertical-1080x1920-30fps": lambda d: videos.sized_video(d / "vertical.mp4", 1080, 1920, n=60, fps=30.0),
    "176x144-25fps-mjpg": lambda d: videos.sized_video(d / "qcif.avi", 176, 144, n=75, fps=25.0, fourcc="MJPG"),
    "720p-10fps-30s": lambda d: videos.sized_video(d / "30s.mp4", 1280, 720, n=300, fps=10.0),
    "4:3-vfr-h264": lambda d: videos.vfr_video(d / "vfr.mp4", (1 / 30, 1 / 10, 0.5), n=45, height=480, width=640)[0],
}


@pytest.fixture(scope="module")
def video_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real_use")
    return {name: write(folder) for name, write in VIDEOS.items()}


@pytest.mark.parametrize("name", [name for name in VIDEOS if name != "720p-10fps-30s"])
def test_default_flags_stream_the_videos_people_have(video_files, tiny_qwen_published_dir, name):
    out = chat(video_files[name], "--model", tiny_qwen_published_dir, *sum([["-q", q] for q in QUESTIONS], []))
    assert_answered(out, len(QUESTIONS))
    assert all(peak <= cap for peak, cap in cap_and_peak(out.stderr))


@pytest.mark.parametrize("name", ["720p-30fps-h264", "vertical-1080x1920-30fps"])
def test_default_flags_on_llava_onevision(video_files, tiny_llava_dir, name):
    out = chat(video_files[name], "--model", tiny_llava_dir, "-q", QUESTIONS[0])
    assert_answered(out, 1)


def test_ten_minute_video_with_default_flags(tmp_path, tiny_qwen_published_dir):
    video = videos.long_low_res_video(tmp_path / "ten_minutes.mp4", minutes=10, fps=5.0)
    out = chat(video, "--model", tiny_qwen_published_dir, "-q", QUESTIONS[0], "-q", QUESTIONS[1])
    assert_answered(out, 2)
    assert "1200/1200" in out.stderr  # 10 minutes at the default 2 fps, every frame streamed
    assert all(peak <= cap for peak, cap in cap_and_peak(out.stderr))


@pytest.mark.parametrize("model", ["qwen", "llava"])
def test_twenty_question_conversation_holds_the_cap(video_files, tiny_qwen_published_dir, tiny_llava_dir, model):
    """Twenty questions in the interactive prompt, default flags, on a video that fills the cap:
    the conversation outgrows the reserve and the video gives way, under the cap throughout."""
    folder = tiny_qwen_published_dir if model == "qwen" else tiny_llava_dir
    questions = [f"Question {i}: what happened, and what colour was it?" for i in range(20)]
    out = chat(video_files["720p-10fps-30s"], "--model", folder,
               stdin="\n".join(questions + ["/stats", "/quit"]) + "\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("> ") >= 21 and "Traceback" not in out.stderr
    stats = next(line for line in out.stdout.splitlines() if "compressions" in line)
    peak, capacity = cap_and_peak(stats)[0]
    assert peak <= capacity == 6144
    assert int(re.search(r"\((\d+) pinned", stats).group(1)) > 512 + 40  # past the reserve
    gave_way = [int(re.search(rf"{what} (\d+)", stats).group(1)) for what in ("compressions", "turns dropped")]
    assert sum(gave_way) > 0  # the video was compressed, or old turns left


def test_explicit_budget_fits_block_and_frames_by_itself(video_files, tiny_qwen_published_dir):
    """Only --kv-budget and --reserve given: the block and the frame size shrink to fit."""
    out = chat(video_files["1080p-25fps-mjpg"], "--model", tiny_qwen_published_dir, "--kv-budget", 400,
               "--reserve", 128, "-q", QUESTIONS[0])
    assert_answered(out, 1)
    assert all(peak <= cap == 400 for peak, cap in cap_and_peak(out.stderr))


def test_two_hundred_questions_on_a_streaming_video(tiny_qwen_dir):
    """The API: frames keep arriving between 200 questions; the cap holds at every forward,
    the video never falls below its floor once it has reached it, old turns leave."""
    from infinipot_mlx.mlx.backend import load

    session = load(str(tiny_qwen_dir), InfiniPotConfig(capacity=600, reserve=96), check_cap=True)
    rng = np.random.default_rng(0)
    stops = set()
    for i in range(200):
        session.add_frames(rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8))
        "".join(session.ask(f"Question {i}: what changed since the last one?", max_tokens=24))
        stops.add(session.stop_reason)
        assert session.cache.n_cached <= 600
        assert session.cache.n_visual >= min(session.visual_floor(), 16 * session.counters.slots_seen)
    st = session.stats()
    assert st["peak_cached"] <= 600 and st["turns_evicted"] > 150
    assert session.prompt_text().startswith("<|im_start|>system")  # the system prompt stays
    assert stops <= {"eos", "max_tokens", "cap"}


def _start_chat(video, model_dir, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "infinipot_mlx.chat", str(video), "--model", str(model_dir),
                             *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=sigint_default)


def _wait_for(stream, text: str, timeout: float = 120) -> str:
    """Read `stream` until `text` appears (a char at a time: the prompt has no newline)."""
    seen, end = "", time.monotonic() + timeout
    while text not in seen and time.monotonic() < end:
        char = stream.read(1)
        if not char:
            break
        seen += char
    assert text in seen, seen[-2000:]
    return seen


def _wait_for_a_block(stream, timeout: float = 120) -> None:
    """Read the progress bar until its cached count grows past the count it started with."""
    seen, end = "", time.monotonic() + timeout
    while time.monotonic() < end:
        char = stream.read(1)
        if not char:
            break
        seen += char
        counts = [int(c) for c in re.findall(r"cached (\d+)/", seen)]
        if counts and max(counts) > counts[0]:
            return
    raise AssertionError(seen[-2000:])


def test_ctrl_c_at_the_prompt_exits_130(video_files, tiny_qwen_published_dir):
    proc = _start_chat(video_files["480p-60fps-mp4v"], tiny_qwen_published_dir)
    _wait_for(proc.stdout, "> ")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err


def test_ctrl_c_while_streaming_keeps_what_was_seen_and_answers(tmp_path, tiny_qwen_published_dir):
    video = videos.long_low_res_video(tmp_path / "long.mp4", minutes=10, fps=5.0)
    proc = _start_chat(video, tiny_qwen_published_dir, "--max-tokens", 8)
    _wait_for_a_block(proc.stderr)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate("What moved?\n/stats\n/quit\n", timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped at frame" in err and "Traceback" not in err
    frames = int(re.search(r"frames (\d+) \|", out).group(1))
    assert 0 < frames < 1200


def test_an_answer_past_the_cap_compresses_the_video_and_goes_on(tiny_qwen_dir):
    """max_tokens far above the room: the video gives way while the answer is decoded, then
    an old turn leaves, and only then does an answer stop, at the cap, with its reason.
    (The random model's `<|endoftext|>` is taken out of the stop set so that it talks on.)"""
    from dataclasses import replace

    from infinipot_mlx.mlx.backend import load_model

    from infinipot_mlx.stream.session import StreamSession

    model, tokenizer, spec, _ = load_model(str(tiny_qwen_dir))
    session = StreamSession(model, tokenizer, replace(spec, eos_token_ids=()),
                            InfiniPotConfig(capacity=400, reserve=32), check_cap=True)
    session.add_frames(np.random.default_rng(0).integers(0, 256, (40, 112, 112, 3), dtype=np.uint8))
    "".join(session.ask("Describe everything that happened.", max_tokens=150))
    assert session.stop_reason == "max_tokens" and session.counters.tokens_decoded == 149
    assert session.counters.compressions > 0 and session.counters.peak_cached <= 400
    "".join(session.ask("And more?", max_tokens=400))
    assert session.stop_reason == "cap" and session.counters.turns_evicted == 1
    assert session.cache.n_visual == session.visual_floor() and session.cache.n_cached <= 400
    "".join(session.ask("Still there?", max_tokens=4))  # the session goes on
    assert session.cache.n_cached <= 400


def test_positions_follow_each_frames_own_timestamp(tmp_path, tiny_qwen_dir, monkeypatch):
    """A variable-frame-rate file: each slot's M-RoPE time is its first frame's real time."""
    from infinipot_mlx.stream import feed as stream
    from infinipot_mlx.mlx.backend import load
    from infinipot_mlx.video.source import VideoSource

    path, _ = videos.vfr_video(tmp_path / "vfr.mp4", (1 / 30, 1 / 10, 0.9), n=45, height=112, width=112)
    session = load(str(tiny_qwen_dir), InfiniPotConfig(capacity=None, method="full"), fps=2.0)
    times = []
    positions = stream.video_positions

    def record(spec, start, first, slot_times, grid):  # the positions the session computes
        times.extend(slot_times)
        return positions(spec, start, first, slot_times, grid)

    monkeypatch.setattr(stream, "video_positions", record)
    session.add_video(path)
    _, stamps = VideoSource(path, fps=2.0).read()
    expected = stamps[::2] - stamps[0]  # each slot's first sampled frame
    np.testing.assert_allclose(times, expected, atol=1e-3)
    uniform = np.arange(len(expected)) * 2 / 2.0  # what index / fps would have said
    assert np.abs(np.asarray(times) - uniform).max() > 0.5


def test_a_video_whose_name_is_not_utf8_streams(video_files, tiny_qwen_published_dir, tmp_path):
    """Such names once crashed OpenCV with SIGSEGV; the file is a video like any other."""
    name = os.path.join(os.fsencode(tmp_path), b"holiday \xff\xfe clip.mp4")
    with open(video_files["480p-60fps-mp4v"], "rb") as src, open(name, "wb") as dst:
        dst.write(src.read())
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1")
    out = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", name, "--model",
                          str(tiny_qwen_published_dir), "-q", QUESTIONS[0]], capture_output=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr.decode("utf-8", "replace")[-2000:]
    assert out.stdout.decode("utf-8", "replace").count("A: ") == 1


def test_a_second_video_of_another_size_joins_the_same_memory(video_files, tiny_qwen_published_dir):
    """The API: a vertical clip after a landscape one is resized to the session's frame size."""
    from infinipot_mlx.mlx.backend import load

    session = load(str(tiny_qwen_published_dir), InfiniPotConfig(capacity=2000, reserve=128), check_cap=True)
    session.add_video(video_files["720p-30fps-h264"])
    size = session.frame_hw
    session.add_video(video_files["vertical-1080x1920-30fps"])
    assert session.frame_hw == size and session.counters.frames_seen == 6 + 4
    "".join(session.ask("What changed?", max_tokens=4))
    assert session.stop_reason in ("eos", "max_tokens") and session.counters.peak_cached <= 2000
