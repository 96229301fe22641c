"""The model thread: every job that touches the model runs on one thread, one at a time, in
arrival order (MLX state and the sessions are never used from two threads at once).

A request is admitted while fewer than 1 + `queue_limit` jobs are admitted (one running,
`queue_limit` waiting); beyond that it is answered 503 at once, with an OpenAI-style body
and Retry-After. Jobs talk back through Events: `ready`, `piece`..., then `done` or
`error`, put on the HTTP side's asyncio queue from the model thread.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from .protocol import ApiError


class Events:
    """What one job tells the request that waits for it; `cancelled` is set when it went away."""

    first: tuple[str, object] | None = None  # the first event, once the HTTP side has it

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue, self.cancelled = loop, asyncio.Queue(), threading.Event()

    def emit(self, kind: str, payload=None) -> None:
        """From the model thread: ready | piece | done | error."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed (server shutting down): nobody listens
            self.cancelled.set()

    async def next(self) -> tuple[str, object]:
        return await self.queue.get()


class ModelWorker:
    """One thread for the model, with admission control (module docstring)."""

    def __init__(self, queue_limit: int):
        self.queue_limit = queue_limit
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infinipot-model")
        self._lock = threading.Lock()
        self.admitted = self.running = self.rejected = self.finished = 0

    def call(self, fn, *args):
        """Run `fn(*args)` on the model thread and wait for it (startup work; not admitted)."""
        return self._executor.submit(fn, *args).result()

    def submit(self, fn, *args) -> Future:
        """Queue `fn(*args)` on the model thread, or raise a 503 ApiError when the queue is full."""
        with self._lock:
            if self.admitted >= 1 + self.queue_limit:
                self.rejected += 1
                raise ApiError(503, f"the server is busy: one request is running and {self.queue_limit} "
                                    "are waiting (--queue-limit); retry shortly", "server_busy", "server_error")
            self.admitted += 1
        return self._executor.submit(self._run, fn, args)

    def _run(self, fn, args):
        with self._lock:
            self.running = 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self.running = 0
                self.admitted -= 1
                self.finished += 1

    def snapshot(self) -> dict:
        with self._lock:
            return dict(running=self.running, waiting=self.admitted - self.running, queue_limit=self.queue_limit,
                        rejected=self.rejected, finished=self.finished)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
