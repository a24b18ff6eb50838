"""``embedding-head-top1``: the ``embedding-head`` design with an oblivious answer. The client
embeds its clip in the clear; the server computes every track's encrypted score *and* their
encrypted argmax (:mod:`ppazam_core.fhe.top1_head`), and answers with one ciphertext from which the
client decodes the top-1 track and a coarse score -- nothing about the other tracks. The answer
stays ~16 KB whatever the library size; the argmax costs ``4 N - 1`` PBS.

Same training as ``embedding-head`` (the shared contrastive embedding, the same fitted
``LogisticRegression``); the compiled circuit is the top-1 head. Modes: ``fp32`` runs the float
model (all scores: the clear design), ``quant`` and ``fhe-disable`` the top-1 circuit's integer
function in the clear (exact rounding, no bootstrapping error), ``fhe-sim`` its simulation,
``fhe`` the client/server exchange. Only the top-1 is known outside ``fp32``: the other ranks
are unscored, so top-3 equals top-1. The confidence of a query is the decoded coarse score
(decision-value units), used for open-set rejection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ppazam_core.config import ExperimentConfig, FheConfig
from ppazam_core.families import embedding_head
from ppazam_core.families.linear_head import HEAD, LinearHead
from ppazam_core.families.store import single_model_family
from ppazam_core.models.hear import embedding_front_end
from ppazam_core.audio.library import Library
from ppazam_core.results.privacy import CallPlan
from ppazam_core.recognition import Mode, Scores
from ppazam_core.fhe.top1_head import Top1Clear, Top1Simulated, compile_top1_head
from ppazam_core.models.embedding_memo import embed

FAMILY = "embedding-head-top1"
INPUT_BITS, WEIGHT_BITS = 5, 4  # the circuit's own quantization (see ppazam_core.fhe.top1_head)


def settings(config: ExperimentConfig) -> dict:
    """The parts of ``config`` the trained head depends on (those of ``embedding-head``, and the
    rounding method the top-1 circuit is compiled with)."""
    return {**embedding_head.settings(config), "rounding_method": config.fhe.rounding_method}


def _compile(model, calibration: np.ndarray, n_classes: int, fhe: FheConfig, folder: Path):
    return compile_top1_head(model, calibration, fhe, folder, input_bits=INPUT_BITS, weight_bits=WEIGHT_BITS)


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Fit the head as ``embedding-head`` does and compile its top-1 circuit into ``folder``."""
    embedding_head.train(library, config, folder, cache_dir, workers, refresh, family=FAMILY, compile_head=_compile)


class Top1Head(LinearHead):
    """The fitted head of a top-1 folder: float decision values in ``fp32``, else the top-1
    circuit's one-hot logits (see :class:`~ppazam_core.fhe.top1_head.Top1Simulated`)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._runners: dict[Mode, Top1Clear | Top1Simulated] = {}

    def logits(self, X: np.ndarray, mode: Mode | str) -> np.ndarray:
        mode = Mode(mode)
        if mode is Mode.FP32 or mode is Mode.FHE:
            return super().logits(X, mode)
        if mode not in self._runners:
            self._runners[mode] = Top1Simulated(self.circuits / HEAD) if mode is Mode.FHE_SIM else \
                Top1Clear(self.circuits / HEAD)
        return np.asarray(self._runners[mode].logits(np.asarray(X, dtype=np.float32)), dtype=np.float64)


class EmbeddingHeadTop1(embedding_head.EmbeddingHead):
    """A trained ``embedding-head-top1`` model."""

    family = FAMILY
    head_class = Top1Head

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        if Mode(mode) is Mode.FP32:
            return super().scores(patches, mode)
        logits = self.head.logits(embed(self.embedder, patches), mode)
        return Scores(logits, logits.max(axis=1))

    def call_plan(self) -> CallPlan:
        """One call; one track index (and its coarse score) back to the client."""
        return CallPlan({HEAD: 1.0}, 0.0, 1.0)


SPEC = single_model_family(FAMILY, settings, train, EmbeddingHeadTop1, table=embedding_head.TABLE,
                           front_end=embedding_front_end, bits=lambda config: WEIGHT_BITS)
