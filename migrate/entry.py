"""Where the ``posthog-migrate`` command (and ``python -m posthog_migrate``) starts: Ctrl-C first, then the CLI.

Importing the command line takes a moment, and the pipeline behind it (numpy, pyarrow) more; a Ctrl-C
during an import would end in a KeyboardInterrupt traceback from deep inside it. So this module imports
nothing heavy, and before anything else it makes Ctrl-C end the process quietly with status 130. That
stays so for commands with nothing to save (inspect, status); ``run`` replaces it with a graceful stop
once it starts working, and ``serve`` with its own.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

INTERRUPTED_BY_SIGINT = 128 + signal.SIGINT  # 130, as shells report a Ctrl-C


def exit_quietly_on_ctrl_c(_number: int, _frame: FrameType | None) -> None:
    # os.write and os._exit: safe at any instant, even in the middle of a print or an import.
    os.write(2, b"\nInterrupted.\n")
    os._exit(INTERRUPTED_BY_SIGINT)


def main() -> None:
    signal.signal(signal.SIGINT, exit_quietly_on_ctrl_c)
    from posthog_migrate.cli import main as command_line

    command_line()
