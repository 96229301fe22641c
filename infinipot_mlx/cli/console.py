"""The terminal side of a session: the streaming progress bar, answers printed as they are
decoded (with why one stopped early), /stats, and the interactive prompt.

Shared by `chat` and `chat --demo`; nothing here loads a model or imports an array library.
"""

from __future__ import annotations

import difflib
import queue
import sys
import threading

from ..errors import UserError, report


def stream_frames(session, total: int | None, stream, between=None) -> None:
    """Run `stream` (door.stream_source or door.feed with its source bound) with a progress bar.

    stream(on_chunk=, between=, reader_hook=): feeds the session, calling the hooks (door.py).
    between(bar): called after every chunk (chat answers questions typed while streaming there);
        it returns False to stop the stream.
    Ctrl-C stops early: what was streamed stays, and an unfinished block stays queued.
    The bar shows the cache from the start and is redrawn at once after every chunk until the
    first block is in the cache (tqdm otherwise waits 0.1 s between redraws), so the first
    news of the stream comes without delay (bench/startup.py times it: the first line whose
    cached count is above the starting one). A reader's drops and lag are shown.
    """
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", desc="streaming", dynamic_ncols=True, postfix=_progress_text(session))
    readers, early = [], [True]  # the FrameReader, when there is one; redraw at once: no block cached yet

    def on_chunk(n: int) -> None:
        bar.update(n)
        bar.set_postfix_str(_progress_text(session, *readers), refresh=early[0])
        early[0] = early[0] and session.counters.frames_seen == 0

    try:
        stream(on_chunk=on_chunk, between=None if between is None else lambda: between(bar),
               reader_hook=readers.append)
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped at frame {session.counters.frames_seen + len(session.pending)} (Ctrl-C); "
              "questions will be about what was streamed", file=sys.stderr)
        return
    bar.total = bar.n  # the container's frame count is an estimate: end at 100%
    bar.set_postfix_str(_progress_text(session))
    bar.close()


def _progress_text(session, reader=None) -> str:
    st = session.stats()
    cap = st["capacity"] or "inf"
    live = f" | lag {reader.lag():.1f}s, dropped {reader.dropped}" if reader is not None and reader.live else ""
    return (f"cached {st['tokens_cached']}/{cap} tok (peak {st['peak_cached']}) | "
            f"mem {st['active_memory_bytes'] / 2**20:.0f} MB{live}")


def answer(session, question: str, args) -> str:
    """Print the answer as it streams; Ctrl-C stops this answer only, from the question on
    (an interrupted flush or prefill leaves the memory as it was). A note says why an
    answer stopped early (the memory cap, the position range)."""
    from ..stream.answer import STOP_NOTES

    pieces, reply = [], None
    try:  # from the question on: ask() first flushes a held-back block, which Ctrl-C may stop too
        reply = session.ask(question, max_tokens=args.max_tokens, temperature=args.temperature,
                            top_p=args.top_p)
        for piece in reply:
            pieces.append(piece)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        print(" [answer stopped]", end="")
    finally:
        if reply is not None:
            reply.close()  # pins the answer's end, even when interrupted
    note = STOP_NOTES.get(session.stop_reason)
    print(f" {note}" if note else "")
    if getattr(args, "evidence", False):
        print_evidence(session)
    return "".join(pieces)


def print_evidence(session) -> None:
    """The moments the last answer rests on (evidence.py), or why there are none."""
    from ..stream.evidence import format_moments

    if session.evidence is None:
        print("evidence: ask a question first")
    else:
        print(format_moments(session.evidence))


def format_stats(session, plan=None) -> str:
    st = session.stats()
    sec = st["seconds"]
    return (
        f"frames {st['frames_seen']} | cached {st['tokens_cached']} tok "
        f"({st['tokens_pinned']} pinned, {st['tokens_visual']} visual) / capacity {st['capacity']} | "
        f"peak {st['peak_cached']} | compressions {st['compressions']} | turns dropped {st['turns_evicted']} | "
        f"KV {st['kv_bytes'] / 2**20:.1f} MB{_bits_text(st)} | "
        f"active {st['active_memory_bytes'] / 2**20:.0f} MB, peak {st['peak_memory_bytes'] / 2**20:.0f} MB | "
        f"vision {sec['vision']:.1f}s prefill {sec['prefill']:.1f}s compress {sec['compress']:.2f}s "
        f"decode {sec['decode']:.1f}s | dropped {st['frames_dropped']} (live)"
        + (_plan_text(st, plan) if plan is not None else "")
    )


def _bits_text(st: dict) -> str:
    """' at 4 bits' for a quantized cache (--kv-bits), else ''."""
    return f" at {st['kv_bits']} bits" if st.get("kv_bits") else ""


