"""``embedding-knn``: a clear-text reference (no privacy). Clean segments of every track, one
every ``hop_s``, are embedded with the shared contrastive model; a query segment's embedding is
searched exactly (faiss inner product on unit vectors) among them. A track scores the best
cosine similarity of its segments among the ``neighbours`` nearest (-2 when none is near); the
confidence is the best similarity.
"""

from __future__ import annotations

import time
from pathlib import Path

import faiss
import numpy as np

from ppazam_core.artifacts import read_arrays
from dataclasses import dataclass

from ppazam_core.config import ExperimentConfig, require
from ppazam_core.families.registry import FamilyTable
from ppazam_core.encoder.references import reference_embeddings
from ppazam_core.families.store import FamilyModel, single_model_family, write_family
from ppazam_core.library import Library
from ppazam_core.hear import client_embedder, embedding_front_end, embedding_settings, trained_embedder
from ppazam_core.recognition import Mode, Scores

FAMILY = "embedding-knn"
REFERENCES_FILE = "references.npz"
NO_MATCH = -2.0


@dataclass(frozen=True)
class KnnConfig:
    """``embedding-knn``: exact nearest neighbours (faiss) among the embeddings of clean
    reference segments taken every ``hop_s`` of every track (clear text)."""

    hop_s: float = 0.5
    neighbours: int = 10

    def __post_init__(self) -> None:
        require(self.hop_s > 0 and self.neighbours >= 1, "knn", (self.hop_s, self.neighbours),
               "hop_s > 0, neighbours >= 1")


TABLE = FamilyTable("knn", KnnConfig)



def settings(config: ExperimentConfig) -> dict:
    return {"data": config.data.train_spec(), **embedding_settings(config),
            "knn": config.table(TABLE.name)}


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Embed the reference segments of every track into ``folder``."""
    started = time.perf_counter()
    embedding, embedder = trained_embedder(library, config, cache_dir, workers, refresh)
    timings = {"embedding_s": time.perf_counter() - started}
    with write_family(folder, FAMILY, library, config, timings, embedding=embedding) as tmp:
        started = time.perf_counter()
        vectors, tracks, offsets = reference_embeddings(embedder, library, config.data.segment_s,
                                                        config.table(TABLE.name).hop_s)
        np.savez(tmp / REFERENCES_FILE, vectors=vectors, tracks=tracks, offsets_s=offsets)
        timings["references_s"] = time.perf_counter() - started


class EmbeddingKnn(FamilyModel):
    """A built ``embedding-knn`` index."""

    family = FAMILY
    modes = (Mode.FP32,)

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.embedder = client_embedder(self.config, self.folder / "embedding")
        self.features = self.embedder.features
        vectors, self.reference_tracks = read_arrays(self.folder / REFERENCES_FILE, "vectors", "tracks")
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        self.neighbours = min(self.config.table(TABLE.name).neighbours, self.index.ntotal)

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        similarity, nearest = self.index.search(self.embedder.embed_patches(patches), self.neighbours)
        track_scores = np.full((len(nearest), len(self.track_ids)), NO_MATCH)
        rows = np.arange(len(nearest))
        for column in range(nearest.shape[1]):  # nearest first: keep each track's best similarity
            tracks = self.reference_tracks[nearest[:, column]]
            track_scores[rows, tracks] = np.maximum(track_scores[rows, tracks], similarity[:, column])
        return Scores(track_scores, track_scores.max(axis=1))


SPEC = single_model_family(FAMILY, settings, train, EmbeddingKnn, table=TABLE, front_end=embedding_front_end)
