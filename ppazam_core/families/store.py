"""Artifact folders of the families beside the two-stage CNN.

A family's model lives in ``cache_dir/models/<family>-<hash>``, the hash covering the library's
fingerprint and the settings the model depends on. It is written atomically (an interrupted
run leaves nothing a later run trusts) and described by its manifest
(:mod:`ppazam_core.manifest`).
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ppazam_core.config import ExperimentConfig
from ppazam_core.fhe.deployment import EncryptedChannel
from ppazam_core.errors import ArtifactError
from ppazam_core.families.registry import Family, register
from ppazam_core.audio.library import Library
from ppazam_core.manifest import has_manifest, model_manifest, read_manifest, write_manifest
from ppazam_core.recognition import Match, Mode, Recognizer, rank_segments
from ppazam_core.store import DONE_MARKER, atomic_folder, config_hash, is_complete


def family_folder(family: str, library: Library, settings: dict, cache_dir: Path) -> Path:
    """Where the model of ``family`` with ``settings`` trained on ``library`` lives."""
    return Path(cache_dir) / "models" / f"{family}-{config_hash({'library': library.fingerprint(), **settings})}"


def single_model_family(name: str, settings: Callable[[ExperimentConfig], dict],
                        train: Callable[[Library, ExperimentConfig, Path, Path, int | None, bool], None],
                        load: Callable[[Path], Recognizer], **spec: Any) -> Family:
    """Register the family ``name`` whose model is one store folder (:func:`family_folder` of
    ``settings(config)``), written by ``train(library, config, folder, cache_dir, workers,
    refresh)`` (which also compiles whatever the family runs encrypted) and read by
    ``load(folder)``; ``spec`` holds the other :class:`~ppazam_core.families.registry.Family`
    fields (its modes default to ``load``'s). The folder's hash covers the code of a family
    outside ``ppazam_core`` too (:func:`~ppazam_core.provenance.code_fingerprint` covers ours),
    so that editing a plug-in family trains its model again."""
    code = _plugin_code_hash(train, load)

    def folder(library: Library, config: ExperimentConfig, cache_dir: Path) -> Path:
        return family_folder(name, library, {**settings(config), **({"family_code": code} if code else {})}, cache_dir)

    def is_trained(library: Library, config: ExperimentConfig, cache_dir: Path, compiled: bool = False) -> bool:
        return FamilyModel.is_trained(folder(library, config, cache_dir))

    def trained(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                refresh: bool = False, compiled: bool = True) -> Recognizer:
        target = folder(library, config, cache_dir)
        if refresh or not FamilyModel.is_trained(target):
            train(library, config, target, cache_dir, workers, refresh)
        return load(target)

    return register(Family(name, trained, is_trained, load=load, **{"modes": getattr(load, "modes", tuple(Mode)), **spec}))


def _plugin_code_hash(*functions: Callable) -> str:
    """SHA-256 of the source files of the modules outside ``ppazam_core`` defining ``functions``
    (empty when they are all ours)."""
    digest = hashlib.sha256()
    modules = sorted({f.__module__ for f in functions if not f.__module__.startswith("ppazam_core.")})
    for module in modules:
        source = getattr(sys.modules[module], "__file__", None)
        digest.update(Path(source).read_bytes() if source else module.encode())
    return digest.hexdigest()[:16] if modules else ""


@contextmanager
def write_family(folder: Path, family: str, library: Library, config: ExperimentConfig, timings: dict[str, float],
                 embedding: Path | None = None) -> Iterator[Path]:
    """A temporary folder to write the model into; its manifest (with ``timings`` as they are
    when the block ends) is added and the folder committed when the block succeeds."""
    with atomic_folder(folder) as tmp:
        if embedding is not None:
            shutil.copytree(embedding, tmp / "embedding", ignore=shutil.ignore_patterns(DONE_MARKER))
        yield tmp
        write_manifest(tmp, model_manifest(family, folder, library, config, timings))


class FamilyModel:
    """What the single-model families share: a finished folder with a manifest. An
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

    def combine(self, segment_scores: np.ndarray, top: int = 3) -> list[Match]:
        """The ``top`` tracks of one query from its segments' track scores, as the bench
        combines them (:func:`~ppazam_core.recognition.rank_segments`)."""
        return rank_segments(self, segment_scores, top)

    def stage_calls(self, patch: np.ndarray, mode: Mode | str) -> dict[str, tuple[Callable[[], Any], str]]:
        """Stages timed apart from the whole query: none (one model call)."""
        return {}

    def rejects(self, confidence: np.ndarray) -> np.ndarray | None:
        """The family's own "unknown" rule per query confidence, if it has one (else ``None``)."""
        return None

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        if not self.is_trained(folder):
            raise ArtifactError(f"{folder} is not a finished {self.family} model (missing or interrupted); train it")
        self.folder = folder
        self.manifest, self.config, self.track_ids = read_manifest(folder, self.family)

    @staticmethod
    def is_trained(folder: Path) -> bool:
        return is_complete(Path(folder)) and has_manifest(folder)
