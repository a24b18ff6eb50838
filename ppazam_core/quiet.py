"""Keep third-party chatter out of the output, one known line at a time."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Iterator


@contextlib.contextmanager
def without_stderr_lines(prefix: str) -> Iterator[None]:
    """Buffer what the block writes to ``sys.stderr``, then pass on every line of it except
    those starting with ``prefix`` (also when the block raises)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines(keepends=True):
            if not line.startswith(prefix):
                sys.stderr.write(line)
