"""The on-disk cache: content-addressed folders written atomically.

A folder is built under a temporary name beside its final place and renamed into place only
after a ``.done`` marker was written, so an interrupted build never leaves a folder that a
later run trusts; the marker holds the folder's build record (commit, code fingerprint, package
versions, machine, time: :func:`~ppazam_core.provenance.build_record`). Keys are hashes of the
full configuration plus a fingerprint of the package's source code
(:func:`~ppazam_core.provenance.code_fingerprint`), so that a change to training, augmentation,
synthesis or features never reuses an artifact the older code made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterator

from ppazam_core.provenance import build_record, code_fingerprint

DONE_MARKER = ".done"


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
    the caller chose to rebuild): the old folder is moved aside, then deleted.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield tmp
        (tmp / DONE_MARKER).write_text(json.dumps(build_record(), indent=2))
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
            shutil.rmtree(old)
        try:
            os.replace(tmp, final)
        except OSError:
            if not is_complete(final):  # another writer won the race only if it finished
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, with the permissions a
    plain ``open(path, "w")`` would give (``mkstemp`` makes its files 0600: a shared report
    folder would be unreadable to others). Not for secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
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
