"""The ``ppazam`` console script. Importing the command line takes seconds (torch, Concrete ML);
a Ctrl-C meanwhile ends as one during a command does, with one ``error:`` line and exit status
130, not Python's traceback. It lives outside :mod:`ppazam_core`, whose own import is the slow
part."""

import sys

INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def main() -> int:
    """Import :mod:`ppazam_core.cli` and run its ``main``; its exit status."""
    try:
        from ppazam_core.cli import main as run
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return INTERRUPTED
    return run()
