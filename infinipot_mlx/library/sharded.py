"""`library index` under mlx.launch: the videos split across ranks, one catalogue writer.

Rank 0 alone opens the catalogue (SQLite is not safe to share between Macs over SMB/NFS:
its WAL index is shared memory, which a network folder does not share). It sorts the
folder out first, as the single-process run does (skipped, failed unreadable, memories left
by a stopped run recorded) and sends each rank its share of the videos to stream, balanced
by duration (distributed.balance). Then, round after round, each rank streams its next video
and writes its memory file into the library's memories folder; rank 0 records its own row at
once, then gathers every rank's row and line, records them and prints them: one progress
report, at rank 0. Ranks other than 0 print nothing but their errors.

Kill -9 of one rank: the others' next gather fails (PeerLost) and mlx.launch sends them
SIGTERM, which lets each finish the video it is streaming (distributed.Stopping): rank 0
records its own, another rank's memory file is recorded by the next run (Indexer._adopt).
So only the killed rank's video is lost, and the next run streams nothing twice.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..errors import UserError
from . import distributed
from .catalogue import Entry
from .indexer import Indexer, probe_duration


class Stopped(UserError):
    """mlx.launch stopped this rank (another one failed) after the video it was on."""


def plan(indexer: Indexer, videos: list[Path], folder: Path, size: int, counts: dict, bar) -> list[list]:
    """Rank 0: triage every video (Indexer.triage: skips and failures recorded and said), then
    [[name, content], ...] to stream for each rank, balanced by duration."""
    todo = []
    for video in videos:
        name = video.relative_to(folder).as_posix()
        outcome, content = indexer.triage(video, name)
        if outcome == "stream":
            todo.append([name, content])
        else:
            counts[outcome] += 1
            bar.update(1)
    durations = [probe_duration(folder / name) or 0.0 for name, _ in todo]
    return [[todo[i] for i in share] for share in distributed.balance(durations, size)]


def index_rounds(indexer: Indexer, shares: list[list], folder: Path, group, counts: dict | None, bar) -> None:
    """Stream this rank's share, one video per round; every rank gathers the rows of each
    round and rank 0 records them (`counts`, `bar`: rank 0's; None elsewhere)."""
    mine = shares[group.rank()]
    with distributed.Stopping() as stopping:
        for k in range(max(len(s) for s in shares)):
            result = None
            if k < len(mine) and not stopping.asked:
                name, content = mine[k]
                entry, line = indexer.stream(folder / name, name, content)
                result = [asdict(entry), line]
                if group.rank() == 0:
                    _record(indexer, 0, entry, line, counts, bar)
            if stopping.asked:
                raise Stopped(f"rank {group.rank()}: stopped by mlx.launch (another rank ended) after the video "
                              "it was on; what was finished is kept: run the same command again to go on")
            for rank, got in enumerate(distributed.gather(result, group)):
                if rank and got is not None and group.rank() == 0:
                    _record(indexer, rank, Entry(**got[0]), got[1], counts, bar)


def _record(indexer: Indexer, rank: int, entry: Entry, line: str, counts: dict, bar) -> None:
    """Rank 0: record a rank's row and say its line."""
    file = indexer.catalogue.memory_path(entry)
    if file is not None and not file.is_file():
        raise UserError(f"rank {rank} wrote {entry.name}'s memory where rank 0 cannot read it ({file} is "
                        "missing): under mlx.launch on several Macs, --library must be one folder they all "
                        "share (SMB or NFS), at the same path")
    indexer.catalogue.record(entry)
    indexer.say(line)
    counts[entry.status] += 1
    bar.update(1)
