"""python -m infinipot_mlx.library {index,list,ask}: a personal video library.

`index FOLDER` streams every video of FOLDER (and its subfolders) once into a saved video
memory under DIR/memories/ and records it in DIR/catalogue.sqlite (library/catalogue.py);
videos already indexed with the same model and settings are skipped, so a run that was
killed is finished by the next one. `list` prints one line per video; `ask "Q"` ranks the
videos by how well each memory (or --video NAME's) answers, without reading any video again
(library/search.py: the score, the moment, thumbnails).

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
from dataclasses import asdict
from pathlib import Path

from .. import _blas
from ..stream import memory_file as memories
from ..errors import EXIT_BAD_INPUT, OneLineParser, UserError, run_command
from ..door import add_session_flags, check_session_args, model_path
from ..library import CATALOGUE, MEMORIES, Catalogue, Entry, distributed
from ..library.indexer import VIDEO_SUFFIXES, Indexer, _duration, _size, find_videos  # noqa: F401  (their home)
from ..library.search import MAX_ANSWER_TOKENS

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
    ask.add_argument("--max-tokens", type=int, default=MAX_ANSWER_TOKENS,
                     help=f"answer length cap (default {MAX_ANSWER_TOKENS})")
    ask.add_argument("--top", type=int, default=5, metavar="K", help="show the K best videos (default 5)")
    ask.add_argument("--expect", default=None, metavar="ANSWER",
                     help="rank by the probability of this answer (default: 'yes' for a yes/no question, "
                          "else the confidence of each video's own answer)")
    ask.add_argument("--json", action="store_true", help="print the hits as one JSON document")
    ask.add_argument("--thumbnails", action="store_true",
                     help="write a JPEG of each hit's moment under DIR/thumbnails/ and print its path")
    ask.add_argument("--evidence", action="store_true", help="also each moment's share of the attention")
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
        if args.top < 1:
            raise UserError(f"--top must be a positive integer, got {args.top}")


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
    from ..door import check_against_model

    check_against_model(args, load_spec(model_dir))
    group = distributed.group()  # size 1 without mlx.launch
    if group.size() > 1:
        return _index_sharded(args, videos, folder, model_dir, group)
    counts = dict(done=0, skipped=0, failed=0)
    with Catalogue(args.library, create=True) as catalogue:
        memories.sweep_temporaries(catalogue.memories)
        indexer = Indexer(args, catalogue, model_dir)
        with tqdm(videos, unit="video", desc="library", position=0, dynamic_ncols=True) as bar:  # closed on errors
            for video in bar:
                counts[indexer.index(video, video.relative_to(folder).as_posix())] += 1
    _summary(args, counts)
    return 0


def _summary(args, counts: dict) -> None:
    print(f"library {args.library}: {counts['done']} indexed, {counts['skipped']} skipped, "
          f"{counts['failed']} failed")


def _index_sharded(args, videos: list[Path], folder: Path, model_dir: Path, group) -> int:
    """Under mlx.launch (library/sharded.py): rank 0 plans and writes the catalogue, every
    rank streams its share; rank 0 alone prints."""
    from tqdm import tqdm

    from ..library.sharded import index_rounds, plan

    if group.rank():
        shares = distributed.gather(None, group)[0]  # once rank 0 has made the library
        if not (args.library / CATALOGUE).is_file():
            raise UserError(f"rank {group.rank()} cannot see the library rank 0 writes ({args.library / CATALOGUE} "
                            "is missing): on several Macs, --library must be one folder they all share (SMB or "
                            "NFS), at the same path")
        indexer = Indexer(args, None, model_dir, bar=False, memory_folder=args.library / MEMORIES)
        index_rounds(indexer, shares, folder, group, None, None)
        return 0
    counts = dict(done=0, skipped=0, failed=0)
    with Catalogue(args.library, create=True) as catalogue, \
            tqdm(total=len(videos), unit="video", desc="library", position=0, dynamic_ncols=True) as bar:
        memories.sweep_temporaries(catalogue.memories)  # before any rank writes one
        indexer = Indexer(args, catalogue, model_dir)
        shares = distributed.gather(plan(indexer, videos, folder, group.size(), counts, bar), group)[0]
        index_rounds(indexer, shares, folder, group, counts, bar)
    _summary(args, counts)
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
    """The ranked hits (library/search.py), one line each or one JSON document; a memory
    that cannot answer is one error line on stderr (exit 2), the others are still ranked.
    Under mlx.launch each rank scores its share of the memories; rank 0 alone prints."""
    from tqdm import tqdm

    from ..library.search import Ranker

    failures, group = [], distributed.group()
    quiet = group.rank() > 0

    def failed(name: str, message: str) -> None:
        failures.append(name)
        if not quiet:
            tqdm.write(f"error: {name}: {message}", file=sys.stderr)

    with tqdm(unit="video", desc="asking", leave=False, dynamic_ncols=True, disable=True if quiet else None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        hits = Ranker(args.library, args.model, args.device).ask(
            args.question, top=args.top, expect=args.expect, video=args.video,
            thumbnails=args.thumbnails and not quiet, max_tokens=args.max_tokens, on_progress=progress,
            on_error=failed, group=group)
    if quiet:
        return EXIT_BAD_INPUT if failures else 0
    if args.json:
        print(json.dumps([asdict(h) for h in hits], indent=1))
    else:
        print_hits(hits, args.evidence)
    return EXIT_BAD_INPUT if failures else 0


def print_hits(hits, evidence: bool = False) -> None:
    """`rank. name  mm:ss  score  answer` per hit, the answer on one line (then its
    thumbnail path when made)."""
    width = max((len(h.name) for h in hits), default=0)
    for h in hits:
        share = f" ({h.share:.0%} of the attention)" if evidence else ""
        answer = " ".join(h.answer.split())  # one line per hit (--json keeps the answer as it is)
        print(f"{h.rank}. {h.name:<{width}}  {h.clock}  {h.score:.2f}  {answer}{share}")
        if h.thumbnail:
            print(f"   {h.thumbnail}")


if __name__ == "__main__":
    sys.exit(main())
