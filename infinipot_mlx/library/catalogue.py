"""The library's catalogue: one SQLite database (stdlib sqlite3, WAL journal) beside the
memories folder. No array library imported.

Layout of a library folder:

    DIR/catalogue.sqlite     one row per (video content, model, settings): done or failed
    DIR/memories/*.mem       one saved video memory per done row (memories.py's format)

A row is identified by three keys: the video's sampled content hash (memories.content_hash),
the model's identity (`config_sha256:weights_sha256`, memories.model_identity) and the
settings (canonical JSON of the InfiniPotConfig, fps, max pixels and backend). Indexing the
same video again with the same model and settings finds its row and skips it; another model
or other settings make another row.

Durability: every write is one transaction; a done row is written only after its memory
file exists (session.save writes it atomically), so a process killed at any moment leaves
no row that points at a missing file. A memory file written but not yet recorded has a
name fixed by its keys and the video's name (memory_name), so the next run that indexes the
same video under the same name replaces it; a file left under an old name stays on disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import UserError

CATALOGUE, MEMORIES = "catalogue.sqlite", "memories"
SCHEMA_VERSION = 1  # PRAGMA user_version of a catalogue this code writes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    content      TEXT NOT NULL,    -- memories.content_hash of the video file
    model_key    TEXT NOT NULL,    -- 'config_sha256:weights_sha256' (model_key)
    settings     TEXT NOT NULL,    -- canonical JSON (settings_json)
    name         TEXT NOT NULL,    -- the file's path relative to the indexed folder
    path         TEXT NOT NULL,    -- its absolute path when indexed
    status       TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    reason       TEXT,             -- failed: the one-line reason
    memory       TEXT,             -- done: the memory's file name under memories/
    memory_bytes INTEGER,          -- done: its size in bytes
    duration     REAL,             -- seconds of video (container's estimate), when known
    model_name   TEXT NOT NULL,    -- the checkpoint folder's name
    model_path   TEXT NOT NULL,    -- the checkpoint folder (the default model for `ask`)
    backend      TEXT NOT NULL,    -- mlx | reference
    created      TEXT NOT NULL,    -- local time of indexing, ISO 8601
    PRIMARY KEY (content, model_key, settings)
)
"""


class CatalogueError(UserError):
    """A library folder whose catalogue cannot be opened, read or trusted."""


@dataclass
class Entry:
    """One row of the catalogue (the columns of _SCHEMA, in order)."""

    content: str
    model_key: str
    settings: str
    name: str
    path: str
    status: str
    reason: str | None
    memory: str | None
    memory_bytes: int | None
    duration: float | None
    model_name: str
    model_path: str
    backend: str
    created: str


COLUMNS = tuple(f.name for f in fields(Entry))


def model_key(identity: dict) -> str:
    """The model part of a row's key, from memories.model_identity / memories.identity."""
    return f"{identity['config_sha256']}:{identity['weights_sha256']}"


def settings_json(config: dict, fps: float, max_pixels: int | None, backend: str, **more) -> str:
    """The settings part of a row's key: canonical JSON (sorted keys, fps as a float). `more`:
    the other stream settings (dtype, memory, max_frames...), recorded when set, so that a key
    made without them is the same as before they were recorded."""
    extra = {k: v for k, v in more.items() if v is not None}
    return json.dumps(dict(config=config, fps=float(fps), max_pixels=max_pixels, backend=backend, **extra),
                      sort_keys=True, separators=(",", ":"))


def memory_name(name: str, content: str, key: str, settings: str) -> str:
    """`<stem>-<16 hex>.mem`: readable, and the same for the same three keys, so a file left
    by a killed run is replaced, not duplicated, when the video is indexed again."""
    digest = hashlib.sha256(f"{content}\n{key}\n{settings}".encode()).hexdigest()[:16]
    stem = re.sub(r"[^\w.-]+", "_", Path(name).stem)[:48] or "video"
    return f"{stem}-{digest}.mem"


class Catalogue:
    """The SQLite catalogue of a library folder (module docstring); `with` closes it.

    Args:
        root: the library folder.
        create: make the folder and the database when missing (index); otherwise a missing
            library is a CatalogueError (list, ask).
    """

    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root).expanduser()
        self.memories = self.root / MEMORIES
        path = self.root / CATALOGUE
        if not create and not path.is_file():
            raise CatalogueError(f"no video library at {self.root} (no {CATALOGUE}); index a folder "
                                 "first: python -m infinipot_mlx.library index FOLDER")
        try:
            if create:
                self.memories.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None)  # explicit BEGINs
            self._setup()
        except (OSError, sqlite3.Error) as err:
            raise CatalogueError(f"cannot open the library catalogue {path} ({err}); point --library "
                                 "at a writable library folder") from None

    def _setup(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = self.db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'videos'").fetchone()[0]
        if version not in (0, SCHEMA_VERSION) or (version == 0 and tables):
            raise CatalogueError(f"{self.root / CATALOGUE} is a version {version} catalogue; this "
                                 f"infinipot_mlx reads version {SCHEMA_VERSION}: use another --library")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut, not only a kill
        if version == 0:
            with self._transaction():
                self.db.execute(_SCHEMA)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _transaction(self):
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any exception, Ctrl-C included)."""
        return _Transaction(self.db)

    # ----- reading -----------------------------------------------------------------------
    def lookup(self, content: str, key: str, settings: str) -> Entry | None:
        """The row of this video, model and settings, or None."""
        row = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM videos WHERE content = ? AND "
                              "model_key = ? AND settings = ?", (content, key, settings)).fetchone()
        return None if row is None else Entry(*row)

    def entries(self, status: str | None = None) -> list[Entry]:
        """Every row (or those with `status`), by name then date."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        rows = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM videos {where} ORDER BY name, created",
                               args).fetchall()
        return [Entry(*row) for row in rows]

    def memory_path(self, entry: Entry) -> Path | None:
        """Where a done row's memory file is (None for a failed row)."""
        return None if entry.memory is None else self.memories / entry.memory

    # ----- writing -----------------------------------------------------------------------
    def record(self, entry: Entry) -> None:
        """Insert or replace the row of (content, model_key, settings), in one transaction.
        A done row's memory file must already exist (ValueError otherwise: a bug)."""
        if entry.status == "done":
            file = self.memory_path(entry)
            if file is None or not file.is_file():
                raise ValueError(f"a done row must point at a written memory file, not {file}")
        values = asdict(entry)
        with self._transaction():
            self.db.execute(f"INSERT OR REPLACE INTO videos ({', '.join(COLUMNS)}) VALUES "
                            f"({', '.join('?' * len(COLUMNS))})", [values[c] for c in COLUMNS])

    def rename(self, entry: Entry, name: str, path: str) -> None:
        """Point a row at the file's new place (a video moved or renamed, the same content)."""
        with self._transaction():
            self.db.execute("UPDATE videos SET name = ?, path = ? WHERE content = ? AND model_key = ? "
                            "AND settings = ?", (name, path, entry.content, entry.model_key, entry.settings))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
