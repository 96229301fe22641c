"""The interactive prompt as a person sees it: `python -m infinipot_mlx.chat VIDEO` runs on a
real pseudo-terminal (screen.py renders what a terminal shows), on the tiny checkpoint with
the published pixel limits, and its screen is held against the README's transcript.

Each test waits for a state of the screen (the prompt back, the cursor after it), never for
a time; the Ctrl-C test presses ^C once the program has read the question from the terminal
while a held-back block still has to be flushed before the first token.
"""

import os
import re
import sys
from pathlib import Path

import pytest

import videos

pytest.importorskip("pyte")  # the dev extra: it renders the terminal's screen
from screen import CTRL_C, Terminal  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
PROMPT = "> "


def readme_transcript() -> tuple[list[str], list[str]]:
    """The README's chat transcript: the chat command's arguments, and the screen after it
    (the progress bar, the help line, then prompts, answers and /stats)."""
    text = README.read_text().split("A transcript with the tiny random checkpoint", 1)[1]
    lines = text.split("```text\n", 1)[1].split("\n```", 1)[0].splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("$ python -m infinipot_mlx.chat "))
    return lines[at].split()[4:], lines[at + 1:]


def shape(line: str) -> str:
    """A row with what differs between runs and screens taken out: numbers, the bar's width,
    the frame rate (tqdm writes a slow one as s/frame), runs of spaces."""
    line = re.sub(r"[\d.?]+(frame/s|s/frame)", "RATE", line)
    line = re.sub(r"\d+(\.\d+)?", "N", re.sub("█+", "█", line))
    return " ".join(line.split())


def assert_like_readme(rows: list[str], readme: list[str]) -> None:
    """The screen's rows have the README's shape row for row: each prompt row as typed, an
    answer (any text, no prompt) after each question, every other row as the README's with
    its numbers taken out."""
    assert len(rows) == len(readme), "\n".join(rows)
    for i, (row, line) in enumerate(zip(rows, readme)):
        asked = i > 0 and readme[i - 1].startswith(PROMPT) and not readme[i - 1].startswith("> /")
        if asked:
            assert not row.startswith(">"), f"row {i}: an answer was expected:\n" + "\n".join(rows)
        elif line.startswith(PROMPT):
            assert row == line.rstrip(), f"row {i}:\n" + "\n".join(rows)
        else:
            assert shape(row) == shape(line), f"row {i}:\n" + "\n".join(rows)


def chat(argv: list[str]) -> Terminal:
    env = dict(os.environ, HF_HUB_OFFLINE="1", INFINIPOT_CHECK_CAP="1")
    return Terminal([sys.executable, "-m", "infinipot_mlx.chat", *map(str, argv)], env=env)


def enter(term: Terminal, line: str) -> None:
    """Type `line` and Enter at the waiting prompt, and wait for the next prompt."""
    assert term.cursor_after(PROMPT), "\n".join(term.rows())
    typed = term.rows().count(PROMPT + line)
    term.type(line + "\r")
    next_prompt = lambda: term.rows().count(PROMPT + line) > typed and term.cursor_after(PROMPT)  # noqa: E731
    term.wait(lambda: next_prompt() or term.proc.poll() is not None, f"the prompt after {line!r}", timeout=60)
    assert term.proc.poll() is None, "\n".join(term.rows())


def after(rows: list[str], line: str) -> list[str]:
    """The rows printed after the last prompt row `line`, up to the next prompt."""
    at = len(rows) - 1 - rows[::-1].index(PROMPT + line)
    return rows[at + 1:-1]


def stats_frames(term: Terminal) -> tuple[int, int]:
    """/stats: the frames in the memory, and the tokens pinned (the conversation's)."""
    enter(term, "/stats")
    (stats,) = after(term.rows(), "/stats")
    return int(re.search(r"^frames (\d+) \|", stats)[1]), int(re.search(r"\((\d+) pinned", stats)[1])


def cached(term: Terminal) -> int | None:
    """The progress bar's count of cached tokens; None before the bar is drawn."""
    found = re.findall(r"cached (\d+)/", "\n".join(term.rows()))
    return int(found[-1]) if found else None


