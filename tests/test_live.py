"""Live streams (reader.py, locking.py, chat): decoding on a thread into a bounded queue,
real time kept by dropping, questions answered while a video streams, and frames added
from one thread while another asks."""

import subprocess
import sys
import threading
import time

import numpy as np

from infinipot_mlx import InfiniPotConfig
from infinipot_mlx.video.reader import FrameReader
from infinipot_mlx.stream.session import StreamSession
from infinipot_mlx.video.source import VideoSource

import videos


def test_a_file_is_read_whole_and_in_order(moving_shapes_mp4):
    expected_frames, expected_stamps = VideoSource(moving_shapes_mp4, fps=4.0).read()
    reader = FrameReader(VideoSource(moving_shapes_mp4, fps=4.0), depth=2)
    chunks = list(reader.chunks(3))
    assert all(1 <= len(f) <= 3 for f, _ in chunks)
    np.testing.assert_array_equal(np.concatenate([f for f, _ in chunks]), expected_frames)
    np.testing.assert_array_equal(np.concatenate([t for _, t in chunks]), expected_stamps)
    assert reader.dropped == 0 and reader.lag() == 0.0


def test_a_live_source_drops_the_oldest_frames_when_the_model_is_behind(tmp_path):
    """A file paced at its own speed (as a camera delivers) with a consumer slower than real
    time: the queue stays within its depth, frames are dropped and counted, and what is
    handed out keeps its order and real timestamps."""
    path = videos.moving_shapes_video(tmp_path / "live.mp4", n=60, fps=20.0)  # 3 s
    total = len(VideoSource(path, fps=10.0).read()[0])
    reader = FrameReader(VideoSource(path, fps=10.0), realtime=True, depth=3)
    got, most_queued, start = [], 0, time.monotonic()
    for _, stamps in reader.chunks(1):
        got.extend(stamps)
        most_queued = max(most_queued, reader.queue.qsize())
        time.sleep(0.25)  # the model takes 0.25 s a frame; frames come every 0.1 s
    assert time.monotonic() - start >= 2.5  # paced at real time, not read at once
    assert reader.dropped > 0 and len(got) + reader.dropped == total
    assert most_queued <= 3 and np.all(np.diff(got) > 0)
    lossless_lag = total * 0.25 - 3.0  # had every frame been queued: 0.25 s each, for a 3 s video
    assert reader.lag() < lossless_lag / 2  # dropping keeps what the model sees close to now


def test_frames_from_one_thread_while_another_asks(tiny_qwen_dir):
    from infinipot_mlx.mlx.backend import load_model

    model, tok, spec, path = load_model(str(tiny_qwen_dir))
    session = StreamSession(model, tok, spec, InfiniPotConfig(capacity=200, reserve=40, block_slots=2))
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 256, (3, 56, 56, 3), dtype=np.uint8) for _ in range(20)]
    errors = []

    def feed():
        try:
            for block in blocks:
                session.add_frames(block)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    feeder = threading.Thread(target=feed)
    feeder.start()
    answers = ["".join(session.ask(f"Question {i}?", max_tokens=3)) for i in range(4)]
    feeder.join(timeout=120)
    assert not errors and not feeder.is_alive() and len(answers) == 4
    session.flush()
    assert session.counters.frames_seen == 60 and not session.pending
    assert session.counters.peak_cached <= 200 and session.cache.n_cached <= 200


def test_chat_answers_a_question_typed_while_the_video_streams(tiny_qwen_dir, tmp_path):
    path = videos.static_events_video(tmp_path / "ev.mp4", n=32, fps=4.0)  # 8 s, 16 frames at 2 fps
    out = subprocess.run([sys.executable, "-m", "infinipot_mlx.chat", str(path), "--model", str(tiny_qwen_dir),
                          "--realtime", "--block-slots", "2", "--kv-budget", "400", "--reserve", "60",
                          "--max-tokens", "3"], input="What moved?\n/stats\n", capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    asked = [line for line in out.stdout.splitlines() if line.startswith("Q (at frame ")]
    assert len(asked) == 2 and int(asked[0].split()[3].rstrip("):")) < 16  # before the stream ended
    assert "| dropped 0 (live)" in out.stdout  # /stats; the tiny model keeps up with 2 fps
    assert "16/16" in out.stderr.replace("\r", "\n").splitlines()[-1] or "16/16" in out.stderr  # it went on
