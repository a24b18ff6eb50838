"""``embedding-head``: the client embeds its query in the clear on its own device (the audio
never leaves it); the server evaluates an encrypted linear head over all tracks.

Artifacts: ``embedding/`` (the shared contrastive model, see
:func:`~ppazam_core.models.pipeline.train_embedding`; absent when a HEAR embedder brings its own
weights, :mod:`ppazam_core.models.hear`), the head of :mod:`.linear_head`, and
``model.json`` (:mod:`ppazam_core.manifest`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from dataclasses import dataclass

from ppazam_core.config import ExperimentConfig, require
from ppazam_core.families.linear_head import CompileHead, LinearHeadModel, fit_linear_head
from ppazam_core.fhe.concrete import compile_linear
from ppazam_core.families.registry import FamilyTable
from ppazam_core.families.store import single_model_family, write_family
from ppazam_core.audio.library import Library
from ppazam_core.models.embedding_memo import embed
from ppazam_core.models.hear import (client_embedder, embedding_front_end, embedding_settings, embedding_training_dataset,
                               trained_embedder)
from ppazam_core.recognition import Mode, Scores, log_softmax

FAMILY = "embedding-head"


@dataclass(frozen=True)
class HeadConfig:
    """``embedding-head``: a Concrete ML ``LogisticRegression`` over the client's clear-text
    embedding of each segment, evaluated encrypted on the server."""

    n_bits: int = 8
    C: float = 10.0
    max_iter: int = 500
    calibration_rows: int = 2048

    def __post_init__(self) -> None:
        require(isinstance(self.n_bits, int) and 2 <= self.n_bits <= 16, "head.n_bits", self.n_bits, "2 to 16")
        require(self.C > 0, "head.C", self.C, "a number > 0")
        require(self.max_iter >= 1 and self.calibration_rows >= 1, "head.max_iter/calibration_rows",
               (self.max_iter, self.calibration_rows), "integers >= 1")

TABLE = FamilyTable("head", HeadConfig)



def settings(config: ExperimentConfig) -> dict:
    """The parts of ``config`` the trained head depends on."""
    return {"data": config.data.train_spec(), **embedding_settings(config),
            "head": config.table(TABLE.name), "p_error": config.fhe.p_error, "seed": config.fhe.seed}


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False, family: str = FAMILY, compile_head: CompileHead = compile_linear) -> None:
    """Fit the head over the training segments' embeddings into ``folder`` and compile it with
    ``compile_head`` (see :func:`~ppazam_core.families.linear_head.fit_linear_head`)."""
    started = time.perf_counter()
    embedding, embedder = trained_embedder(library, config, cache_dir, workers, refresh)
    dataset = embedding_training_dataset(library, config, cache_dir, workers)
    embedded = embed(embedder, dataset.X)
    timings = {"embedding_s": time.perf_counter() - started}
    with write_family(folder, family, library, config, timings, embedding=embedding) as tmp:
        started = time.perf_counter()
        head = config.table(TABLE.name)
        fit_linear_head(embedded, dataset.y, len(library), head.n_bits, head.C, head.max_iter,
                        head.calibration_rows, config.fhe, tmp, compile_head)
        timings["head_s"] = time.perf_counter() - started


class EmbeddingHead(LinearHeadModel):
    """A trained ``embedding-head`` model."""

    family = FAMILY

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.embedder = client_embedder(self.config, self.folder / "embedding")
        self.features = self.embedder.features

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        log_probs = log_softmax(self.head.logits(embed(self.embedder, patches), mode))
        return Scores(log_probs, np.exp(log_probs.max(axis=1)))


SPEC = single_model_family(FAMILY, settings, train, EmbeddingHead, table=TABLE, front_end=embedding_front_end,
                           bits=lambda config: config.table(TABLE.name).n_bits)
