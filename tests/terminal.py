"""Child processes that Ctrl-C reaches as it does at a terminal.

A process started in the background by a non-interactive shell (`cmd &`, nohup) inherits
SIGINT ignored, and Python then installs no KeyboardInterrupt handler: a test that sends
SIGINT to a CLI must start it with SIGINT at its default, as a terminal's foreground job has.
"""

import signal


def sigint_default() -> None:
    """preexec_fn for subprocess.Popen: SIGINT back to its default disposition in the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
