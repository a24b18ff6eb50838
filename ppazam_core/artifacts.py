"""Reading the files of finished cache folders: a damaged one is a
:class:`~ppazam_core.errors.DamagedArtifactError` naming it, never a traceback.

Cache folders are written atomically (:func:`~ppazam_core.store.atomic_folder`), so an
interrupted build leaves nothing behind; a file can still be damaged later (a full disk, a copy
cut short, an edit by hand). Every loader reads through :func:`reading` or the readers built on
it, so a truncated zip, a garbled JSON, a corrupt array or weights file ends with an error that
names the file and the folder to delete. What is cheap to rebuild (client keys, datasets, the
noise and room banks) catches that error and is rebuilt with a warning instead.
"""

from __future__ import annotations

import json
import pickle
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile
import torch

from ppazam_core.errors import DamagedArtifactError
from ppazam_core.store import is_complete

# what reading a damaged file raises in the standard library (shutil.ReadError is an OSError; a
# zip archive's corrupt compressed data, zlib.error), numpy, pandas, torch, soundfile and Concrete
# (its C++ errors are RuntimeErrors)
DAMAGE = (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile,
          pickle.UnpicklingError, zlib.error)
MAX_REASON = 200


def damaged(path: Path, reason: str) -> DamagedArtifactError:
    """The error for ``path``, naming the finished cache folder that holds it (the nearest one
    with a done marker, else the file's folder) as the one to delete."""
    path = Path(path)
    folder = next((p for p in (path, *path.parents) if is_complete(p)), path.parent)
    first_line = reason.strip().splitlines()[0] if reason.strip() else "unreadable"
    return DamagedArtifactError(path, first_line[:MAX_REASON], folder)


@contextmanager
def reading(path: Path) -> Iterator[Path]:
    """Run a block that reads ``path``; what a damaged file raises in it becomes a
    :class:`DamagedArtifactError` naming ``path``."""
    try:
        yield Path(path)
    except DAMAGE as e:
        raise damaged(path, f"{type(e).__name__}: {e}") from e


def read_json(path: Path, *required: str) -> Any:
    """The JSON value of ``path``; a :class:`DamagedArtifactError` when it cannot be read or
    parsed, or when ``required`` keys are given and it is not an object holding all of them."""
    with reading(path):
        value = json.loads(Path(path).read_text())
    missing = [key for key in required if not isinstance(value, dict) or key not in value]
    if missing:
        raise damaged(path, f"no {', '.join(missing)} in it")
    return value


def read_arrays(path: Path, *names: str) -> tuple[np.ndarray, ...]:
    """Arrays ``names`` of an ``.npz`` file, read into memory; a :class:`DamagedArtifactError`
    when the file or one of them cannot be read."""
    with reading(path), np.load(path) as data:
        return tuple(data[name] for name in names)


def check_audio(path: Path, frames: int | None = None) -> None:
    """A :class:`DamagedArtifactError` unless ``path`` is a readable audio file holding samples
    (``frames`` of them, when given)."""
    with reading(path):
        found = soundfile.info(str(path)).frames
    if found == 0 or (frames is not None and found != frames):
        expected = "" if frames is None else f", expected {frames}"
        raise damaged(path, f"{found} samples{expected}")


def load_weights(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``module`` with the state dict saved at ``path``; a :class:`DamagedArtifactError` when the
    file cannot be read or does not fit the module."""
    with reading(path):
        module.load_state_dict(torch.load(path, weights_only=True))
    return module
