"""What every model family offers the evaluation, and the evaluation itself.

A :class:`Recognizer` (the two-stage :class:`~ppazam_core.models.identifier.Identifier`, or a
family of :mod:`ppazam_core.families`) takes raw patches of its own front-end and returns, per
patch, a score for every library track and a confidence in its best guess (what open-set
rejection thresholds). :func:`predict` runs one over an evaluation dataset built with that
front-end, so every family sees the same clips (same offsets, same augmentations).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ppazam_core.audio.decode import SILENCE_DBFS, is_silent
from ppazam_core.queries.conditions import MAX_QUERY_S, query_segments  # re-exported: identify's bound
from ppazam_core.queries.dataset import Dataset
from ppazam_core.fhe.deployment import EncryptedChannel
from ppazam_core.errors import ArtifactError, AudioError, ConfigError
from ppazam_core.queries.features import FrontEnd, FrontEndConfig
from ppazam_core.modes import Mode  # re-exported: plug-ins import it from here
from ppazam_core.parallel import progress_bar

SCORE_FLOOR = -1e3  # a segment's score of tracks it did not search (two-stage: other clusters' tracks)
MIN_QUERY_S = 1.0  # the shortest query the bench measures


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

    def combine(self, segment_scores: np.ndarray, top: int = 3) -> list[Match]:
        """The ``top`` tracks of one query from its segments' track scores ``(segments, T)``."""
        ...

    def stage_calls(self, patch: np.ndarray, mode: Mode | str) -> dict[str, tuple[Callable[[], Any], str]]:
        """Parts of a query timed on their own (stage name -> call, the classifier it runs)."""
        ...

    def rejects(self, confidence: np.ndarray) -> np.ndarray | None:
        """The family's own "unknown" rule per query confidence, or ``None`` without one."""
        ...


@dataclass(frozen=True)
class Predictions:
    """Rankings of evaluation queries: ``rows`` of the dataset, their true track (-1 for tracks
    outside the library), top-3 track indices (-1 for a rank no segment scored: a two-stage
    model's unsearched clusters, a top-1 head's ranks past the first), the confidence of the top-1, the true and
    predicted first-stage cluster (two-stage models only), and the seconds each query took (in
    ``fhe`` mode each query runs on its own; otherwise the batch time is shared out)."""

    rows: np.ndarray
    truth: np.ndarray
    ranking: np.ndarray
    confidence: np.ndarray
    cluster_truth: np.ndarray | None
    cluster_predicted: np.ndarray | None
    seconds: np.ndarray

    def take(self, rows: np.ndarray) -> "Predictions":
        """These predictions restricted to the queries ``rows`` (each must be among ``self.rows``), in that order.

        Raises:
            ConfigError: a query of ``rows`` was not predicted here.
        """
        position = {int(r): i for i, r in enumerate(self.rows)}
        missing = [int(r) for r in rows if int(r) not in position]
        if missing:
            raise ConfigError(f"queries {missing[:5]} were not predicted in this run")
        at = np.asarray([position[int(r)] for r in rows], dtype=np.int64)
        return Predictions(self.rows[at], self.truth[at], self.ranking[at], self.confidence[at],
                           None if self.cluster_truth is None else self.cluster_truth[at],
                           None if self.cluster_predicted is None else self.cluster_predicted[at], self.seconds[at])

    @classmethod
    def concatenate(cls, parts: Sequence["Predictions"]) -> "Predictions":
        """The predictions of ``parts`` (each of other queries) one after another.

        Raises:
            ValueError: no parts, or parts of which some have cluster rows and some not.
        """
        if not parts:
            raise ValueError("no predictions to concatenate")

        def joined(name: str) -> np.ndarray | None:
            columns = [getattr(p, name) for p in parts]
            if all(c is None for c in columns):
                return None
            if any(c is None for c in columns):
                raise ValueError(f"some predictions have {name} and some not")
            return np.concatenate(columns)

        return cls(*(joined(f.name) for f in fields(cls)))

    def hits(self, k: int) -> np.ndarray:
        """Whether the true track is among the top ``k`` (k <= 3), per query (never for a
        distractor, whose truth is -1)."""
        return (self.ranking[:, :k] == self.truth[:, None]).any(axis=1) & (self.truth >= 0)


