"""Artifact folders of the families beside the two-stage CNN.

A family's model lives in ``cache_dir/models/<family>-<hash>``, the hash covering the library's
fingerprint and the settings the model depends on. It is written atomically (an interrupted
run leaves nothing a later run trusts) and described by ``family.json``.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ppazam_core.artifacts import read_json, reading
from ppazam_core.config import ExperimentConfig
from ppazam_core.deployment import EncryptedChannel
from ppazam_core.errors import ArtifactError
from ppazam_core.library import Library
from ppazam_core.store import DONE_MARKER, atomic_folder, canonical_json, config_hash, is_complete

FAMILY_FILE = "family.json"


def family_folder(family: str, library: Library, settings: dict, cache_dir: Path) -> Path:
    """Where the model of ``family`` with ``settings`` trained on ``library`` lives."""
    return Path(cache_dir) / "models" / f"{family}-{config_hash({'library': library.fingerprint(), **settings})}"


@contextmanager
def write_family(folder: Path, family: str, library: Library, config: ExperimentConfig, timings: dict[str, float],
                 embedding: Path | None = None) -> Iterator[Path]:
    """A temporary folder to write the model into; ``family.json`` (with ``timings`` as they
    are when the block ends) is added and the folder committed when the block succeeds."""
    with atomic_folder(folder) as tmp:
        if embedding is not None:
            shutil.copytree(embedding, tmp / "embedding", ignore=shutil.ignore_patterns(DONE_MARKER))
        yield tmp
        manifest = {"family": family, "config_hash": folder.name, "config": json.loads(canonical_json(config)),
                    "library": library.name, "library_fingerprint": library.fingerprint(),
                    "track_ids": [t.id for t in library], "timings": {k: round(v, 3) for k, v in timings.items()}}
        (tmp / FAMILY_FILE).write_text(json.dumps(manifest, indent=2))


class FamilyModel:
    """What the single-model families share: a finished folder with ``family.json``. An
    :class:`ArtifactError` when the folder is missing, unfinished or of another family, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when one of its files cannot be read."""

    family: str
    assignment: np.ndarray | None = None
    cluster_top_k: int | None = None
    channel: EncryptedChannel | None = None
    calls_per_query: int = 1  # encrypted classifier calls one query makes

    def circuit_names(self) -> list[str]:
        """Names of the compiled classifiers (none for clear-text families)."""
        return [] if self.channel is None else self.channel.names()

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        if not self.is_trained(folder):
            raise ArtifactError(f"{folder} is not a finished {self.family} model (missing or interrupted); train it")
        self.folder = folder
        self.manifest = read_json(folder / FAMILY_FILE, "family", "track_ids", "config", "timings")
        if self.manifest["family"] != self.family:
            raise ArtifactError(f"{folder} holds a {self.manifest['family']} model, not {self.family}")
        with reading(folder / FAMILY_FILE):
            self.track_ids: tuple[str, ...] = tuple(self.manifest["track_ids"])
            self.config = ExperimentConfig.from_canonical(self.manifest["config"])

    @staticmethod
    def is_trained(folder: Path) -> bool:
        return is_complete(Path(folder)) and (Path(folder) / FAMILY_FILE).is_file()
