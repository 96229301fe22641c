"""The library on several processes or Macs, under `mlx.launch` (mx.distributed): the group,
gathering Python values from every rank, and the two ways work is shared out.

    mlx.launch --hosts mac1,mac2 -- python -m infinipot_mlx.library index DIR
    mlx.launch -n 2 --backend ring -- python -m infinipot_mlx.library ask "Q"

Without a launcher `group()` has size 1 and nothing here is used: the commands run as they
always did. Under one, every rank runs the same command; the ranks meet only in `gather`
(an all_gather of JSON bytes), so they stay in step: the index in rounds of one video per
rank (sharded.py), the search once at the end (search.py).

- balance: the videos to stream, split by duration (longest first, each to the rank with
  the least seconds so far), so each round pairs videos of about the same length.
- share: the memories to score, each row key to one rank that can read it (the fewest
  so far), so a folder shared by every rank is split, and per-host folders are each scored
  where they are.

A rank that dies breaks the ring: the others' next gather raises PeerLost (one line, exit
2), and mlx.launch sends them SIGTERM, which `Stopping` turns into "finish the video being
streamed, then stop", so only the dead rank's video is lost. A rank already waiting in a
gather when its peer dies may never hear from the ring: its gather runs on a helper thread
while the main thread waits in short joins, so SIGTERM stops it there (PeerLost).
"""

from __future__ import annotations

import json
import signal
import threading

from ..errors import UserError


class PeerLost(UserError):
    """Another rank stopped (killed, or failed) while this one waited for it."""


class _Alone:
    """The group of a process without mlx (a torch-only install): rank 0 of 1."""

    def rank(self) -> int:
        return 0

    def size(self) -> int:
        return 1


def group():
    """The mx.distributed group of this process: size 1 without a launcher (or without mlx)."""
    try:
        import mlx.core as mx
    except ImportError:
        return _Alone()
    return mx.distributed.init()


def gather(value, group) -> list:
    """`value` (anything JSON holds) from every rank, in rank order, on every rank."""
    import mlx.core as mx
    import numpy as np

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)  # (n,)

    def both():
        sizes = np.array(mx.distributed.all_gather(mx.array([data.size], mx.int32), group=group, stream=mx.cpu))
        padded = np.zeros(int(sizes.max()), np.uint8)
        padded[:data.size] = data
        return sizes, np.array(mx.distributed.all_gather(mx.array(padded), group=group, stream=mx.cpu))

    try:
        sizes, rows = _interruptible(both)
    except (RuntimeError, _Stopped) as err:  # "[ring] connection to a peer was lost", SIGTERM, ...
        raise PeerLost(f"rank {group.rank()}: another rank stopped ({err}); what was finished is kept: "
                       "run the same command again to go on") from None
    rows = rows.reshape(group.size(), -1)  # (ranks, longest)
    return [json.loads(bytes(row[:n])) for row, n in zip(rows, sizes.tolist())]


class _Stopped(Exception):
    """SIGTERM while this rank waited in a gather: the peer it waits for is gone."""

    def __str__(self) -> str:
        return "stopped by mlx.launch while waiting for it"


_waiting = threading.Event()  # set while the main thread waits for a gather


def _interruptible(fn):
    """fn() run on a helper thread while the main thread waits in short joins, so that a signal
    handler (Stopping's) runs even when the ring never answers (a peer killed mid-gather)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the main thread
            box["error"] = err

    worker = threading.Thread(target=run, name="gather", daemon=True)
    _waiting.set()
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.05)
    finally:
        _waiting.clear()
    if "error" in box:
        raise box["error"]
    return box["value"]


def balance(durations: list[float], size: int) -> list[list[int]]:
    """Indices of `durations` for each of `size` ranks: longest first, each to the rank with
    the fewest seconds so far (the lowest rank on a tie); each rank's list longest first."""
    shares, loads = [[] for _ in range(size)], [0.0] * size
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        rank = min(range(size), key=lambda r: (loads[r], r))
        shares[rank].append(i)
        loads[rank] += durations[i]
    return shares


def share(keys: list[str], group) -> set[str]:
    """The keys this rank should handle, out of `keys` (those it can): every key held by any
    rank goes to exactly one rank that holds it, the one with the fewest keys so far."""
    held = [set(ks) for ks in gather(sorted(set(keys)), group)]  # per rank
    counts, mine = [0] * group.size(), set()
    for key in sorted(set().union(*held)):
        rank = min((r for r, ks in enumerate(held) if key in ks), key=lambda r: (counts[r], r))
        counts[rank] += 1
        if rank == group.rank():
            mine.add(key)
    return mine


class Stopping:
    """While active, SIGTERM (mlx.launch stopping every rank when one has failed) does not
    kill this process: it sets `asked`, and the caller stops after the video it is on. A
    second SIGTERM kills as usual."""

    def __init__(self):
        self.asked = False

    def _handler(self, signum, frame) -> None:
        self.asked = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if _waiting.is_set():  # no video is being streamed: waiting on is waiting forever
            raise _Stopped()

    def __enter__(self) -> Stopping:
        self.previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)
