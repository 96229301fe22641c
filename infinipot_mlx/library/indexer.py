"""Indexing a video library: every video of a folder streamed once into a saved memory and
recorded in the catalogue (catalogue.py). `python -m infinipot_mlx.library index` and the
server's page (server/web.py) both index through Indexer, the door opening and streaming.

Indexer says what it did one line at a time through `say` (stdout above the progress bars,
by default), shows a per-video progress bar unless `bar=False`, and reports each streamed
chunk's frames to `on_frames(done, total)` when given.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import UserError, one_line
from ..stream import memory_file as memories
from .catalogue import Catalogue, Entry, memory_name, model_key

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                  ".ts", ".3gp")


def find_videos(folder: Path) -> list[Path]:
    """The video files under `folder` (hidden files and folders left out), sorted by path."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass index a folder of videos")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not found:
        raise UserError(f"no video files in {folder} (looked for {' '.join(VIDEO_SUFFIXES)})")
    return found


def _content_key(video: Path) -> tuple[str, UserError | None]:
    """(its content hash, None) for a video file; a key from its path and why when it cannot be
    read at all (so it is recorded as failed, and indexed once it can be read)."""
    try:
        return memories.content_hash(video), None
    except OSError as err:
        return f"unreadable:{video.resolve()}", UserError(f"cannot read {video} ({err.strerror or err})")


