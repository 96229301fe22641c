"""The video memories a server holds in RAM: LRU under a byte budget, and named live sessions.

A video memory is a StreamSession that has streamed a request's videos (or loaded them from
the library) and holds the state right after them. Every question asked of it runs in
`scratch`: the question, its answer and any compression they cause are undone when the
answer ends, so each request starts from the same post-video memory, whatever was asked
before and by whom (answers do not depend on request order). Named sessions are the
opposite: a live stream that one client feeds and asks, whose questions and answers stay
in it, as in `chat`'s prompt.

Bytes are the bytes each session's cache has allocated for keys and values
(`session.cache.allocated_bytes`: its buffers, with the spare rows it grows into, not only
the live rows of `nbytes`). Named sessions
count toward the budget but are never evicted (at most `max_sessions` of them; DELETE frees
one); video memories leave least recently used first. A memory larger than the budget left
beside the named sessions answers its request and is not held. Only the model thread changes the pool; `snapshot`
(for /v1/stats) may run on any thread, under the pool's lock; it reads byte counts the model
thread recorded, never a session's arrays.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Memory:
    """A held video memory: its session and what it was made from."""

    key: str
    session: object  # a StreamSession in its post-video state
    names: list[str]
    origin: str  # "stream" (encoded here) or "library" (loaded from a library memory file)
    nbytes: int = 0  # its cache's allocated KV bytes, read on the model thread when it is held


class MemoryPool:
    """Video memories by key (LRU under `max_bytes`) and named sessions (at most `max_sessions`)."""

    def __init__(self, max_bytes: int, max_sessions: int):
        self.max_bytes, self.max_sessions = max_bytes, max_sessions
        self.memories: OrderedDict[str, Memory] = OrderedDict()
        self.sessions: dict[str, object] = {}
        self.session_bytes: dict[str, int] = {}
        self.evictions = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Memory | None:
        """The memory of `key`, now the most recently used, or None."""
        with self._lock:
            memory = self.memories.get(key)
            if memory is not None:
                self.memories.move_to_end(key)
            return memory

    def put(self, memory: Memory) -> bool:
        """Hold `memory` (evicting the least recently used); False when it alone is over budget."""
        memory.nbytes = memory.session.cache.allocated_bytes
        with self._lock:
            if memory.nbytes + self._session_bytes() > self.max_bytes:
                return False
            self.memories[memory.key] = memory
            self.memories.move_to_end(memory.key)
            self._fit()
            return True

    def _fit(self) -> None:
        while self.memories and self._total() > self.max_bytes:
            self.memories.popitem(last=False)
            self.evictions += 1

    def _session_bytes(self) -> int:
        return sum(self.session_bytes.values())

    def _total(self) -> int:
        return self._session_bytes() + sum(m.nbytes for m in self.memories.values())

    # ----- named sessions -----------------------------------------------------------------
    def session(self, name: str):
        return self.sessions.get(name)

    def keep_session(self, name: str, session) -> None:
        """Hold (or update) the named session, then evict memories to fit the budget."""
        nbytes = session.cache.allocated_bytes
        with self._lock:
            self.sessions[name], self.session_bytes[name] = session, nbytes
            self._fit()

    def drop_session(self, name: str) -> bool:
        with self._lock:
            self.session_bytes.pop(name, None)
            return self.sessions.pop(name, None) is not None

    @property
    def sessions_full(self) -> bool:
        return len(self.sessions) >= self.max_sessions

    def snapshot(self) -> dict:
        """What is held now, for /v1/stats."""
        with self._lock:
            return dict(memories=len(self.memories), memory_bytes=sum(m.nbytes for m in self.memories.values()),
                        sessions=sorted(self.sessions), session_bytes=self._session_bytes(),
                        held_bytes=self._total(), max_bytes=self.max_bytes, evictions=self.evictions,
                        held=[dict(names=m.names, origin=m.origin, bytes=m.nbytes) for m in self.memories.values()])
