"""One session, many threads: the session's public methods run one at a time.

Frames can be added from a reader or camera thread while another thread asks: add_frames,
flush, add_video, ask, save, load_memory and reset each hold the session's lock (an RLock,
so one may call another). An ask is one hold of it, from the flush of queued frames and the
closing of the video, through the question's prefill, to the answer's last token: it begins
when the answer is first read, so frames added before then come before the question, and
frames that arrive meanwhile wait and are streamed right after the answer. Consume an answer
in the thread that started it.
"""

from __future__ import annotations

import functools


def serialized(method):
    """Run `method` holding `self._lock`."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


def serialized_generator(method):
    """Iterate the generator `method` holding `self._lock` until it ends or is closed."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            yield from method(self, *args, **kwargs)
    return locked
