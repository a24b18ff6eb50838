"""The one manifest format of every family's model folder: ``model.json``.

It names the family that wrote the folder, the folder's configuration hash and the whole
experiment configuration (canonical JSON), the library (name and content fingerprint), its
track ids in score order with each track's title and the SHA-256 of its audio file, the seconds each training step took, and whatever the family keeps
besides (the two-stage CNN its cluster sizes and quantized precision, enrolled models the
tracks added and removed). Every family writes it with :func:`model_manifest` and
:func:`write_manifest` and reads it with :func:`read_manifest`; ``ppazam identify --model`` and
``ppazam enroll`` learn a folder's family from it (:func:`family_of`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppazam_core.artifacts import read_json, reading
from ppazam_core.config import ExperimentConfig
from ppazam_core.errors import ArtifactError
from ppazam_core.store import canonical_json

if TYPE_CHECKING:
    from ppazam_core.audio.library import Library

MANIFEST_FILE = "model.json"
OLDER_MANIFESTS = ("family.json", "identifier.json")  # before the one format
REQUIRED = ("family", "config_hash", "config", "library", "library_fingerprint", "track_ids", "titles", "sha256",
            "timings")


def model_manifest(family: str, folder: Path, library: Library, config: ExperimentConfig, timings: dict[str, float],
                   **details: Any) -> dict:
    """The manifest of the model of ``family`` stored in ``folder`` (its name is the
    configuration hash), trained with ``config`` on ``library``; ``timings`` in seconds (rounded
    to the millisecond), ``details`` the family's own JSON-serialisable fields."""
    return {"family": family, "config_hash": Path(folder).name, "config": json.loads(canonical_json(config)),
            "library": library.name, "library_fingerprint": library.fingerprint(),
            "track_ids": [t.id for t in library], "titles": {t.id: t.title for t in library},
            "sha256": {t.id: t.sha256 for t in library if t.sha256},
            "timings": {k: round(v, 3) for k, v in timings.items()}, **details}


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write ``manifest`` as ``folder/model.json`` (into a folder being written atomically).

    Raises:
        ValueError: ``manifest`` lacks one of the fields every family's manifest has.
    """
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ValueError(f"a model manifest needs {', '.join(missing)}")
    (Path(folder) / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def has_manifest(folder: Path) -> bool:
    """Whether ``folder`` holds a model manifest."""
    return (Path(folder) / MANIFEST_FILE).is_file()


def holds_model(folder: Path) -> bool:
    """Whether ``folder`` holds a model of this or an older ppazam (whose manifests had other names)."""
    return has_manifest(folder) or any((Path(folder) / name).is_file() for name in OLDER_MANIFESTS)


def family_of(folder: Path) -> str:
    """The family that wrote the model folder ``folder``.

    Raises:
        ArtifactError: ``folder`` holds no manifest, or one of an older ppazam.
        DamagedArtifactError: the manifest cannot be read.
    """
    older = [name for name in OLDER_MANIFESTS if (Path(folder) / name).is_file()]
    if older and not has_manifest(folder):
        raise ArtifactError(f"{folder} was written by an older ppazam ({older[0]}, not {MANIFEST_FILE}): train the "
                            "model again, or enroll its songs into a new folder")
    if not has_manifest(folder):
        raise ArtifactError(f"{folder} holds no ppazam model ({MANIFEST_FILE} is missing)")
    return read_json(Path(folder) / MANIFEST_FILE, "family")["family"]


def read_manifest(folder: Path, family: str, *details: str) -> tuple[dict, ExperimentConfig, tuple[str, ...]]:
    """The manifest of the model folder ``folder`` written by ``family`` (holding the family's
    own fields ``details`` too), its configuration and its track ids.

    Raises:
        ArtifactError: the folder holds a model of another family.
        DamagedArtifactError: the manifest is missing, unreadable or lacks a field.
    """
    path = Path(folder) / MANIFEST_FILE
    manifest = read_json(path, *REQUIRED, *details)
    if manifest["family"] != family:
        raise ArtifactError(f"{folder} holds a {manifest['family']} model, not {family}")
    with reading(path):
        return manifest, ExperimentConfig.from_canonical(manifest["config"]), tuple(manifest["track_ids"])
