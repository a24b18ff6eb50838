"""``embedding-head-packed``: the ``embedding-head`` design with a packed RLWE answer. The client
embeds its query in the clear and encrypts it under CKKS; the server, holding the head's weights
in the clear, scores it against thousands of tracks per ciphertext (:mod:`ppazam_core.fhe.packed`):
the answer is ``ceil(N / n)`` ciphertexts for a ring of degree ``n`` (4,096 tracks each by
default), not one ciphertext per track.

The head is the ``embedding-head``'s float model: the same client-side embedder, the same
training segments, the same Concrete ML ``LogisticRegression`` (``[head]`` settings) fitted the
same way, whose scikit-learn model's ``coef_`` and ``intercept_`` the server holds. The
packed head, its modes (``fp32``: the embedding-head's ``fp32`` scores) and its call plan are
those of :mod:`ppazam_core.families.packed_head`, shared with ``embedding-knn-packed``.

Artifacts: ``embedding/``, ``head.npz`` (``W``, ``b``), ``circuits/fhe/packed/`` (see
:mod:`ppazam_core.fhe.packed`) and ``model.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from concrete.ml.sklearn import LogisticRegression

from ppazam_core.config import ExperimentConfig
from ppazam_core.errors import ArtifactError
from ppazam_core.families.embedding_head import TABLE as HEAD_TABLE
from ppazam_core.families.packed_head import (PACKED, TABLE, WEIGHTS_FILE, PackedConfig,  # noqa: F401 (re-exported)
                                              PackedFamilyModel, PackedHead, packed_family, write_packed_head)
from ppazam_core.families.store import write_family
from ppazam_core.models.hear import embedding_settings, embedding_training_dataset, trained_embedder
from ppazam_core.audio.library import Library
from ppazam_core.models.embedding_memo import embed
from ppazam_core.recognition import Mode, Scores, log_softmax

FAMILY = "embedding-head-packed"


def settings(config: ExperimentConfig) -> dict:
    """The parts of ``config`` the packed head depends on."""
    return {"data": config.data.train_spec(), **embedding_settings(config), "head": config.table(HEAD_TABLE.name),
            "packed": config.table(TABLE.name), "seed": config.fhe.seed}


def fit_head(X: np.ndarray, y: np.ndarray, n_classes: int, config: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """The embedding-head's float model (the same Concrete ML ``LogisticRegression`` fit) as
    weights ``(n_classes, d)`` and biases ``(n_classes,)``: decision values ``W x + b``."""
    head = config.table(HEAD_TABLE.name)
    model = LogisticRegression(n_bits=head.n_bits, C=head.C, max_iter=head.max_iter)
    model.fit(np.asarray(X, dtype=np.float32), y)
    coef = np.asarray(model.sklearn_model.coef_, dtype=np.float64)
    intercept = np.asarray(model.sklearn_model.intercept_, dtype=np.float64).reshape(-1)
    if coef.shape[0] == 1:  # two tracks: one decision value, the second class's logit
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    if coef.shape[0] != n_classes:
        raise ArtifactError(f"the head was fitted on {coef.shape[0]} classes; the library has {n_classes} tracks")
    return coef, intercept


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Fit the head over the training segments' embeddings into ``folder`` and build its packed
    circuit (keys, query and answer sizes and the CKKS error measured under a throwaway key)."""
    started = time.perf_counter()
    embedding, embedder = trained_embedder(library, config, cache_dir, workers, refresh)
    dataset = embedding_training_dataset(library, config, cache_dir, workers)
    embedded = embed(embedder, dataset.X)
    timings = {"embedding_s": time.perf_counter() - started}
    with write_family(folder, FAMILY, library, config, timings, embedding=embedding) as tmp:
        started = time.perf_counter()
        W, b = fit_head(embedded, dataset.y, len(library), config)
        timings["head_s"] = time.perf_counter() - started
        started = time.perf_counter()
        write_packed_head(tmp, W, b, config, embedded)
        timings["packed_s"] = time.perf_counter() - started


class EmbeddingHeadPacked(PackedFamilyModel):
    """A trained ``embedding-head-packed`` model: a track's score is its log-probability."""

    family = FAMILY

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        log_probs = log_softmax(self.head.logits(embed(self.embedder, patches), mode))
        return Scores(log_probs, np.exp(log_probs.max(axis=1)))


SPEC = packed_family(FAMILY, settings, train, EmbeddingHeadPacked, TABLE)
