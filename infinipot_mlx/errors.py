"""The one user-error class, and the one-line CLI conventions built on it.

A UserError is a problem the user can fix (a bad flag, a missing or unreadable file, a
budget that cannot hold a block). Every CLI prints it as one line on stderr, `error: ...`,
and exits with EXIT_BAD_INPUT; every other exception is a bug and keeps its traceback.
It subclasses ValueError so library callers can catch either. No array library imported.
"""

from __future__ import annotations

import argparse
import sys

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class UserError(ValueError):
    """A problem the user can fix; the message says what to do."""


def one_line(err: BaseException) -> str:
    """The error's message on one line (whitespace runs folded)."""
    text = str(err).strip() or type(err).__name__
    return " ".join(text.split())


def report(err: BaseException) -> int:
    """Print `error: <one line>` on stderr and return EXIT_BAD_INPUT."""
    print(f"error: {one_line(err)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def run_command(work, interrupted: str = "interrupted (Ctrl-C)") -> int:
    """Run a command's `work()` and return its exit code: a UserError is one line and
    EXIT_BAD_INPUT, Ctrl-C prints `interrupted` and EXIT_INTERRUPTED; anything else is a bug
    and keeps its traceback."""
    try:
        return work()
    except KeyboardInterrupt:
        if interrupted:
            print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UserError as err:
        return report(err)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit 2), naming --help for the usage."""

    def error(self, message: str):  # argparse's hook; never returns
        print(f"error: {one_line(message)}; see {self.prog} --help", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
