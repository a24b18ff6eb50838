"""The ``ppazam`` console script. Importing the command line takes seconds (torch, Concrete ML),
and a ``KeyboardInterrupt`` raised meanwhile is printed as a traceback, or lost where a library's
C initialisation clears it (torch's does). So a Ctrl-C while importing is only noted, and the
command then ends as one interrupted later does: one ``error:`` line and exit status 130. This
module lives outside :mod:`ppazam_core`, whose own import is the slow part."""

import signal
import sys

INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def main() -> int:
    """Import :mod:`ppazam_core.cli` and run its ``main``; its exit status."""
    noted: list[int] = []
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # e.g. a background job: keep ignoring
    previous = None if ignored else signal.signal(signal.SIGINT, lambda number, frame: noted.append(number))
    try:
        from ppazam_core.cli import main as run
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if noted:
        print("error: interrupted", file=sys.stderr)
        return INTERRUPTED
    return run()