def _plan_text(st: dict, plan) -> str:
    """Live memory against the --memory plan (decimal units, as the plan line prints them)."""
    from ..contract.budget import format_bytes

    return (f" | memory: active {format_bytes(st['active_memory_bytes'])}, peak "
            f"{format_bytes(st['peak_memory_bytes'])} of planned {format_bytes(plan.peak_bytes)}, "
            f"budget {format_bytes(plan.budget_bytes)}")


HELP = ("Ask about the video. Commands: /stats, /evidence (the moments the last answer rests on), "
        "/save PATH (the video memory), /reset (forget the video), /quit.")
COMMANDS = ("/help", "/stats", "/evidence", "/save PATH", "/reset", "/quit")


class PromptLines:
    """Lines typed at the prompt, read on a thread so that questions can be typed while a
    video streams (chat answers them between blocks); None once the input ends.

    The thread only reads. get() shows the prompt when it starts to wait, so at a terminal
    `> ` comes after the answer to the line before (and after the stream), never in front
    of an answer, and the cursor waits after it."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.prompt = "> " if sys.stdin.isatty() else ""  # piped questions: no prompts mixed into answers
        threading.Thread(target=self._read, name="prompt", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                line = input()
            except (EOFError, OSError, ValueError):
                self.queue.put(None)
                return
            self.queue.put(line.strip())

    def get(self) -> str | None:
        """The next line, after the prompt unless it was typed ahead; waits for it (Ctrl-C in
        the main thread stays responsive: it exits at the prompt)."""
        shown = bool(self.prompt) and self.queue.empty()
        if shown:
            print(self.prompt, end="", flush=True)
        while True:
            try:
                line = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None and shown:
                print()  # the end of input (Ctrl-D): what follows starts on a line of its own
            return line

    def typed(self) -> list[str | None]:
        """The lines typed so far and not yet taken."""
        taken = []
        while not self.queue.empty():
            taken.append(self.queue.get_nowait())
        return taken


def _typed_lines():
    """Lines typed at the prompt, one input() at a time; None at the end of input."""
    while True:
        try:
            yield input("> ").strip()
        except EOFError:
            yield None
            return


def interactive(session, args, after_answer=None, lines: PromptLines | None = None) -> None:
    """Multi-turn prompt with /help, /stats, /evidence, /save PATH, /reset and /quit (handle());
    `after_answer()` runs after every answer (chat --save saves there). Ctrl-C at the prompt
    exits (130). `lines`: a PromptLines already reading (questions typed while streaming)."""
    print(HELP)
    source = iter(lines.get, object()) if lines is not None else _typed_lines()
    for line in source:
        if line is None or not handle(session, line, args, after_answer):
            return


def handle(session, line: str, args, after_answer=None) -> bool:
    """Do what one typed line asks: a command (it starts with /) or a question. False for /quit."""
    if line.startswith("/"):
        return command(session, line, args)
    if not line:
        print("(empty question: type a question, or /quit)")
        return True
    try:
        answer(session, line, args)
        if after_answer is not None:
            after_answer()
    except UserError as err:  # e.g. a question longer than the cap allows: ask another
        report(err)
    return True


def command(session, line: str, args) -> bool:
    """Do one /command; False for /quit. An unknown one (or one given what it does not take)
    says so and lists the commands: it is never sent to the model as a question."""
    word, _, rest = line.partition(" ")
    if word in ("/quit", "/exit"):
        return False
    try:
        if word == "/save":
            _save(session, rest.strip())
        elif word in ACTIONS and not rest.strip():
            ACTIONS[word](session, args)
        else:
            raise UserError(unknown_command(line))
    except UserError as err:
        report(err)
    return True


def unknown_command(line: str) -> str:
    """What an unknown /command is told: the nearest command, and all of them."""
    names = [name.split()[0] for name in COMMANDS]
    near = difflib.get_close_matches(line.split()[0], names, n=1)
    guess = f" (did you mean {near[0]}?)" if near and near[0] != line.split()[0] else ""
    return f"unknown command {line}{guess}; the commands are {', '.join(COMMANDS)}; anything else is a question"


def _save(session, target: str) -> None:
    """/save PATH: write the video memory there and say so."""
    if not target:
        raise UserError("/save needs a path: /save my_video.mem")
    saved = session.save(target)
    print(f"memory saved to {saved} ({saved.stat().st_size / 1e6:.1f} MB)")


def _reset(session) -> None:
    """/reset: forget the video and the conversation, and say so."""
    session.reset()
    print("session reset: the video and the conversation are forgotten")


ACTIONS = {  # the commands that take nothing after them: (session, args) -> None
    "/help": lambda session, args: print(HELP),
    "/stats": lambda session, args: print(format_stats(session, getattr(args, "memory_plan", None))),
    "/evidence": lambda session, args: print_evidence(session),
    "/reset": lambda session, args: _reset(session),
}