@pytest.fixture
def readme_chat(moving_shapes_mp4, tiny_qwen_published_dir):
    """The README's chat command on a short generated video, at the first prompt."""
    argv, screen = readme_transcript()
    argv = [{"clip.mp4": moving_shapes_mp4, "/tmp/tiny-qwen": tiny_qwen_published_dir}.get(a, a) for a in argv]
    term = chat(argv)
    term.wait(lambda: term.cursor_after(PROMPT) or term.proc.poll() is not None, "the first prompt")
    yield term, screen
    term.close()


def test_the_screen_is_the_readme_transcript(readme_chat):
    """Each answer on its own row after its question, then `> ` with the cursor after it."""
    term, readme = readme_chat
    typed = [i for i, line in enumerate(readme) if line.startswith(PROMPT)]
    for i in typed:
        assert_like_readme(term.rows(), readme[:i] + [PROMPT])  # the prompt waits, and only it
        if i == typed[-1]:
            term.type(readme[i][len(PROMPT):] + "\r")
        else:
            enter(term, readme[i][len(PROMPT):])
    assert term.finish() == 0
    rows = term.rows()
    assert rows[-1] == "", rows  # /quit left the cursor on a row of its own
    assert_like_readme(rows[:-1], readme)


def test_help_and_unknown_commands_are_not_questions(readme_chat):
    term, readme = readme_chat
    help_line = readme[1]
    frames, pinned = stats_frames(term)
    enter(term, "/help")
    assert after(term.rows(), "/help") == [help_line]
    for typo, guess in (("/stat", " (did you mean /stats?)"), ("/foo", ""), ("/stats now", "")):
        enter(term, typo)
        assert after(term.rows(), typo) == [
            f"error: unknown command {typo}{guess}; the commands are /help, /stats, /evidence, /save PATH, "
            "/reset, /quit; anything else is a question"]
    assert stats_frames(term) == (frames, pinned)  # nothing was asked
    enter(term, "What moved?")  # a question still is one
    assert stats_frames(term)[1] > pinned


def test_ctrl_c_before_the_first_token_stops_the_answer_not_the_program(tmp_path, tiny_qwen_published_dir):
    """After Ctrl-C stopped a stream with a block held back, a question flushes that block
    before its first token: ^C there stops the answer, the memory stays, and the prompt
    comes back; ^C at the empty prompt then exits with 130."""
    video = videos.long_low_res_video(tmp_path / "long.mp4", minutes=10, fps=5.0)
    term = chat([video, "--model", tiny_qwen_published_dir, "--max-tokens", 8])
    try:
        term.wait(lambda: cached(term), "the progress bar")
        first = cached(term)
        term.wait(lambda: cached(term) > first, "a block in the cache")
        term.type(CTRL_C)  # the next block is being encoded: it stays held back
        term.wait(lambda: term.cursor_after(PROMPT), "the prompt after the stream")
        stopped = int(re.search(r"stopped at frame (\d+) \(Ctrl-C\)", "\n".join(term.rows()))[1])
        frames, _ = stats_frames(term)
        assert 0 < frames < stopped, "no block was held back to flush before the next answer"

        term.type("What moved?\r")
        term.wait(lambda: term.rows()[-2:] == [PROMPT + "What moved?", ""], "the question echoed")
        term.wait(lambda: term.unread_input() == 0, "the question read")  # its answer has begun
        term.type(CTRL_C)
        term.wait(lambda: term.cursor_after(PROMPT) or term.proc.poll() is not None, "the prompt back")
        assert term.proc.poll() is None, "\n".join(term.rows())
        assert after(term.rows(), "What moved?") == ["^C [answer stopped]"]  # before any token
        assert stats_frames(term)[0] >= frames  # the memory is intact

        enter(term, "What moved?")  # and answers from it
        assert after(term.rows(), "What moved?") != ["^C [answer stopped]"]
        term.type(CTRL_C)  # at the empty prompt: exit
        assert term.finish() == 130
    finally:
        term.close()
