"""``embedding-knn``: a clear-text reference (no privacy). Clean segments of every track, one
every ``hop_s``, are embedded with the client-side embedder; a query is cut into segments of
the same length (every half segment), each searched exactly (faiss inner product on unit
vectors) among them. A track scores the best cosine similarity of its references among the
``neighbours`` nearest (-2 when none is near), averaged over the query's segments; the
confidence is the best similarity.

With the fingerprint encoder a segment is one 1-s window (:func:`~ppazam_core.models.hear.window_segment_s`)
and references are taken every 0.25 s: the Neural Audio Fingerprint's segment search (Chang et
al. 2021), a query's windows scored one by one, without their offsets' alignment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from ppazam_core.artifacts import read_arrays
from ppazam_core.config import MAX_SEGMENT_S, MIN_SEGMENT_S, ExperimentConfig, require
from ppazam_core.models.encoder.references import MIN_HOP_S, reference_embeddings
from ppazam_core.families.enrollment import enroll_references, enrolled_folder, enrolled_manifest
from ppazam_core.families.registry import FamilyTable
from ppazam_core.families.store import FamilyModel, single_model_family, write_family
from ppazam_core.queries.features import FrontEndConfig
from ppazam_core.models.hear import (at_segment, client_embedder, embedding_front_end, embedding_settings, trained_embedder,
                              window_segment_s)
from ppazam_core.audio.library import Library
from ppazam_core.manifest import write_manifest
from ppazam_core.models.embedding_memo import embed
from ppazam_core.recognition import Mode, Scores

FAMILY = "embedding-knn"
REFERENCES_FILE = "references.npz"
NO_MATCH = -2.0


@dataclass(frozen=True)
class KnnConfig:
    """``embedding-knn``: exact nearest neighbours (faiss) among the embeddings of clean
    reference segments of ``segment_s`` seconds (unset: :func:`~ppazam_core.models.hear.window_segment_s`)
    taken every ``hop_s`` of every track (clear text)."""

    hop_s: float = 0.25
    neighbours: int = 10
    segment_s: float | None = None

    def __post_init__(self) -> None:
        require(MIN_HOP_S <= self.hop_s <= 60, "knn.hop_s", self.hop_s, f"seconds from {MIN_HOP_S:g} to 60")
        require(1 <= self.neighbours <= 10_000, "knn.neighbours", self.neighbours, "an integer from 1 to 10,000")
        require(self.segment_s is None or MIN_SEGMENT_S <= self.segment_s <= MAX_SEGMENT_S, "knn.segment_s",
                self.segment_s, f"seconds from {MIN_SEGMENT_S:g} to {MAX_SEGMENT_S:g} (or unset: the embedder's own)")


TABLE = FamilyTable("knn", KnnConfig)


def segment_s(config: ExperimentConfig) -> float:
    """The seconds of a query segment and of a reference."""
    return window_segment_s(config, config.table(TABLE.name).segment_s)


def front_end(config: ExperimentConfig) -> FrontEndConfig:
    return embedding_front_end(at_segment(config, segment_s(config)))



def settings(config: ExperimentConfig) -> dict:
    return {"data": config.data.train_spec(), **embedding_settings(config),
            "knn": config.table(TABLE.name)}


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Embed the reference segments of every track into ``folder``."""
    started = time.perf_counter()
    seconds = segment_s(config)
    embedding, embedder = trained_embedder(library, at_segment(config, seconds), cache_dir, workers, refresh)
    timings = {"embedding_s": time.perf_counter() - started}
    with write_family(folder, FAMILY, library, config, timings, embedding=embedding) as tmp:
        started = time.perf_counter()
        vectors, tracks, offsets, _ = reference_embeddings(embedder, library, seconds, config.table(TABLE.name).hop_s,
                                                            workers=workers or 1)
        np.savez(tmp / REFERENCES_FILE, vectors=vectors, tracks=tracks, offsets_s=offsets)
        timings["references_s"] = time.perf_counter() - started


def enroll(model: "EmbeddingKnn", tracks: Library, dest: Path, remove: Sequence[str] = (),
           shots: int | None = None) -> "EmbeddingKnn":
    """Write into ``dest`` (a new folder, or an enrolled model's to replace, atomically) the index
    of ``model`` with every song of ``tracks`` added as a library's tracks are built (every
    ``hop_s``, the whole song: ``shots`` does not apply) and the track ids ``remove`` dropped.
    Returns the new index. Raises as
    :func:`~ppazam_core.families.enrollment.enroll_references`."""
    knn = model.config.table(TABLE.name)
    enrolled = enroll_references(model, tracks, remove, model.vectors, model.reference_tracks, model.offsets,
                                 segment_s(model.config), knn.hop_s)
    with enrolled_folder(model, dest) as tmp:
        np.savez(tmp / REFERENCES_FILE, vectors=enrolled.vectors, tracks=enrolled.tracks, offsets_s=enrolled.offsets)
        write_manifest(tmp, enrolled_manifest(model, tracks, remove, enrolled.enroll_s, {"hop_s": knn.hop_s},
                                              {"last_enroll_s": round(enrolled.embed_s, 3), "last_compile_s": 0.0}))
    return EmbeddingKnn(Path(dest))


class EmbeddingKnn(FamilyModel):
    """A built ``embedding-knn`` index."""

    family = FAMILY
    modes = (Mode.FP32,)

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.embedder = client_embedder(at_segment(self.config, segment_s(self.config)), self.folder / "embedding")
        self.features = self.embedder.features
        self.vectors, self.reference_tracks, self.offsets = read_arrays(self.folder / REFERENCES_FILE, "vectors",
                                                                        "tracks", "offsets_s")
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)
        self.neighbours = min(self.config.table(TABLE.name).neighbours, self.index.ntotal)

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        similarity, nearest = self.index.search(embed(self.embedder, patches), self.neighbours)
        track_scores = np.full((len(nearest), len(self.track_ids)), NO_MATCH)
        rows = np.arange(len(nearest))
        for column in range(nearest.shape[1]):  # nearest first: keep each track's best similarity
            tracks = self.reference_tracks[nearest[:, column]]
            track_scores[rows, tracks] = np.maximum(track_scores[rows, tracks], similarity[:, column])
        return Scores(track_scores, track_scores.max(axis=1))


SPEC = single_model_family(FAMILY, settings, train, EmbeddingKnn, table=TABLE, front_end=front_end, segment=segment_s,
                           enroll=enroll, enroll_shots=False)
