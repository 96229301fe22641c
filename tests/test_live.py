"""Live streams (reader.py, locking.py, chat): decoding on a thread into a bounded queue,
real time kept by dropping, questions answered while a video streams, and frames added
from one thread while another asks."""

import re
import subprocess
import sys
import threading

import numpy as np
import pytest

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


class Exhausted:
    """A VideoSource whose frames() sets `done` once the reader has taken its last frame
    (queued it, or dropped for it), before the reader queues the end."""

    def __init__(self, source):
        self.source, self.done = source, threading.Event()

    def frames(self):
        yield from self.source.frames()
        self.done.set()


class SteppedClock:
    """Time the test moves by hand: the reader's sleep(d) blocks until the test has advanced
    the clock to its moment, and advance() returns once the reader has queued every frame due
    by then (it sleeps towards a later one, or it has taken the source's last frame)."""

    def __init__(self):
        self.now, self.asleep_until = 0.0, None
        self.cond = threading.Condition()

    def __call__(self) -> float:
        with self.cond:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.cond:
            wake = self.now + seconds
            if self.now >= wake:
                return
            self.asleep_until = wake
            self.cond.notify_all()
            assert self.cond.wait_for(lambda: self.now >= wake, timeout=60)
            self.asleep_until = None

    def advance(self, to: float, source: Exhausted, more_frames: bool) -> None:
        with self.cond:
            self.now = to
            self.cond.notify_all()
            if more_frames:  # the reader goes to sleep for the next frame after `to`
                assert self.cond.wait_for(lambda: (self.asleep_until or 0) > to, timeout=60)
        if not more_frames:
            assert source.done.wait(timeout=60)


def test_a_live_source_drops_exactly_the_frames_the_model_cannot_take(tmp_path):
    """A file paced at its own speed (as a camera delivers: a frame every 0.125 s) and a model
    that takes 0.3 s a frame, on a clock the test steps: queue depth 2, the oldest frame gives
    way. By hand: at 0.6 s frame 4 pushes out 2; at 0.9 s 6 and 7 push out 4 and 5; at 1.2 s 9
    pushes out 7; at 1.5 s 11 pushes out 9. The end waits for room and drops nothing."""
    path = videos.moving_shapes_video(tmp_path / "live.mp4", n=12, fps=8.0)
    stamps = VideoSource(path, fps=8.0).read()[1]
    assert stamps.tolist() == [i / 8 for i in range(12)]
    clock, source = SteppedClock(), Exhausted(VideoSource(path, fps=8.0))
    reader = FrameReader(source, realtime=True, depth=2, clock=clock, sleep=clock.sleep)
    seen, lags, t = [], [], 0.0
    clock.advance(0.0, source, more_frames=True)
    for _, got in reader.chunks(1):  # the model starts on a frame at t and is busy until t + 0.3
        seen.extend(got.tolist())
        lags.append(reader.lag())
        assert reader.queue.qsize() <= 2
        t = round(t + 0.3, 6)
        clock.advance(t, source, more_frames=t < stamps[-1])
    assert seen == [stamps[i] for i in (0, 1, 3, 6, 8, 10, 11)]
    assert reader.dropped == 5 and len(seen) + reader.dropped == len(stamps)
    assert lags == pytest.approx([t - ts for t, ts in zip(np.arange(7) * 0.3, seen)], abs=1e-9)


def test_a_file_read_at_the_models_pace_drops_nothing(tmp_path):
    """Not live: the reader waits for room, whatever the depth; nothing is dropped, no lag."""
    path = videos.moving_shapes_video(tmp_path / "file.mp4", n=12, fps=8.0)
    reader = FrameReader(VideoSource(path, fps=8.0), depth=1)
    seen = np.concatenate([t for _, t in reader.chunks(1)])
    assert seen.tolist() == [i / 8 for i in range(12)] and reader.dropped == 0 and reader.lag() == 0.0


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
    at = int(asked[0].split()[3].rstrip("):"))
    assert len(asked) == 2
    assert re.search(r"\| dropped \d+ \(live\)", out.stdout)  # /stats has the live source's drops
    bar = [seg for seg in re.split(r"[\r\n]", out.stderr) if seg.startswith("streaming")]
    seen, total = map(int, re.search(r" (\d+)/(\d+) ", bar[-1]).groups())
    assert seen == total and at < seen <= 16  # asked mid-stream; the stream went on to its end
