"""The on-disk cache: content-addressed folders written atomically.

A folder is built under a temporary name beside its final place and renamed into place only
after a ``.done`` marker was written, so an interrupted build never leaves a folder that a
later run trusts; the marker holds the folder's build record (commit, code fingerprint, package
versions, machine, time: :func:`~ppazam_core.provenance.build_record`). Keys are hashes of the
full configuration plus a fingerprint of the package's source code
(:func:`~ppazam_core.provenance.code_fingerprint`), so that a change to training, augmentation,
synthesis or features never reuses an artifact the older code made.

Temporary folders are named ``.<name>.partial-<pid>@<host>-<random>`` (a build) and
``.<name>.old-<pid>@<host>-<random>`` (the folder a finished build replaces, until it is
deleted), so that the next writer beside them can tell the leftovers of a process that died
from those of one still running (:func:`recover_leftovers`). A file-system fault (no space, a
read-only disk, no permission, a quota, the file-size limit) is a
:class:`~ppazam_core.errors.StorageError` naming the path, never a half-written folder; a large
file is allocated up front (:func:`allocate`), so that a full disk does not kill the process
with SIGBUS while it writes a memory map.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator

from ppazam_core.errors import StorageError
from ppazam_core.provenance import build_record, code_fingerprint

logger = logging.getLogger(__name__)

DONE_MARKER = ".done"
SPACE_MARGIN = 64 * 2**20  # bytes a disk keeps free beyond a file allocated on it
LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?:(?P<pid>\d+)@(?P<host>.+)-)?[a-z0-9_]+$")


def default_cache_dir() -> Path:
    """``$PPAZAM_CACHE``, else ``$XDG_CACHE_HOME/ppazam``, else ``~/.cache/ppazam``."""
    if os.environ.get("PPAZAM_CACHE"):
        return Path(os.environ["PPAZAM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ppazam"


def canonical_json(value: Any) -> str:
    """Deterministic JSON of plain data and (nested) dataclasses."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))


