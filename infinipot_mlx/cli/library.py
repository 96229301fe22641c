"""python -m infinipot_mlx.library {index,list,ask}: a personal video library.

`index FOLDER` streams every video of FOLDER (and its subfolders) once into a saved video
memory under DIR/memories/ and records it in DIR/catalogue.sqlite (library/catalogue.py);
videos already indexed with the same model and settings are skipped, so a run that was
killed is finished by the next one. `list` prints one line per video; `ask "Q"` loads each
memory (or --video NAME's) and answers from it, without reading the video again.

A video that cannot be read (any UserError while opening or streaming it) is recorded as
failed with its one-line reason, and the run goes on. Bad input to the command itself is
one line on stderr and exit 2; anything else is a bug and keeps its traceback. Ctrl-C exits
130: what was committed stays, the video being streamed is not recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from itertools import groupby
from pathlib import Path

from .. import _blas
from ..stream import memory_file as memories
from ..errors import EXIT_BAD_INPUT, OneLineParser, UserError, one_line, run_command
from ..door import add_session_flags, check_session_args, model_path
from ..library import Catalogue, Entry
from ..library.indexer import VIDEO_SUFFIXES, Indexer, _duration, _size, find_videos  # noqa: F401  (their home)

DEFAULT_LIBRARY = "~/.cache/infinipot_mlx/library"  # unless INFINIPOT_LIBRARY names another


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m infinipot_mlx.library",
                      description="A personal video library: index a folder of videos once into saved "
                                  "video memories, list them, ask questions about them.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--library", default=None, metavar="DIR",
                        help=f"library folder (default: $INFINIPOT_LIBRARY, else {DEFAULT_LIBRARY})")
    sub = p.add_subparsers(dest="command", required=True, metavar="{index,list,ask}")
    index = sub.add_parser("index", parents=[common], help="stream every video of a folder into the library",
                           description="Stream every video of FOLDER (subfolders too) once into a saved "
                                       "memory; skip those already indexed with the same model and settings.")
    index.add_argument("folder", help="folder of videos (" + " ".join(VIDEO_SUFFIXES) + ")")
    add_session_flags(index, model_help="checkpoint folder or hub repo (default: chat's, "
                      "mlx-community/Qwen2.5-VL-7B-Instruct-4bit; reference: Qwen/Qwen2.5-VL-7B-Instruct)")
    index.add_argument("--retry-failed", action="store_true",
                       help="stream again the videos that failed before (default: skip them)")
    sub.add_parser("list", parents=[common], help="one line per video: name, duration, memory size, "
                   "model, date, status")
    ask = sub.add_parser("ask", parents=[common], help="answer a question from every indexed video's memory")
    ask.add_argument("question")
    ask.add_argument("--video", default=None, metavar="NAME", help="only this video (its name, file name or stem)")
    ask.add_argument("--model", default=None,
                     help="checkpoint folder or hub repo (default: the one each memory was made with)")
    ask.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="reference backend device")
    ask.add_argument("--max-tokens", type=int, default=256, help="answer length cap (default 256)")
    ask.add_argument("--evidence", action="store_true", help="after each answer, the moments (mm:ss) it rests on")
    return p


def check_args(args) -> None:
    """Reject impossible flag values before anything heavy is loaded."""
    if args.command == "index":
        check_session_args(args)  # the door's checks, the same lines as chat's and the server's
    if args.command == "ask":
        if not args.question.strip():
            raise UserError("the question is empty; write a question about the videos")
        if args.max_tokens < 1:
            raise UserError(f"--max-tokens must be a positive integer, got {args.max_tokens}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.library = Path(args.library or os.environ.get("INFINIPOT_LIBRARY") or DEFAULT_LIBRARY).expanduser()
    commands = {"index": run_index, "list": run_list, "ask": run_ask}
    return run_command(lambda: check_args(args) or _blas.check_blas() or commands[args.command](args),
                       interrupted="interrupted (Ctrl-C); what was committed is kept")


# ----- index ---------------------------------------------------------------------------------------
def run_index(args) -> int:
    from tqdm import tqdm

    folder = Path(args.folder).expanduser()
    videos = find_videos(folder)
    model_dir = model_path(args)  # chat's rule: --model, else the default checkpoint
    from ..contract.specs import load_spec
    from ..door import check_capacity

    check_capacity(args.kv_budget, load_spec(model_dir))
    counts = dict(done=0, skipped=0, failed=0)
    with Catalogue(args.library, create=True) as catalogue:
        memories.sweep_temporaries(catalogue.memories)
        indexer = Indexer(args, catalogue, model_dir)
        with tqdm(videos, unit="video", desc="library", position=0, dynamic_ncols=True) as bar:  # closed on errors
            for video in bar:
                counts[indexer.index(video, video.relative_to(folder).as_posix())] += 1
    print(f"library {args.library}: {counts['done']} indexed, {counts['skipped']} skipped, "
          f"{counts['failed']} failed")
    return 0


# ----- list ----------------------------------------------------------------------------------------
def run_list(args) -> int:
    with Catalogue(args.library) as catalogue:
        entries = catalogue.entries()
        if not entries:
            print(f"the library {args.library} is empty; index a folder first", file=sys.stderr)
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            settings = json.loads(e.settings)
            cap = settings["config"]["capacity"] or f"memory {settings.get('memory')}"
            model = f"{e.model_name} (kv {cap}, {settings['fps']:g} fps, {e.backend})"
            print(f"{e.name:<{width}}  {_duration(e.duration):>8}  {_size(e.memory_bytes):>9}  {model}  "
                  f"{e.created[:16].replace('T', ' ')}  {_status(catalogue, e)}")
    return 0


def _status(catalogue: Catalogue, e: Entry) -> str:
    if e.status == "failed":
        return f"failed: {e.reason}"
    if not catalogue.memory_path(e).is_file():
        return f"missing: its memory file {e.memory} was removed; index the folder again"
    return "done"


# ----- ask -----------------------------------------------------------------------------------------
def run_ask(args) -> int:
    with Catalogue(args.library) as catalogue:
        def checkpoint(e: Entry) -> tuple[str, str]:  # one session per checkpoint and backend
            return args.model or e.model_path, e.backend

        entries = sorted(chosen(catalogue.entries("done"), args.video, args.library),
                         key=lambda e: (*checkpoint(e), e.name))
        failures = 0
        for (path, backend), group in groupby(entries, key=checkpoint):  # each memory brings its settings
            group = list(group)
            session = _ask_session(args, path, backend, group)
            for e in group:
                failures += 1 if session is None else ask_one(session, catalogue, e, args)
    return EXIT_BAD_INPUT if failures else 0


def chosen(entries: list[Entry], video: str | None, library: Path) -> list[Entry]:
    """The done rows to ask: all, or those whose name, file name or stem is `video`."""
    if video is not None:
        entries = [e for e in entries if video in (e.name, Path(e.name).name, Path(e.name).stem)]
        if not entries:
            raise UserError(f"no indexed video named {video!r} in {library}; "
                            "python -m infinipot_mlx.library list shows the names")
    if not entries:
        raise UserError(f"no indexed video in {library}; index a folder first")
    return entries


def _ask_session(args, path: str, backend: str, group: list[Entry]):
    """A session for `group`'s checkpoint, or None (each video's error said) when it cannot open."""
    from ..contract.config import DEFAULT_CAPACITY, InfiniPotConfig
    from ..contract.model_path import resolve_model_path
    from ..door import open_with

    settings = json.loads(group[0].settings)  # any memory's: load_memory restores its own config
    config = dict(settings["config"], capacity=settings["config"]["capacity"] or DEFAULT_CAPACITY)
    if config["method"] == "full":
        config["capacity"] = None
    try:
        folder = resolve_model_path(path)
        return open_with(backend, folder, InfiniPotConfig(**config), settings["fps"], args.device,
                         settings.get("dtype"))
    except UserError as err:
        if args.model:  # the flag itself is wrong: bad input to the command
            raise
        for e in group:
            print(f"error: {e.name}: {one_line(err)}", file=sys.stderr)
        return None


def ask_one(session, catalogue: Catalogue, e: Entry, args) -> int:
    """Print `NAME: answer` from its memory; 1 (and one error line) when it cannot answer."""
    from ..stream.answer import STOP_NOTES

    try:
        session.load_memory(catalogue.memory_path(e))  # checksum, format, model identity checked
        session.check_question(args.question)
    except UserError as err:
        print(f"error: {e.name}: {one_line(err)}", file=sys.stderr)
        return 1
    print(f"{e.name}: ", end="", flush=True)
    session.record_evidence = args.evidence
    reply = session.ask(args.question, max_tokens=args.max_tokens)
    try:
        for piece in reply:
            print(piece, end="", flush=True)
    finally:
        reply.close()  # Ctrl-C goes on to main (exit 130); the memory file is never written here
    note = STOP_NOTES.get(session.stop_reason)
    print(f" {note}" if note else "")
    if args.evidence:
        from ..stream.evidence import format_moments

        print(f"  {format_moments(session.evidence)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
