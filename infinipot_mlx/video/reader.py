"""Decoding off the model's path: a thread reads, samples and resizes a VideoSource's frames
into a bounded queue while the session encodes blocks.

A file is read as fast as the model takes it: when the queue is full the reader waits, and
no frame is lost. A live source (a camera, a stream URL, or a file paced at its own speed
with `realtime=True`) keeps real time instead: when the model falls behind, the oldest
queued frame gives way and is counted in `dropped`, so the queue never grows without bound
and what the model sees stays close to now. `lag()` says how far behind real time the
newest frame handed to the model is. Every kept frame carries its own timestamp.

Time comes from two seams, `clock` (seconds, monotonic) and `sleep(seconds)`, by default the
wall clock and a wait that stop() interrupts. A caller that drives its own time (a simulation,
a test that steps the clock) passes both; its sleep must return for stop() to take effect.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

_END = object()  # queued after the last frame


class FrameReader:
    """A VideoSource read on a thread into a bounded queue (module docstring).

    Args:
        source: a VideoSource (frame_size already set for the session's cap).
        live: drop the oldest frame when the queue is full, instead of waiting.
        realtime: pace a file at its timestamps, as a camera would deliver it.
        depth: frames the queue holds.
        clock: () -> seconds, monotonic; paces a realtime file and measures lag().
        sleep: (seconds) -> None, the reading thread's wait for a realtime frame's moment;
            None: wait on the reader's stop event (stop() wakes it).
    """

    def __init__(self, source, live: bool = False, realtime: bool = False, depth: int = 32,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None):
        self.source, self.live, self.realtime = source, live or realtime, realtime
        self.clock, self.sleep = clock, sleep
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.dropped = 0  # frames a live source lost because the model was behind
        self.error: BaseException | None = None  # what stopped the reader, re-raised by chunks()
        self._stop = threading.Event()
        self._t0: float | None = None  # wall clock when the first frame was decoded
        self._last_ts: float | None = None  # timestamp of the newest frame handed out
        self._first_ts = 0.0
        self._thread = threading.Thread(target=self._run, name="frame-reader", daemon=True)
        self._thread.start()

    # ----- the reading thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            for ts, frame in self.source.frames():
                if self._t0 is None:
                    self._t0, self._first_ts = self.clock(), ts
                if self.realtime:  # a file shown at its own pace: wait for the frame's moment
                    (self.sleep or self._stop.wait)(max(0.0, ts - self._first_ts - (self.clock() - self._t0)))
                if not self._put((ts, frame)):
                    return
        except BaseException as err:  # a decoding error surfaces in the consuming thread
            self.error = err
        finally:  # the end waits for room: it never displaces a frame the model can still take
            self._put(_END, drop=False)  # when stopped, nobody reads on: chunks() sees the thread end

    def _put(self, item, drop: bool = True) -> bool:
        """Queue `item`; False once stopped. A live source drops its oldest frame for room
        (unless drop is False: then it waits, as a file does)."""
        while not self._stop.is_set():
            try:
                if self.live and drop:
                    self.queue.put_nowait(item)
                else:
                    self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                if self.live and drop:
                    with contextlib.suppress(queue.Empty):
                        self.queue.get_nowait()
                        self.dropped += 1  # the oldest frame gives way
        return False

    # ----- the consuming side ------------------------------------------------------------------
    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(frames (k, H, W, 3) uint8, timestamps (k,) s) with 1 <= k <= n: what is queued,
        waiting for at least one frame. Ends with the source; re-raises the reader's error."""
        done = False
        while not done:
            items = [self._get()]
            while len(items) < n and not self.queue.empty():
                items.append(self.queue.get_nowait())
            done = any(item is _END for item in items)
            items = [item for item in items if item is not _END]
            if items:
                self._last_ts = items[-1][0]
                yield np.stack([f for _, f in items]), np.array([t for t, _ in items], np.float64)
        if self.error is not None:
            raise self.error

    def _get(self):
        while True:  # a short timeout keeps Ctrl-C responsive in the consuming thread
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self.queue.empty():
                    return _END

    def lag(self) -> float:
        """Seconds the newest frame handed out is behind real time (0 for a file read at the
        model's pace, which has no real time to keep)."""
        if not self.live or self._t0 is None or self._last_ts is None:
            return 0.0
        return max(0.0, (self.clock() - self._t0) - (self._last_ts - self._first_ts))

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the reading thread has ended (source done, error or stop); True if so."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop reading (idempotent); the thread ends within a queue timeout."""
        self._stop.set()
        self._thread.join(timeout=5.0)