def config_hash(value: Any, length: int = 16) -> str:
    """Hash naming an artifact: canonical JSON of ``value`` plus :func:`code_fingerprint`."""
    payload = canonical_json({"code": code_fingerprint(), "config": value})
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def settings_hash(value: Any, length: int = 16) -> str:
    """Hash of ``value``'s canonical JSON alone (no code): names a configuration across commits,
    so that two runs of different code can be told to be of the same configuration."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def build_of(folder: Path) -> dict:
    """The build record of a finished cache folder (empty for folders finished by versions that
    did not record it, or a damaged marker)."""
    try:
        record = json.loads((Path(folder) / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` was finished by :func:`atomic_folder`."""
    return (folder / DONE_MARKER).is_file()


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success mark it done and rename it to ``final``.

    On any error the temporary folder is removed and ``final`` is left as it was. A finished
    build replaces whatever ``final`` held (a stale half-written folder, or an older build when
    the caller chose to rebuild): the old folder is moved aside, the new one renamed in, then
    the old one deleted; SIGTERM and SIGINT wait for the two renames (:func:`deferred_signals`),
    and a process killed between them leaves the old folder aside for the next writer to put
    back (:func:`recover_leftovers`, which runs first).

    Raises:
        StorageError: ``final`` is a mount point (it cannot be renamed), or a file-system fault
            while the folder is written (or by the block).
    """
    if os.path.ismount(final):
        raise StorageError(final, "it is a mount point, and a finished folder is renamed into place, which a mount "
                                  "point does not allow", f"name a folder inside it instead, e.g. {final / 'model'}",
                           cache_hint=False)
    with storage_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        recover_leftovers(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final, "partial"), dir=final.parent))
    try:
        with storage_errors(final, tmp):
            yield tmp
            (tmp / DONE_MARKER).write_text(json.dumps(build_record(), indent=2))
            aside = _swap_in(tmp, final)
        if aside is not None:
            _remove(aside, "the folder it replaced")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, final: Path) -> Path | None:
    """Rename ``tmp`` to ``final``, moving what ``final`` held into a new folder beside it first;
    returns that folder (``None`` when there was nothing to move), for the caller to delete.
    Should the rename fail, the old folder goes back, unless another writer finished ``final``
    meanwhile (then ``tmp`` is dropped: its build is the same)."""
    with deferred_signals(signal.SIGTERM, signal.SIGINT):
        aside = None
        if final.exists():
            aside = Path(tempfile.mkdtemp(prefix=_temporary_prefix(final, "old"), dir=final.parent))
            os.replace(final, aside / final.name)
        try:
            os.replace(tmp, final)
        except OSError:
            if is_complete(final):  # another writer won the race only if it finished
                shutil.rmtree(tmp)
                return aside
            if aside is not None and not final.exists():
                os.replace(aside / final.name, final)
            raise
    return aside


def _temporary_prefix(final: Path, kind: str) -> str:
    """The start of the name of a ``kind`` (``partial`` or ``old``) folder of ``final``: it names
    this process and machine (:data:`LEFTOVER`)."""
    return f".{final.name}.{kind}-{os.getpid()}@{host_name()}-"


def host_name() -> str:
    """This machine's name, as temporary folders spell it."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def recover_leftovers(folder: Path) -> None:
    """Put back or remove what writers that died left in ``folder``: a folder a dead writer had
    moved aside to replace it (killed between its two renames) goes back in place when nothing
    took its place, with a warning; other temporary folders and files of dead writers are deleted. Those
    of live processes are left alone, and those whose writer cannot be told (another machine, or
    a ppazam too old to name itself) are reported, not touched."""
    for path in sorted(Path(folder).glob(".*.*-*")):
        match = LEFTOVER.match(path.name)
        if match is None:
            continue
        if not path.is_dir():  # a file written by :func:`atomic_file`
            if match["kind"] == "partial" and match["host"] == host_name() and match["pid"] \
                    and not _alive(int(match["pid"])):
                path.unlink(missing_ok=True)
                logger.info("removed %s, left by process %s that died", path, match["pid"])
            continue
        if match["pid"] is None or match["host"] != host_name():
            logger.warning("%s was left by %s; delete it unless that run is still writing", path,
                           "an older ppazam" if match["pid"] is None else f"process {match['pid']} on {match['host']}")
        elif not _alive(int(match["pid"])):
            if match["kind"] == "old":
                _put_back(path, Path(folder) / match["name"], int(match["pid"]))
            _remove(path, f"left by process {match['pid']} that died")


def _put_back(aside: Path, final: Path, pid: int) -> None:
    """Rename ``aside/<final's name>`` (moved aside by the dead writer ``pid``) back to
    ``final`` when ``final`` is missing."""
    moved = aside / final.name
    if final.exists() or not moved.exists():
        return
    try:
        os.replace(moved, final)
    except OSError:
        if not final.exists():  # else another writer put it back first
            raise
        return
    logger.warning("put %s back from %s: process %d died while replacing it", final, aside, pid)


