"""python -m infinipot_mlx.chat VIDEO: stream a video under a KV cap, then ask questions.

The CLI parses, prints and reports errors; the flags, opening and streaming are the door's
(door.py, shared with the server and the library), the work is in stream/ and the backends.
Bad input of any kind (a errors.UserError) ends with one line on stderr and exit code 2;
anything else is a bug and keeps its traceback. Bad flags are refused before mlx, mlx-vlm
or torch is imported. Ctrl-C while streaming stops the video there and keeps what was
seen; Ctrl-C during an answer stops that answer; Ctrl-C at the prompt exits with 130.
"""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial

from .. import _blas  # noqa: F401  (optimized BLAS before mlx)
from ..door import add_session_flags, check_output_path, check_session_args, open_stream, seed, stream_source
from ..errors import EXIT_BAD_INPUT, OneLineParser, UserError, run_command
from ..stream import memory_file as memories
from .console import PromptLines, answer, handle, interactive, stream_frames


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m infinipot_mlx.chat",
        description="Stream a video into a memory-capped KV cache (InfiniPot-V), then ask questions.",
    )
    p.add_argument("video", nargs="?", help="video file, camera index (0) or stream URL")
    p.add_argument("--demo", action="store_true",
                   help="stream a synthetic video through the bundled trained organism (offline)")
    add_session_flags(p)
    p.add_argument("--realtime", action="store_true",
                   help="play a file at its own speed, as a camera would: frames the model cannot keep up "
                        "with are dropped (cameras and stream URLs always are)")
    p.add_argument("--question", "-q", action="append", default=None,
                   help="ask this (repeatable); answers each in turn and exits")
    p.add_argument("--max-tokens", type=int, default=256, help="answer length cap")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    p.add_argument("--save", default=None, metavar="MEM",
                   help="save the video memory to MEM after streaming and after every answer")
    p.add_argument("--load", default=None, metavar="MEM",
                   help="continue from a saved video memory: ask with no video, or stream more")
    p.add_argument("--evidence", action="store_true",
                   help="after each answer, print the moments (mm:ss) it rests on, with their share")
    p.add_argument("--memory-map", default=None, metavar="PNG",
                   help="draw what the memory keeps (kept tokens per second and layer) after streaming "
                        "(.png is added to a name without a suffix)")
    return p


def check_args(args) -> None:
    """Reject impossible flag values before anything heavy is loaded (door.check_session_args
    for the shared flags; output paths now, not after streaming)."""
    if not args.demo and args.video is None and args.load is None:
        raise UserError("give a video (file, camera index or URL), --load MEM (a saved memory), "
                        "or --demo for the offline demo")
    if args.load is not None and (args.memory is not None or args.demo):
        raise UserError("--load continues a saved memory with its own settings; drop --memory / --demo")
    check_session_args(args)
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens must be a positive integer, got {args.max_tokens}")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise UserError("--temperature must be >= 0 and --top-p in (0, 1]")
    for q in args.question or []:
        if not q.strip():
            raise UserError("--question is empty; write a question about the video")
    if args.save is not None:  # found out before streaming, so that nothing streamed is lost
        args.save = check_output_path("--save", args.save)
    if args.memory_map is not None:
        args.memory_map = check_output_path("--memory-map", args.memory_map, suffix=".png")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(lambda: check_args(args) or run(args))  # check_args returns None


# ----- running a session ---------------------------------------------------------------
def stream_video(session, source, name=None, realtime: bool = False, between=None) -> None:
    """Stream a VideoSource into the session with the progress bar (door.stream_source), as a
    video segment named `name` (default: the source)."""
    stream_frames(session, _expected_frames(source),
                  partial(stream_source, session, source, name, realtime=realtime), between)


def answer_typed(session, args, lines, after_answer):
    """`between` for stream_video: answer the lines typed so far (console.handle), then let
    the stream go on; False (stop streaming) after /quit. The end of input does not stop it."""
    ended = []

    def between(bar) -> bool:
        for line in [] if ended else lines.typed():
            if line is None or line in ("/quit", "/exit"):
                lines.queue.put(line)  # the prompt after the stream sees it too, and leaves
                ended.append(line)
                return line is None
            bar.clear()
            print(f"Q (at frame {session.counters.frames_seen}): {line}")
            handle(session, line, args, after_answer)
            bar.refresh()
        return True
    return between


def _expected_frames(source) -> int | None:
    """Sampled frames the progress bar expects, when the container says how long it is."""
    estimate = None
    if source.duration is not None and source.fps:
        estimate = int(math.ceil(source.duration * source.fps))
    if source.max_frames is not None:
        estimate = min(estimate or source.max_frames, source.max_frames)
    return estimate


def run(args) -> int:
    _blas.check_blas()
    if args.demo:
        from .demo import run_demo

        seed(args)
        return run_demo(args)
    opened = open_stream(args)  # the memory, checkpoint and video are checked before the model loads
    session, source = opened.session, opened.source
    session.record_evidence = True  # cheap: the question's last token only (evidence.py)
    if opened.saved is not None:
        print(memories.summary(opened.saved, args.load))
    for q in args.question or []:
        session.check_question(q)  # a question that can never fit fails before streaming
    live = source is not None and (source.kind != "file" or args.realtime or sys.stdin.isatty())
    lines = PromptLines() if live and not args.question else None  # questions typed while streaming
    if source is not None:
        between = answer_typed(session, args, lines, lambda: save_memory(session, args)) if lines else None
        stream_video(session, source, args.video, args.realtime, between)
    save_memory(session, args)
    failed = args.memory_map is not None and not draw_memory_map(session, args.memory_map)
    if args.question:
        for q in args.question:
            print(f"Q: {q}")
            print("A: ", end="")
            answer(session, q, args)
            save_memory(session, args)
    else:
        interactive(session, args, after_answer=lambda: save_memory(session, args), lines=lines)
    return EXIT_BAD_INPUT if failed else 0


def draw_memory_map(session, path: str) -> bool:
    """Draw --memory-map and say where; False (and one error line) when it cannot be written:
    the streamed memory (saved already) and the answers still come."""
    from ..stream.evidence import memory_map

    try:
        print(f"memory map drawn to {memory_map(session, path)}", file=sys.stderr)
        return True
    except OSError as err:
        print(f"error: --memory-map {path}: {err.strerror or err}; the memory and the answers are kept",
              file=sys.stderr)
        return False


def save_memory(session, args, path: str | None = None) -> None:
    """Save the session's memory to `path` (or --save, when given) and say so."""
    path = path or args.save
    if path is not None:
        saved = session.save(path)
        print(f"memory saved to {saved} ({saved.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
