"""Errors a user can act on. Each names the offending path, key or value."""

from __future__ import annotations

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


def is_integer(value: object) -> bool:
    """An ``int`` and not a ``bool`` (TOML's ``true`` is no count): for config checks."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An ``int`` or ``float`` and not a ``bool``: for config checks."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
