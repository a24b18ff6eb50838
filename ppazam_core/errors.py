"""Errors a user can act on. Each names the offending path, key or value."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path
from typing import Iterable


class PpazamError(Exception):
    """Base class of every error ppazam raises on purpose."""


class AudioError(PpazamError):
    """An audio file that cannot be used: unreadable, corrupt, empty or non-finite."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class LibraryError(PpazamError):
    """A music library that cannot be opened or holds no usable track."""


class ConfigError(PpazamError):
    """A configuration value or key that is not allowed."""

    @classmethod
    def bad_value(cls, key: str, value: object, allowed: Iterable[object] | str) -> "ConfigError":
        """An error naming the key, the rejected value and what is allowed instead."""
        allowed_text = allowed if isinstance(allowed, str) else ", ".join(map(str, allowed))
        return cls(f"{key} = {value!r} is not allowed; allowed: {allowed_text}")

    def within(self, table: str) -> "ConfigError":
        """This error with its key named in ``table`` (``patience = 0 ...`` becomes
        ``qat.patience = 0 ...``) where a dataclass shared by several tables named a bare key."""
        message = str(self)
        return ConfigError(f"{table}.{message}") if _BARE_KEY.match(message) else self


_BARE_KEY = re.compile(r"^[a-z_][a-z0-9_]*( \([^)]*\))? = ")


def is_integer(value: object) -> bool:
    """An ``int`` and not a ``bool`` (TOML's ``true`` is no count): for config checks."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An ``int`` or ``float`` and not a ``bool``: for config checks."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_in_range(key: str, value: object, low: float, high: float, integer: bool = False,
                     low_open: bool = False) -> None:
    """A :class:`ConfigError` naming ``key`` unless ``value`` is a number (an integer with
    ``integer``) from ``low`` (excluded with ``low_open``) to ``high``. The upper bounds of
    settings keep a typo (``1e9``) from asking for unbounded memory or time."""
    kind = "an integer" if integer else "a number"
    ok = (is_integer(value) if integer else is_number(value)) and (low < value if low_open else low <= value) \
        and value <= high
    if not ok:
        lower = f"above {low:g}" if low_open else f"from {low:g}"
        raise ConfigError.bad_value(key, value, f"{kind} {lower} to {high:,g}")


class DebianError(PpazamError):
    """Building the Debian music library failed (missing tools, packages or files)."""


class ArtifactError(PpazamError):
    """A trained-model folder that is missing, incomplete or does not fit the request."""


class DamagedArtifactError(ArtifactError):
    """A file of a finished cache folder that cannot be read (truncated, garbled, corrupt):
    names the file, why, and the folder to delete so that the next run rebuilds it (or, with
    ``remedy``, what rebuilds it instead)."""

    def __init__(self, path: str | Path, reason: str, folder: str | Path, remedy: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.folder = Path(folder)
        super().__init__(f"{self.path} is damaged ({reason}); delete {self.folder} and "
                         f"{remedy or 'run the command again to rebuild it'}")


class FheError(PpazamError):
    """An encrypted exchange that cannot go on: a truncated or tampered message, keys of
    another circuit, or an input the circuit does not take."""


class StorageError(PpazamError):
    """A file or folder that cannot be written: no space left, over quota, a read-only file
    system, no permission, past the file-size limit. Names the path, why and what to do."""

    REASONS = {
        errno.ENOSPC: ("no space left on the device", "free space on that disk or write to a folder on another disk"),
        errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write to a folder on another disk"),
        errno.EROFS: ("read-only file system", "write to a folder on a writable disk instead"),
        errno.EACCES: ("permission denied", "make the folder writable for you or write to another folder"),
        errno.EPERM: ("operation not permitted", "make the folder writable for you or write to another folder"),
        errno.EFBIG: ("file too large for the file-size limit or the file system",
                      "raise the limit (`ulimit -f`) or write to a folder on another disk"),
    }

    def __init__(self, path: str | Path, reason: str, remedy: str, cache_hint: bool = True) -> None:
        """``cache_hint``: end with how to move the cache (not for a folder the user named)."""
        self.path = str(path)
        self.reason = reason
        hint = " (to move the cache: --cache-dir or PPAZAM_CACHE)" if cache_hint else ""
        super().__init__(f"cannot write {self.path}: {reason}; {remedy}{hint}")

    @classmethod
    def applies_to(cls, error: OSError) -> bool:
        """Whether ``error`` is a storage fault: its errno is one of :attr:`REASONS`, or it is a
        :class:`shutil.Error` listing the files a copy failed on."""
        return error.errno in cls.REASONS or _failed_copies(error) is not None

    @classmethod
    def of(cls, error: OSError, path: str | Path) -> "StorageError":
        """The error of the storage fault ``error`` met writing ``path``."""
        copies = _failed_copies(error)
        if copies:
            return cls(path, f"copy failed ({copies[0][2]})",
                       "free space on that disk or make the folder writable, or write to another folder")
        reason, remedy = cls.REASONS.get(error.errno, (error.strerror or str(error), "check the disk and the folder"))
        return cls(path, reason, remedy)


def _failed_copies(error: OSError) -> list[tuple[str, str, str]] | None:
    """The ``(source, destination, why)`` of each file a :func:`shutil.copytree` failed on, as its
    :class:`shutil.Error` lists them (``None`` for any other error)."""
    listed = error.args[0] if isinstance(error, shutil.Error) and error.args else None
    return listed if isinstance(listed, list) and listed else None
