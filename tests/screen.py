"""A program on a real pseudo-terminal, and the screen a terminal would show for it.

The program runs as a person's foreground job: its stdin, stdout and stderr are the
terminal, the terminal is its controlling tty, so typing echoes, a line reaches the program
on Enter, and the ^C key sends SIGINT as at a keyboard. pyte renders the bytes it writes
(carriage returns of the progress bar, wrapped lines, the tty's own echo) into the rows a
person reads; `rows()` is that screen, with the cursor where the terminal has it.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time

import pyte

CTRL_C = b"\x03"


class Terminal:
    """`argv` on a fresh pseudo-terminal of `height` x `width` characters."""

    def __init__(self, argv: list[str], env: dict | None = None, height: int = 60, width: int = 400):
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        self.screen = pyte.Screen(width, height)
        self.stream = pyte.ByteStream(self.screen)
        self.proc = subprocess.Popen(argv, stdin=self.slave, stdout=self.slave, stderr=self.slave, env=env,
                                     start_new_session=True, preexec_fn=_foreground_job)

    def rows(self) -> list[str]:
        """The screen's rows down to the cursor's, right-stripped (the cursor's row is the last)."""
        return [row.rstrip() for row in self.screen.display[:self.screen.cursor.y + 1]]

    def cursor_after(self, text: str) -> bool:
        """Whether the cursor's row is exactly `text` and the cursor waits right after it."""
        cursor = self.screen.cursor
        row = self.screen.display[cursor.y]
        return row[:cursor.x] == text and not row[cursor.x:].strip()

    def type(self, keys: str | bytes) -> None:
        """Keys as a person types them ("\\r" is Enter, CTRL_C the ^C key)."""
        os.write(self.master, keys.encode() if isinstance(keys, str) else keys)

    def unread_input(self) -> int:
        """Bytes typed and not yet read by the program (a whole line counts once Enter is in)."""
        return struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4))[0]

    def wait(self, ready, what: str, timeout: float = 180) -> None:
        """Render output until `ready()` holds; fails with the screen after `timeout` seconds."""
        end = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n" + "\n".join(self.rows()))
            self.read(0.05)

    def read(self, timeout: float) -> bool:
        """Render what the program wrote within `timeout` seconds; False if nothing came."""
        if not select.select([self.master], [], [], timeout)[0]:
            return False
        try:
            self.stream.feed(os.read(self.master, 65536))
        except OSError:  # the program ended and the terminal closed
            return False
        return True

    def finish(self, timeout: float = 60) -> int:
        """Wait for the program to end, rendering the rest of its output; its exit status."""
        code = self.proc.wait(timeout)
        while self.read(0):
            pass
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def _foreground_job() -> None:
    """In the child, after setsid: take the terminal (fd 0) as the controlling tty, which makes
    this process group the foreground job, and let SIGINT end or interrupt it as by default."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
