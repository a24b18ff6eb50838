"""What every model family offers the evaluation, and the evaluation itself.

A :class:`Recognizer` (the two-stage :class:`~ppazam_core.identifier.Identifier`, or a
family of :mod:`ppazam_core.families`) takes raw patches of its own front-end and returns, per
patch, a score for every library track and a confidence in its best guess (what open-set
rejection thresholds). :func:`predict` runs one over an evaluation dataset built with that
front-end, so every family sees the same clips (same offsets, same augmentations).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ppazam_core.dataset import Dataset
from ppazam_core.deployment import EncryptedChannel
from ppazam_core.errors import ArtifactError, ConfigError
from ppazam_core.features import FrontEndConfig
from ppazam_core.parallel import progress_bar

SCORE_FLOOR = -1e3  # a segment's score of tracks it did not search (two-stage: other clusters' tracks)


class Mode(str, enum.Enum):
    """How the models are evaluated: in the clear (``fp32``), quantized in the clear (``quant``:
    the QAT twin, or a linear head's quantized model), the compiled circuit executed in the clear
    by Concrete ML (``fhe-disable``: its integers and rounding, no encryption), FHE simulation,
    or truly encrypted. Clear-text reference families run in ``fp32`` only."""

    FP32 = "fp32"
    QUANT = "quant"
    FHE_DISABLE = "fhe-disable"
    FHE_SIM = "fhe-sim"
    FHE = "fhe"

    @property
    def needs_circuits(self) -> bool:
        return self in (Mode.FHE_DISABLE, Mode.FHE_SIM, Mode.FHE)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Scores:
    """Per patch: track scores ``(n, T)`` (higher is better), the confidence of the best track
    ``(n,)``, and for two-stage models the first stage's cluster log-probabilities ``(n, K)``."""

    track_scores: np.ndarray
    confidence: np.ndarray
    cluster_log_probs: np.ndarray | None = None


class Recognizer(Protocol):
    """A trained model of one family, loaded from its artifact folder."""

    family: str
    folder: Path
    manifest: dict
    track_ids: tuple[str, ...]
    features: FrontEndConfig  # the front-end of the patches ``scores`` takes
    modes: tuple[Mode, ...]  # the modes this family can run in
    assignment: np.ndarray | None  # track -> cluster, for two-stage models
    cluster_top_k: int | None
    channel: EncryptedChannel | None  # the client/server exchange of the ``fhe`` mode

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores: ...

    def circuit_names(self) -> list[str]: ...


@dataclass(frozen=True)
class Predictions:
    """Rankings of evaluation queries: ``rows`` of the dataset, their true track (-1 for tracks
    outside the library), top-3 track indices, the confidence of the top-1, the true and
    predicted first-stage cluster (two-stage models only), and the seconds each query took (in
    ``fhe`` mode each query runs on its own; otherwise the batch time is shared out)."""

    rows: np.ndarray
    truth: np.ndarray
    ranking: np.ndarray
    confidence: np.ndarray
    cluster_truth: np.ndarray | None
    cluster_predicted: np.ndarray | None
    seconds: np.ndarray

    def hits(self, k: int) -> np.ndarray:
        """Whether the true track is among the top ``k`` (k <= 3), per query."""
        return (self.ranking[:, :k] == self.truth[:, None]).any(axis=1)


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of one mode on one evaluation dataset (one query per row). ``agreement`` is
    the fraction of queries whose top-1 equals that of mode ``agreement_with``."""

    mode: str
    level: str
    n: int
    top1: float
    top3: float
    cluster_accuracy: float | None = None
    cluster_top_k: int | None = None
    agreement: float | None = None
    agreement_with: str | None = None


def predict(recognizer: Recognizer, dataset: Dataset, mode: Mode | str, limit: int | None = None,
            in_library: bool = True) -> Predictions:
    """Rank every query of ``dataset`` (or ``limit`` of them, spread evenly) in ``mode``.
    A query of several segments is scored segment by segment and ranked by
    :func:`combine_segments`; in ``fhe`` mode each segment is one encrypted call (per classifier)
    and a query's seconds are its segments' sum. ``in_library=False`` accepts queries of tracks
    outside the library (distractors); their truth is -1."""
    mode = Mode(mode)
    if mode not in recognizer.modes:
        raise ConfigError.bad_value(f"mode of family {recognizer.family}", mode.value, [m.value for m in recognizer.modes])
    if in_library and tuple(dataset.track_ids) != recognizer.track_ids:
        raise ArtifactError("the evaluation dataset was built from another library than the model")
    if tuple(dataset.X.shape[1:]) != recognizer.features.shape:
        raise ArtifactError(f"the evaluation patches are {tuple(dataset.X.shape[1:])}; family {recognizer.family} "
                            f"reads {recognizer.features.shape}")
    segments = dataset.segments
    rows = spread_rows(dataset.queries, limit)
    truth = dataset.y[rows * segments] if in_library else np.full(rows.size, -1)
    X = np.asarray(dataset.X[(rows[:, None] * segments + np.arange(segments)).ravel()])
    per_batch = segments if mode is Mode.FHE else len(X)
    parts, seconds = [], []
    with progress_bar() as progress:
        bar = progress.add_task(f"{recognizer.family} {mode} queries", total=len(rows))
        for start in range(0, len(X), max(per_batch, 1)):
            started = time.perf_counter()
            parts.append(recognizer.scores(X[start : start + per_batch], mode))
            queries = max(len(X[start : start + per_batch]) // segments, 1)
            seconds += [(time.perf_counter() - started) / queries] * queries
            progress.advance(bar, queries)
    track_scores = combine_segments(np.concatenate([p.track_scores for p in parts]), segments)
    confidence = np.concatenate([p.confidence for p in parts]).reshape(-1, segments).mean(axis=1)
    clustered = recognizer.assignment is not None and parts[0].cluster_log_probs is not None
    cluster_scores = combine_segments(np.concatenate([p.cluster_log_probs for p in parts]), segments) if clustered else None
    return Predictions(
        rows, truth, np.argsort(-track_scores, axis=1, kind="stable")[:, :3], confidence,
        recognizer.assignment[truth] if clustered and in_library else None,
        cluster_scores.argmax(axis=1) if clustered else None,
        np.asarray(seconds))


def combine_segments(scores: np.ndarray, segments: int) -> np.ndarray:
    """Per-segment scores ``(n * segments, T)`` (higher is better, consecutive segments of a
    query together) to per-query scores ``(n, T)``: their mean, each score floored at
    :data:`SCORE_FLOOR` so that a track outside a segment's searched clusters (-inf) is heavily
    penalised but can still win on the other segments. For log-probabilities this is the
    mean log-probability rule; for vote counts, the summed votes (divided by ``segments``)."""
    floored = np.maximum(np.asarray(scores, dtype=np.float64), SCORE_FLOOR)
    return floored.reshape(-1, segments, floored.shape[1]).mean(axis=1)


def evaluate(recognizer: Recognizer, dataset: Dataset, mode: Mode | str, limit: int | None = None,
             agreement_with: Mode | str | None = None, condition: str | None = None) -> Evaluation:
    """Top-1, top-3 and (two-stage models) first-stage accuracy of the dataset's queries: all
    of them, or ``limit`` spread evenly over the dataset (for the costly ``fhe`` mode).
    ``condition`` names the queries' condition (default: their augmentation level)."""
    result = predict(recognizer, dataset, mode, limit)
    agreement = None
    if agreement_with is not None:
        reference = predict(recognizer, dataset, agreement_with, limit)
        agreement = float((reference.ranking[:, 0] == result.ranking[:, 0]).mean())
    clustered = result.cluster_predicted is not None
    return Evaluation(
        mode=str(Mode(mode)),
        level=condition or dataset.info["spec"]["policy"]["name"],
        n=len(result.truth),
        top1=float(result.hits(1).mean()),
        top3=float(result.hits(3).mean()),
        cluster_accuracy=float((result.cluster_predicted == result.cluster_truth).mean()) if clustered else None,
        cluster_top_k=recognizer.cluster_top_k,
        agreement=agreement,
        agreement_with=None if agreement_with is None else str(Mode(agreement_with)),
    )


def spread_rows(n: int, limit: int | None) -> np.ndarray:
    """All ``n`` row indices, or ``limit`` of them evenly spaced (so they span the tracks)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 1:
        raise ConfigError.bad_value("queries", limit, "an integer >= 1")
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
