"""The terminal side of a session: the streaming progress bar, answers printed as they are
decoded (with why one stopped early), /stats, and the interactive prompt.

Shared by `chat` and `chat --demo`; nothing here loads a model or imports an array library.
"""

from __future__ import annotations

import sys

from ..errors import UserError, report


def stream_frames(session, chunks, total: int | None) -> None:
    """Feed (frames (n, H, W, 3), timestamps (n,) or None) chunks with a progress bar.

    Ctrl-C stops early: what was streamed stays, and an unfinished block stays queued.
    """
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", desc="streaming", dynamic_ncols=True)
    try:
        for frames, timestamps in chunks:
            session.add_frames(frames, timestamps)
            bar.update(len(frames))
            bar.set_postfix_str(_progress_text(session), refresh=False)
        session.flush()
    except KeyboardInterrupt:
        bar.close()
        print(f"stopped at frame {session.counters.frames_seen + len(session.pending)} (Ctrl-C); "
              "questions will be about what was streamed", file=sys.stderr)
        return
    bar.total = bar.n  # the container's frame count is an estimate: end at 100%
    bar.set_postfix_str(_progress_text(session))
    bar.close()


def _progress_text(session) -> str:
    st = session.stats()
    cap = st["capacity"] or "inf"
    return (f"cached {st['tokens_cached']}/{cap} tok (peak {st['peak_cached']}) | "
            f"mem {st['active_memory_bytes'] / 2**20:.0f} MB")


def answer(session, question: str, args) -> str:
    """Print the answer as it streams; Ctrl-C stops this answer only. A note says why an
    answer stopped early (the memory cap, the position range)."""
    from ..answer import STOP_NOTES

    pieces = []
    reply = session.ask(question, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p)
    try:
        for piece in reply:
            pieces.append(piece)
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        print(" [answer stopped]", end="")
    finally:
        reply.close()  # pins the answer's end, even when interrupted
    note = STOP_NOTES.get(session.stop_reason)
    print(f" {note}" if note else "")
    return "".join(pieces)


def format_stats(session, plan=None) -> str:
    st = session.stats()
    sec = st["seconds"]
    return (
        f"frames {st['frames_seen']} | cached {st['tokens_cached']} tok "
        f"({st['tokens_pinned']} pinned, {st['tokens_visual']} visual) / capacity {st['capacity']} | "
        f"peak {st['peak_cached']} | compressions {st['compressions']} | turns dropped {st['turns_evicted']} | "
        f"KV {st['kv_bytes'] / 2**20:.1f} MB | "
        f"active {st['active_memory_bytes'] / 2**20:.0f} MB, peak {st['peak_memory_bytes'] / 2**20:.0f} MB | "
        f"vision {sec['vision']:.1f}s prefill {sec['prefill']:.1f}s compress {sec['compress']:.2f}s "
        f"decode {sec['decode']:.1f}s" + (_plan_text(st, plan) if plan is not None else "")
    )


def _plan_text(st: dict, plan) -> str:
    """Live memory against the --memory plan (decimal units, as the plan line prints them)."""
    from ..budget import format_bytes

    return (f" | memory: active {format_bytes(st['active_memory_bytes'])}, peak "
            f"{format_bytes(st['peak_memory_bytes'])} of planned {format_bytes(plan.peak_bytes)}, "
            f"budget {format_bytes(plan.budget_bytes)}")


def interactive(session, args) -> None:
    """Multi-turn prompt with /stats, /reset and /quit. Ctrl-C at the prompt exits (130)."""
    print("Ask about the video. Commands: /stats, /reset (forget the video), /quit.")
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            return
        if line in ("/quit", "/exit"):
            return
        if line == "/stats":
            print(format_stats(session, getattr(args, "memory_plan", None)))
        elif line == "/reset":
            session.reset()
            print("session reset: the video and the conversation are forgotten")
        elif not line:
            print("(empty question: type a question, or /quit)")
        else:
            try:
                answer(session, line, args)
            except UserError as err:  # e.g. a question longer than the cap allows: ask another
                report(err)