def _remove(folder: Path, why: str) -> None:
    """Delete ``folder`` (``why``: for the log); one that cannot be deleted is reported."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:  # another writer removed it first
        return
    except OSError as e:
        logger.warning("could not remove %s (%s): %s", folder, why, e)
        return
    logger.info("removed %s, %s", folder, why)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@contextmanager
def deferred_signals(*signals: signal.Signals) -> Iterator[None]:
    """Hold ``signals`` back while the block runs (e.g. the renames that swap a folder in), then
    deliver those that came to the handlers they had: a SIGTERM or a Ctrl-C ends the process
    before or after the block, never in the middle. Only the main thread can hold signals; in
    another one the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {number: signal.signal(number, lambda signum, frame: caught.append(signum)) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in caught:
            signal.raise_signal(number)


@contextmanager
def storage_errors(path: Path, temporary: Path | None = None) -> Iterator[None]:
    """Turn a file-system fault (:meth:`StorageError.applies_to`) raised in the block into a
    :class:`~ppazam_core.errors.StorageError` naming the file the fault names, else ``path``; a
    file inside ``temporary`` (the folder being written to become ``path``) is named as it would
    be inside ``path``."""
    try:
        yield
    except OSError as e:
        if not StorageError.applies_to(e):
            raise
        named = Path(e.filename) if isinstance(e.filename, (str, Path)) else path
        if temporary is not None and named.is_relative_to(temporary):
            named = path / named.relative_to(temporary)
        raise StorageError.of(e, named) from e


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged process may still write on the disk of ``folder``."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def require_space(folder: Path, size: int) -> None:
    """Refuse to write ``size`` bytes into ``folder`` when its disk has less than that plus
    :data:`SPACE_MARGIN` free (:func:`os.statvfs`).

    Raises:
        StorageError: not enough space.
    """
    free = free_bytes(folder)
    if size + SPACE_MARGIN > free:
        raise StorageError(folder, f"no space left on the device: {size / 2**20:.1f} MiB to write and "
                                   f"{free / 2**20:.1f} MiB free (keeping {SPACE_MARGIN // 2**20} MiB spare)",
                           "free space on that disk or write to a folder on another disk")


def require_writable(folder: Path, remedy: str) -> None:
    """Refuse a ``folder`` a file cannot be created in (read-only file system, no permission),
    before work whose result goes there is done: a temporary file is made there and removed.

    Raises:
        StorageError: the folder cannot be written to; it says ``remedy``.
    """
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".ppazam-write-check-"):
            pass
    except OSError as e:
        if not StorageError.applies_to(e):
            raise
        raise StorageError(folder, StorageError.of(e, folder).reason, remedy, cache_hint=False) from e


def allocate(path: Path) -> None:
    """Allocate every block of the file ``path`` as it is sized (a file
    :func:`numpy.lib.format.open_memmap` made is sized but sparse), so that a full disk fails
    here rather than with SIGBUS at the first write to a page of its memory map.

    Raises:
        StorageError: the disk (or the quota, or the file-size limit) has no room for it.
    """
    with storage_errors(path), open(path, "r+b") as handle:
        os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)


@contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of the writers of ``folder`` (an ``flock`` of the file
    ``.<name>.lock`` beside it) while the block runs: a second writer waits, saying so, until the
    first is done, then sees what the first wrote. The lock file stays: deleting it would let
    two writers each lock a file of that name.

    Raises:
        StorageError: the lock file cannot be created.
    """
    lock = folder.parent / f".{folder.name}.lock"
    with storage_errors(lock):
        folder.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("%s is being written by another process; waiting for it to finish", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextmanager
def atomic_file(path: Path, size: int) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` for a file of about ``size`` bytes, after checking
    the disk has room for it (:func:`require_space`); on success rename it to ``path``. On any
    error the temporary file is removed (one left by a process that died is removed by the next
    :func:`recover_leftovers` of its folder). Writers that fail with errors of their own (a
    codec library's) on a disk that filled up meanwhile get a :class:`StorageError` saying so.

    Raises:
        StorageError: not enough space, or a file-system fault while writing or renaming.
    """
    tmp = path.with_name(f"{_temporary_prefix(path, 'partial')}file")
    try:
        with storage_errors(path):
            require_space(path.parent, size)
            try:
                yield tmp
            except Exception:
                if free_bytes(path.parent) < size:
                    require_space(path.parent, size)
                raise
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, with the permissions a
    plain ``open(path, "w")`` would give (``mkstemp`` makes its files 0600: a shared report
    folder would be unreadable to others). Not for secrets.

    Raises:
        StorageError: a file-system fault (no space, a read-only folder, ...).
    """
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with storage_errors(path):
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def dir_size(folder: Path, skip: tuple[str, ...] = ()) -> int:
    """Bytes of the files under ``folder``, leaving out sub-folders named in ``skip``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*")
               if p.is_file() and not set(p.relative_to(folder).parts[:-1]) & set(skip))