def _say(line: str) -> None:
    """One result line on stdout, above the progress bars (on stderr), flushed at once."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


class Indexer:
    """Index videos, one at a time, into a catalogue with one model and one set of settings;
    the model is loaded at the first video that needs streaming (a run that skips all loads none).

    `session`: a session already open on `model_dir` with these settings (the server's), used
    instead of loading the model again; `say`, `bar`, `on_frames`: module docstring.
    `catalogue` None with `memory_folder`: stream and write memories only, rows go to
    the caller (a rank of mlx.launch other than 0, library/sharded.py).
    """

    def __init__(self, args, catalogue: Catalogue | None, model_dir: Path, *, session=None, say=None,
                 bar: bool = True, on_frames=None, memory_folder: Path | None = None):
        from ..door import session_config, settings_key

        self.args, self.catalogue, self.session = args, catalogue, session
        self.memories = catalogue.memories if memory_folder is None else memory_folder  # where memory files go
        self.say, self.bar, self.on_frames = say or _say, bar, on_frames
        self.model_dir = model_dir
        self.identity = memories.model_identity(self.model_dir)  # == memories.identity(session)
        self.key = model_key(self.identity)
        self.settings = settings_key(args, session_config(args))  # every stream flag: other flags, other rows

    def index(self, video: Path, name: str) -> str:
        """'done', 'skipped' or 'failed' for one video; says which on stdout."""
        outcome, content = self.triage(video, name)
        if outcome != "stream":
            return outcome
        entry, line = self.stream(video, name, content)
        self.catalogue.record(entry)
        self.say(line)
        return entry.status

    def triage(self, video: Path, name: str) -> tuple[str, str]:
        """(outcome, the video's content key): 'skipped' or 'failed' when the video needs no
        streaming (its row recorded and its line said here), else 'stream'."""
        content, error = _content_key(video)
        row = self.catalogue.lookup(content, self.key, self.settings)
        if self._skip(row, video, name) or (row is None and error is None and self._adopt(content, name, video)):
            return "skipped", content
        if error is not None:
            self.catalogue.record(self._entry(content, name, video, "failed", reason=one_line(error)))
            self.say(f"failed  {name}: {one_line(error)}")
            return "failed", content
        return "stream", content

    def stream(self, video: Path, name: str, content: str) -> tuple[Entry, str]:
        """Stream one video and write its memory: (its done or failed row, the line to say),
        for the caller to record (a done row's file exists). A model that cannot load ends
        the run (UserError out of here), it fails no video."""
        session = self._session()
        try:
            duration = self._stream(session, video, name, content)
        except UserError as err:  # unreadable video, no room under the cap, ...: this video only
            return (self._entry(content, name, video, "failed", reason=one_line(err)),
                    f"failed  {name}: {one_line(err)}")
        return self._save(content, name, video, duration)

    def _adopt(self, content: str, name: str, video: Path) -> bool:
        """Record the memory that a killed run (a rank stopped before its row was written)
        left under this video's name, when it holds this video and model; True if recorded."""
        file = self.memories / memory_name(name, content, self.key, self.settings)
        if not file.is_file():
            return False
        try:
            meta, _ = memories.read(file)
        except UserError:  # damaged: streamed again, and replaced
            return False
        if [v.get("content") for v in meta["state"]["videos"]] != [content] or model_key(meta["model"]) != self.key:
            return False
        self.catalogue.record(self._entry(content, name, video, "done", memory=file.name,
                                          memory_bytes=file.stat().st_size, duration=probe_duration(video)))
        self.say(f"skipped {name} (streamed by a run that was stopped; recorded now)")
        return True

    def _skip(self, row: Entry | None, video: Path, name: str) -> bool:
        """True (and why, on stdout) when the row says this video needs no streaming."""
        if row is None:
            return False
        if row.status == "done" and self.catalogue.memory_path(row).is_file():
            if row.path != str(video.resolve()) and not Path(row.path).exists():  # moved or renamed
                self.catalogue.rename(row, name, str(video.resolve()))
            self.say(f"skipped {name} (indexed {row.created[:16].replace('T', ' ')})")
            return True
        if row.status == "failed" and not self.args.retry_failed:
            self.say(f"skipped {name} (failed before: {row.reason.rstrip('.')}; --retry-failed tries again)")
            return True
        return False

    def _stream(self, session, video: Path, name: str, content: str) -> float | None:
        """Stream one file into the emptied session with a per-video bar; its duration (s)."""
        from tqdm import tqdm

        from ..door import fit_source, open_source, stream_source

        session.reset()
        source = open_source(self.args, session.spec, str(video))  # at the session's fps, --max-frames
        fit_source(session, source, self.args.max_pixels)  # sized for the cap
        total = None if source.duration is None else int(source.duration * session.fps + 0.999)
        if source.max_frames is not None:
            total = min(total or source.max_frames, source.max_frames)
        bar = tqdm(total=total, unit="frame", desc=_short(name), leave=False, position=1, dynamic_ncols=True,
                   disable=not self.bar)

        streamed = [0]  # frames so far (a disabled bar counts none)

        def progress(n: int) -> None:
            bar.update(n)
            bar.set_postfix_str(f"cached {session.cache.n_cached}/{session.config.capacity} tok", refresh=False)
            streamed[0] += n
            if self.on_frames is not None:
                self.on_frames(streamed[0], total)

        try:  # hashed once, by _content_key
            stream_source(session, source, video, content=content, on_chunk=progress)
        finally:
            bar.close()
        return source.duration

    def _save(self, content: str, name: str, video: Path, duration: float | None) -> tuple[Entry, str]:
        """Write the memory (atomically) and make its done row: never a row without its file."""
        file = self.memories / memory_name(name, content, self.key, self.settings)
        self.session.save(file)  # MemoryFileError (the library is not writable) ends the run
        size = file.stat().st_size
        slots = self.session.counters.slots_seen
        return (self._entry(content, name, video, "done", memory=file.name, memory_bytes=size, duration=duration),
                f"done    {name} ({_duration(duration)}, {slots} slots, {_size(size)})")

    def _entry(self, content: str, name: str, video: Path, status: str, **fields) -> Entry:
        return Entry(**{"reason": None, "memory": None, "memory_bytes": None, "duration": None, **fields},
                     content=content, model_key=self.key, settings=self.settings, name=name,
                     path=str(video.resolve()), status=status, model_name=self.identity["name"],
                     model_path=str(Path(self.model_dir).resolve()), backend=self.args.backend,
                     created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def _session(self):
        if self.session is None:
            from ..door import open_session

            self.session = open_session(self.args, str(self.model_dir), say=self.say)  # --memory: planned
            if memories.identity(self.session) != self.identity:
                raise UserError(f"the checkpoint {self.model_dir} changed while indexing; run index again")
        return self.session


def probe_duration(video: Path) -> float | None:
    """The video's duration in seconds as the container reports it (VideoSource.duration, what
    streaming records); None when unknown or unreadable."""
    from ..video.source import VideoError, VideoSource

    try:
        with VideoSource(video, fps=None) as source:
            return source.duration
    except VideoError:
        return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _short(name: str, most: int = 24) -> str:
    return name if len(name) <= most else "..." + name[-(most - 3):]
