"""One way to run long work: an ordered process-pool map with a rich progress bar.

The bar is shown on a terminal and stays quiet otherwise (CI, pipes, ``CI=true``). Workers
are spawned, not forked, so torch's thread pools are never copied into a child. While a remote
map is set (:func:`set_remote_map`: :func:`ppazam_core.distributed.start` sets Ray's), the
items run there instead, whatever ``workers`` says.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ppazam_core.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

RemoteMap = Callable[[Callable[[T], R], Sequence[T], str], Iterator[R]]
_remote_map: RemoteMap | None = None


def set_remote_map(remote: RemoteMap | None) -> None:
    """Route :func:`parallel_map` through ``remote(fn, items, description)`` (an ordered map
    that draws its own progress), or back to local processes with ``None``."""
    global _remote_map
    _remote_map = remote


def default_workers() -> int:
    """All cores of this machine (``$PPAZAM_WORKERS`` overrides); a
    :class:`~ppazam_core.errors.ConfigError` when that is not a whole number >= 1."""
    given = os.environ.get("PPAZAM_WORKERS")
    if not given:
        return os.cpu_count() or 1
    if not given.strip().isdigit() or int(given) < 1:
        raise ConfigError.bad_value("$PPAZAM_WORKERS", given, "a whole number of processes >= 1 (or unset: every core)")
    return int(given)


def show_progress() -> bool:
    """Whether long work draws a progress bar: only on a terminal, never under CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int, description: str
) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, on ``workers`` processes (inline if 1), or
    through the remote map when one is set (see :func:`set_remote_map`)."""
    if _remote_map is not None and len(items) > 0:
        yield from _remote_map(fn, items, description)
        return
    with progress_bar() as progress:
        task = progress.add_task(description, total=len(items))
        for result in _map(fn, items, workers):
            progress.advance(task)
            yield result


def _map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterable[R]:
    if workers <= 1 or len(items) <= 1:
        return map(fn, items)
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(items)), mp_context=multiprocessing.get_context("spawn")
    )
    chunksize = max(1, min(16, len(items) // (8 * workers)))
    return _drain(pool, pool.map(fn, items, chunksize=chunksize))


def _drain(pool: ProcessPoolExecutor, results: Iterable[R]) -> Iterator[R]:
    with pool:
        yield from results


def progress_bar() -> Progress:
    """The project's rich progress bar, drawn only where :func:`show_progress` allows."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show_progress(),
        transient=False,
    )