def predict(recognizer: Recognizer, dataset: Dataset, mode: Mode | str, rows: np.ndarray | None = None,
            in_library: bool = True, budget_s: float | None = None) -> Predictions:
    """Rank every query of ``dataset`` (or its queries ``rows``, in that order) in ``mode``.
    A query of several segments is scored segment by segment and ranked by
    :func:`combine_segments`; in ``fhe`` mode each segment is one encrypted call (per classifier)
    and a query's seconds are its segments' sum. ``budget_s`` (``fhe`` mode) stops before the
    query that would take the elapsed time past it, by the mean so far; the first query always
    runs, so ``rows`` is best a :func:`sample_queries` order. ``in_library=False`` accepts
    queries of tracks outside the library (distractors); their truth is -1.

    Raises:
        ConfigError: the family cannot run in ``mode``, or ``rows`` are not query indices.
        ArtifactError: the dataset does not fit the model (other library or front-end).
    """
    mode = Mode(mode)
    if mode not in recognizer.modes:
        raise ConfigError.bad_value(f"mode of family {recognizer.family}", mode.value, [m.value for m in recognizer.modes])
    if in_library and tuple(dataset.track_ids) != recognizer.track_ids:
        raise ArtifactError("the evaluation dataset was built from another library than the model")
    if tuple(dataset.X.shape[1:]) != recognizer.features.shape:
        raise ArtifactError(f"the evaluation patches are {tuple(dataset.X.shape[1:])}; family {recognizer.family} "
                            f"reads {recognizer.features.shape}")
    segments = dataset.segments
    rows = np.arange(dataset.queries) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or rows.size == 0 or rows.min() < 0 or rows.max() >= dataset.queries:
        raise ConfigError.bad_value("query rows", rows.tolist()[:5], f"query indices 0 to {dataset.queries - 1}")
    X = np.asarray(dataset.X[(rows[:, None] * segments + np.arange(segments)).ravel()])
    per_batch = segments if mode is Mode.FHE else len(X)
    parts, seconds = [], []
    with progress_bar() as progress:
        bar = progress.add_task(f"{recognizer.family} {mode} queries", total=len(rows))
        for start in range(0, len(X), max(per_batch, 1)):
            if budget_s is not None and seconds and sum(seconds) * (1 + 1 / len(seconds)) > budget_s:
                break
            started = time.perf_counter()
            parts.append(recognizer.scores(X[start : start + per_batch], mode))
            queries = max(len(X[start : start + per_batch]) // segments, 1)
            seconds += [(time.perf_counter() - started) / queries] * queries
            progress.advance(bar, queries)
    rows = rows[: len(seconds)]
    truth = dataset.y[rows * segments] if in_library else np.full(rows.size, -1)
    track_scores = combine_segments(np.concatenate([p.track_scores for p in parts]), segments)
    confidence = np.concatenate([p.confidence for p in parts]).reshape(-1, segments).mean(axis=1)
    clustered = recognizer.assignment is not None and parts[0].cluster_log_probs is not None
    cluster_scores = combine_segments(np.concatenate([p.cluster_log_probs for p in parts]), segments) if clustered else None
    ranking = np.argsort(-track_scores, axis=1, kind="stable")[:, :3]
    ranking[np.take_along_axis(track_scores, ranking, axis=1) <= SCORE_FLOOR] = -1  # unscored: no guess
    return Predictions(
        rows, truth, ranking, confidence,
        recognizer.assignment[truth] if clustered and in_library else None,
        cluster_scores.argmax(axis=1) if clustered else None,
        np.asarray(seconds))


@dataclass(frozen=True)
class Match:
    """One ranked track of a query: its id, its combined score (see :func:`rank_segments`) and,
    under the two-stage majority-vote rule, the segments that voted for it."""

    track_id: str
    score: float
    votes: int | None = None


@dataclass(frozen=True)
class Query:
    """A clip cut for identification (:func:`prepare_query`): the patches of its segments that
    are not silent, how many silent ones were left out, and the seconds of the clip read."""

    patches: np.ndarray
    silent_segments: int
    read_s: float


def prepare_query(audio: np.ndarray, features: FrontEndConfig, segment_s: float) -> Query:
    """Raw patches float32 of the first :data:`MAX_QUERY_S` seconds of a mono clip at
    ``features.sample_rate`` Hz (the rest is not read), cut as the bench cuts its queries
    (:func:`~ppazam_core.queries.conditions.query_segments`): one segment, its frames repeated, up to
    ``segment_s`` seconds, else segments every half segment; segments below
    :data:`~ppazam_core.audio.decode.SILENCE_DBFS` are left out (silence is not music).

    Raises:
        AudioError: the clip is shorter than :data:`MIN_QUERY_S`, or every segment is silent.
    """
    rate = features.sample_rate
    cut = audio.shape[0] >= int(MAX_QUERY_S * rate)  # the caller may have read no more than that
    audio = audio[: int(MAX_QUERY_S * rate)]
    if audio.shape[0] < MIN_QUERY_S * rate:
        raise AudioError("<query>", f"clip is {audio.shape[0] / rate:.2f} s; queries need at least {MIN_QUERY_S:g} s")
    segments = query_segments(audio, rate, segment_s)
    audible = np.asarray([not is_silent(segment) for segment in segments])
    if not audible.any():
        read = f"its first {MAX_QUERY_S:g} s, all that a query reads, are" if cut else "clip is"
        raise AudioError("<query>", f"{read} silent (every segment below {SILENCE_DBFS:g} dBFS); nothing to identify")
    return Query(FrontEnd(features)(segments[audible]), int((~audible).sum()), audio.shape[0] / rate)


def query_patches(audio: np.ndarray, features: FrontEndConfig, segment_s: float) -> np.ndarray:
    """The patches ``(segments, *features.shape)`` of :func:`prepare_query`."""
    return prepare_query(audio, features, segment_s).patches


def rank_segments(recognizer: Recognizer, segment_scores: np.ndarray, top: int = 3) -> list[Match]:
    """The ``top`` tracks of one query from its segments' track scores ``(segments, T)``,
    combined as :func:`predict` combines them (:func:`combine_segments`); tracks no segment
    scored (a two-stage model's unsearched clusters, a top-1 head's other tracks) are left out."""
    mean = combine_segments(segment_scores, len(segment_scores))[0]
    order = np.argsort(-mean, kind="stable")[:top]
    return [Match(recognizer.track_ids[i], float(mean[i])) for i in order if mean[i] > SCORE_FLOOR]


def combine_segments(scores: np.ndarray, segments: int) -> np.ndarray:
    """Per-segment scores ``(n * segments, T)`` (higher is better, consecutive segments of a
    query together) to per-query scores ``(n, T)``: their mean, each score floored at
    :data:`SCORE_FLOOR` so that a track outside a segment's searched clusters (-inf) is heavily
    penalised but can still win on the other segments. For log-probabilities this is the
    mean log-probability rule; for vote counts, the summed votes (divided by ``segments``)."""
    floored = np.maximum(np.asarray(scores, dtype=np.float64), SCORE_FLOOR)
    return floored.reshape(-1, segments, floored.shape[1]).mean(axis=1)


def sample_queries(dataset: Dataset, seed: int, count: int | None = None) -> np.ndarray:
    """A seeded order of ``dataset``'s queries (all, or the first ``count``) spread over its
    tracks: one random query of each track, tracks in random order, then a second round, and
    so on, so that any prefix covers as many tracks as it can. The order is named by ``seed``
    (derive it from the condition so that each level samples other clips).

    Raises:
        ConfigError: ``count`` is below 1.
    """
    if count is not None and count < 1:
        raise ConfigError.bad_value("queries", count, "an integer >= 1")
    rng = np.random.default_rng(seed)
    track_of_query = dataset.y[:: dataset.segments]
    rounds: list[list[int]] = []
    for label in rng.permutation(np.unique(track_of_query)):
        for turn, query in enumerate(rng.permutation(np.flatnonzero(track_of_query == label))):
            if turn == len(rounds):
                rounds.append([])
            rounds[turn].append(int(query))
    order = np.asarray([query for queries in rounds for query in queries], dtype=np.int64)
    return order if count is None else order[:count]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
