"""What every family that enrolls songs without training shares (``ppazam enroll``): the checks
of a request, and the manifest of the model it writes.

A request adds the tracks of a library and removes track ids; it is refused before anything is
computed when an id to add is known or named twice, a track is silent or the same audio as a
song of the model (trained or enrolled) or as another one added, an id to remove is unknown,
or fewer than two tracks would remain. The new model's manifest (``model.json``, see
:mod:`ppazam_core.manifest`) keeps the base model's fields and lists every track's title and
audio SHA-256, the songs ever added (with how they were enrolled and the seconds it took) and
removed, and a library fingerprint of its own.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ppazam_core.audio.library import Library
from ppazam_core.errors import ConfigError
from ppazam_core.models.encoder.references import merged_references, reference_embeddings
from ppazam_core.recognition import Recognizer
from ppazam_core.store import DONE_MARKER, atomic_folder, canonical_json


def kept_tracks(model: Recognizer, tracks: Library, remove: Sequence[str]) -> np.ndarray:
    """``(T,)`` bool: which of ``model``'s tracks stay once ``remove`` is dropped and ``tracks``
    added.

    Raises:
        ConfigError: the request is refused (see the module docstring).
    """
    known = list(model.track_ids)
    new_ids = [t.id for t in tracks]
    clash = sorted({i for i in new_ids if i in known or new_ids.count(i) > 1})
    if clash:
        raise ConfigError(f"tracks {', '.join(clash[:5])} are already enrolled (or named twice); remove them first "
                          "or rename the files")
    missing = sorted(set(remove) - set(known))
    if missing:
        raise ConfigError(f"cannot remove {', '.join(missing[:5])}: not enrolled in {model.folder}")
    silent = [t.id for t in tracks if t.silent]
    if silent:
        raise ConfigError(f"tracks {', '.join(silent[:5])} are silent: nothing to enroll")
    audio = {sha: i for i, sha in model.manifest["sha256"].items() if i not in set(remove)}
    copies = []
    for track in (t for t in tracks if t.sha256):
        if track.sha256 in audio:
            copies.append(f"{track.id} is the audio of {audio[track.sha256]}")
        else:
            audio[track.sha256] = track.id
    if copies:
        raise ConfigError(f"the same audio is in the model already: {'; '.join(copies[:5])}")
    keep = np.asarray([i not in set(remove) for i in known], dtype=bool)
    if keep.sum() + len(new_ids) < 2:
        raise ConfigError("an enrolled model needs at least two tracks")
    return keep


def enrolled_manifest(model: Recognizer, tracks: Library, remove: Sequence[str], enroll_s: Sequence[float],
                      how: dict, timings: dict) -> dict:
    """The manifest of ``model`` with ``tracks`` added (each having taken ``enroll_s`` seconds,
    enrolled as ``how`` says, e.g. ``{"shots": 5}``) and ``remove`` dropped; ``timings`` (the
    last enrollment's and recompilation's seconds) join the base model's."""
    manifest = model.manifest
    keep = set(model.track_ids) - set(remove)
    track_ids = [i for i in model.track_ids if i in keep] + [t.id for t in tracks]
    history = manifest.get("enrolled", []) + [{"id": t.id, "title": t.title, "sha256": t.sha256, **how,
                                               "source": str(Path(t.source).absolute()),  # found from any folder
                                               "enroll_s": round(float(s), 4)}
                                              for t, s in zip(tracks, enroll_s)]
    titles = {**{i: t for i, t in manifest["titles"].items() if i in keep}, **{t.id: t.title for t in tracks}}
    audio = {**{i: s for i, s in manifest["sha256"].items() if i in keep}, **{t.id: t.sha256 for t in tracks if t.sha256}}
    fingerprint = canonical_json({"base": manifest["library_fingerprint"], "track_ids": track_ids, "sha256": audio})
    library = manifest["library"] if manifest["library"].endswith("+enrolled") else f"{manifest['library']}+enrolled"
    return {**manifest, "library": library, "library_fingerprint": hashlib.sha256(fingerprint.encode()).hexdigest()[:16],
            "track_ids": track_ids, "titles": titles, "sha256": audio, "enrolled": history,
            "removed": manifest.get("removed", []) + sorted(set(remove)),
            "timings": {**manifest["timings"], **timings}}


@contextmanager
def enrolled_folder(model: Recognizer, dest: Path) -> Iterator[Path]:
    """The temporary folder of an enrolled model, renamed to ``dest`` when the block ends
    (:func:`~ppazam_core.store.atomic_folder`), holding a copy of ``model``'s ``embedding/``
    (absent when a HEAR embedder brings its own weights)."""
    with atomic_folder(Path(dest)) as tmp:
        if (model.folder / "embedding").is_dir():
            shutil.copytree(model.folder / "embedding", tmp / "embedding", ignore=shutil.ignore_patterns(DONE_MARKER))
        yield tmp


@dataclass(frozen=True)
class EnrolledReferences:
    """A kNN model's references after an enrollment: ``vectors (n, d)`` float32, their ``tracks
    (n,)`` and ``offsets (n,)`` seconds; each added song's seconds ``enroll_s (T_new,)``, all of
    them ``embed_s``."""

    vectors: np.ndarray
    tracks: np.ndarray
    offsets: np.ndarray
    enroll_s: np.ndarray
    embed_s: float


def enroll_references(model: Recognizer, tracks: Library, remove: Sequence[str], vectors: np.ndarray,
                      reference_tracks: np.ndarray, offsets: np.ndarray, segment_s: float,
                      hop_s: float) -> EnrolledReferences:
    """The references of a kNN model (``vectors``, ``reference_tracks``, ``offsets``) with
    ``remove`` dropped and ``tracks`` added as a library's tracks are built: every song whole,
    one clean ``segment_s`` segment every ``hop_s`` (no shots: an enrolled song gets what a
    trained one has).

    Raises:
        ConfigError: the request is refused (:func:`kept_tracks`).
        AudioError: a song cannot be decoded or holds less than ``segment_s`` of audio above
            the silence level.
    """
    keep = kept_tracks(model, tracks, remove)
    started = time.perf_counter()
    if len(tracks):
        *added, enroll_s = reference_embeddings(model.embedder, tracks, segment_s, hop_s, min_audible_s=segment_s)
    else:  # only removals
        added, enroll_s = [np.zeros((0, vectors.shape[1]), np.float32), np.zeros(0, np.int64), np.zeros(0)], np.zeros(0)
    embed_s = time.perf_counter() - started
    merged = merged_references(vectors, reference_tracks, offsets, keep, tuple(added))
    return EnrolledReferences(*merged, enroll_s, embed_s)
