"""Tidy result rows and per-query predictions: the run-folder format every command writes.

A run folder holds ``results.csv`` (accuracies and circuit facts), ``latency.csv`` (timings),
both with :data:`COLUMNS` (one metric of one condition per row, traceable to the run, the code,
the configuration and the artifact it measured), ``predictions.csv.gz`` (one row per query,
:data:`PREDICTION_COLUMNS`) and ``timings.csv.gz`` (every timed round, :data:`TIMING_COLUMNS`):
the samples of the paired regression gate; and ``run.json`` (the run's provenance, machine,
suite and exit status). The bench, ``ppazam evaluate``, ``ppazam report``
and ``ppazam compare`` all read and write it through this module.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from ppazam_core.errors import ArtifactError
from ppazam_core.results.metrics import Interval
from ppazam_core.results.metrics import metric as metric_of
from ppazam_core.provenance import code_fingerprint, environment, git_commit, new_run_id
from ppazam_core.store import atomic_write_text, build_of, is_complete, settings_hash

if TYPE_CHECKING:
    from ppazam_core.config import ExperimentConfig
    from ppazam_core.queries.dataset import Dataset
    from ppazam_core.recognition import Predictions, Recognizer

COLUMNS = ("run_id", "timestamp", "git_commit", "code_hash", "suite", "library", "n_tracks", "family", "mode",
           "bit_width", "rounding_bits", "level", "stage", "metric", "value", "ci_low", "ci_high", "min", "max", "n",
           "unit", "seed", "config_hash", "model_hash", "circuit_hash", "artifact_commit", "artifact_action")
# What names one measured condition across runs: the regression gate matches rows and queries on it.
CONDITION_KEYS = ("suite", "library", "n_tracks", "family", "mode", "bit_width", "rounding_bits", "level", "stage")
QUERY_KEYS = ("track_id", "split", "clip", "offset_s", "seed", "gain_db", "query_s")
PREDICTION_COLUMNS = (*CONDITION_KEYS, *QUERY_KEYS, "truth", "top1_id", "top2_id", "top3_id", "top1", "top3",
                      "cluster_correct", "confidence", "seconds")
TIMING_COLUMNS = (*CONDITION_KEYS, "metric", "round", "seconds")
RESULTS_FILE, LATENCY_FILE, RUN_FILE = "results.csv", "latency.csv", "run.json"
PREDICTIONS_FILE, TIMINGS_FILE = "predictions.csv.gz", "timings.csv.gz"


@dataclass(frozen=True)
class Condition:
    """Everything that names where a number came from, but the metric itself: the run, the code
    (commit and :func:`~ppazam_core.provenance.code_fingerprint`), the measured condition, the
    configuration (``config_hash``: the point's whole experiment configuration, FHE table
    included, without the code), the model folder and compiled circuits measured, the commit
    that built them and whether this run ``built`` or ``loaded`` them."""

    run_id: str
    timestamp: str
    git_commit: str
    code_hash: str
    suite: str
    library: str
    n_tracks: int
    family: str
    mode: str
    bit_width: int
    rounding_bits: int
    level: str = ""
    stage: str = ""
    seed: int = 0
    config_hash: str = ""
    model_hash: str = ""
    circuit_hash: str = ""
    artifact_commit: str = ""
    artifact_action: str = ""

    def row(self, metric: str, value: float, n: int, *, ci: tuple[float, float] | None = None,
            spread: tuple[float, float] | None = None) -> dict:
        """One tidy row of the registered ``metric`` (:func:`~ppazam_core.results.metrics.metric`, which
        gives its unit); ``ci`` is a 95% confidence interval of ``value``, ``spread`` the minimum
        and maximum of the ``n`` observations it summarises (both NaN by default).

        Raises:
            KeyError: ``metric`` is not registered.
            ValueError: ``ci`` or ``spread`` is given for a metric whose interval kind has none.
        """
        measured = metric_of(metric)
        if ci is not None and measured.interval not in (Interval.WILSON, Interval.T):
            raise ValueError(f"{metric} rows carry no confidence interval ({measured.interval.value})")
        if spread is not None and measured.interval is not Interval.SPREAD:
            raise ValueError(f"{metric} rows carry no spread ({measured.interval.value})")
        low, high = ci if ci is not None else (math.nan, math.nan)
        smallest, largest = spread if spread is not None else (math.nan, math.nan)
        return {**asdict(self), "metric": metric, "value": float(value), "ci_low": low, "ci_high": high,
                "min": smallest, "max": largest, "n": int(n), "unit": measured.unit}

    def proportion(self, metric: str, successes: float, n: int) -> dict:
        """A proportion with its 95% Wilson interval.

        Raises:
            ValueError: ``metric``'s interval kind is not Wilson's.
        """
        if metric_of(metric).interval is not Interval.WILSON:
            raise ValueError(f"{metric} is not a proportion with a Wilson interval")
        return self.row(metric, successes / n if n else math.nan, n, ci=wilson_interval(successes, n))

    def keys(self) -> dict:
        """The :data:`CONDITION_KEYS` of this condition."""
        return {key: getattr(self, key) for key in CONDITION_KEYS}


@dataclass(frozen=True)
class RunInfo:
    """What names one run: its id, UTC start time, the checked-out commit and the suite (``evaluate``
    for ``ppazam evaluate``)."""

    run_id: str
    timestamp: str
    git_commit: str
    suite: str

    @classmethod
    def start(cls, suite: str) -> "RunInfo":
        """A new run of ``suite``, now, at the checked-out commit."""
        return cls(new_run_id(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), git_commit(), suite)

    def provenance(self, command: str, libraries: dict[str, str], exit_status: int | None = None,
                   **details: Any) -> dict:
        """What ``run.json`` (and ``prepare.json``) says of a run, whatever wrote it: the run (id,
        UTC start, commit, :func:`~ppazam_core.provenance.code_fingerprint`, suite), the command
        line, each library's content fingerprint by name, the machine
        (:func:`~ppazam_core.provenance.environment`) and the exit status, then the writer's
        ``details`` (which may describe the suite further)."""
        return {"run_id": self.run_id, "timestamp": self.timestamp, "git_commit": self.git_commit,
                "code_hash": code_fingerprint(), "suite": {"name": self.suite}, "command": command,
                "libraries": libraries, "environment": environment(), "exit_status": exit_status, **details}

    def condition(self, model: Recognizer, config: ExperimentConfig, bit_width: int, rounding_bits: int, mode: str,
                  level: str = "", stage: str = "", action: str = "loaded") -> Condition:
        """Where a row of ``model`` (trained with ``config``) measured in ``mode`` comes from;
        ``action`` says whether this run ``built`` or ``loaded`` the model."""
        circuits = None if model.channel is None else model.channel.circuits
        return Condition(self.run_id, self.timestamp, self.git_commit, code_fingerprint(), self.suite,
                         model.manifest["library"], len(model.track_ids), model.family, mode, bit_width, rounding_bits,
                         level, stage, config.data.eval_seed, settings_hash(config), model.folder.name,
                         "" if circuits is None else circuits.relative_to(model.folder.parent).as_posix(),
                         artifact_commit(model), action)


def artifact_commit(model: Recognizer) -> str:
    """The commit that built ``model`` (and, when another one compiled its circuits, that one
    after a slash); ``unknown`` for folders finished before their marker recorded it."""
    commit = build_of(model.folder).get("git_commit", "unknown")
    if model.channel is not None and is_complete(model.channel.circuits):
        compiled = build_of(model.channel.circuits).get("git_commit", "unknown")
        if compiled != commit:
            return f"{commit}/{compiled}"
    return commit


def accuracy_rows(condition: Condition, predictions: Predictions) -> list[dict]:
    """Top-1, top-3 and (two-stage models) first-stage accuracy of ``predictions``, with their
    95% Wilson intervals."""
    n = len(predictions.truth)
    rows = [condition.proportion("top1", predictions.hits(1).sum(), n),
            condition.proportion("top3", predictions.hits(3).sum(), n)]
    if predictions.cluster_predicted is not None and predictions.cluster_truth is not None:
        rows.append(condition.proportion("cluster_accuracy",
                                         (predictions.cluster_predicted == predictions.cluster_truth).sum(), n))
    return rows


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (Wilson 1927; Brown, Cai & DasGupta
    2001 recommend it over the Wald interval for small ``n`` and extreme proportions)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided p-value of McNemar's exact test (McNemar 1947): of the discordant pairs, the
    ``only_first`` where only the first system was right and the ``only_second`` where only the
    second was, is the split binomial(n, 1/2)? (scipy's exact binomial test; 1.0 with no
    discordant pair.)"""
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    return float(binomtest(only_first, discordant, 0.5).pvalue)


@dataclass
class RunRecord:
    """Rows and per-query predictions collected during a run, written as one run folder."""

    provenance: dict
    results: list[dict] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)
    predictions: list[pd.DataFrame] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)

    def time_rounds(self, condition: Condition, metric: str, seconds: list[float]) -> None:
        """Keep every timed round of ``metric`` of ``condition`` for ``timings.csv.gz``."""
        self.timings += [{**condition.keys(), "metric": metric, "round": i, "seconds": float(s)}
                         for i, s in enumerate(seconds)]

    def write(self, out: Path) -> None:
        """Write the run folder ``out``. A folder holding an earlier run is emptied first, so
        it never shows another run's files; a folder holding anything else is refused.

        Raises:
            ArtifactError: ``out`` exists, is not empty and is not a run folder.
        """
        out = Path(out)
        check_out_folder(out)
        if out.is_dir() and any(out.iterdir()):
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RESULTS_FILE, frame(self.results).to_csv(index=False))
        atomic_write_text(out / LATENCY_FILE, frame(self.latency).to_csv(index=False))
        predictions = pd.concat(self.predictions) if self.predictions else pd.DataFrame(columns=PREDICTION_COLUMNS)
        predictions.to_csv(out / PREDICTIONS_FILE, index=False)
        pd.DataFrame(self.timings, columns=list(TIMING_COLUMNS)).to_csv(out / TIMINGS_FILE, index=False)
        self.write_provenance(out)

    def write_provenance(self, out: Path) -> None:
        """(Re)write ``run.json`` of the run folder ``out``."""
        atomic_write_text(Path(out) / RUN_FILE, json.dumps(self.provenance, indent=2, default=str))


def prediction_frame(condition: Condition, predictions: Predictions, queries: Dataset,
                     track_ids: tuple[str, ...]) -> pd.DataFrame:
    """One row per query of ``predictions`` (made on ``queries`` by a model of ``track_ids``):
    the condition's keys, the query's stable key (track, split, clip index, offset and gain of
    its first segment, augmentation seed, query seconds), the true and top-3 track ids, hits,
    first-stage correctness (two-stage models; else empty), confidence and seconds."""
    meta = queries.meta.iloc[predictions.rows * queries.segments].reset_index(drop=True)
    spec = queries.info["spec"]
    ids = np.asarray(track_ids, dtype=object)
    ranking = predictions.ranking
    cluster_correct = (predictions.cluster_predicted == predictions.cluster_truth
                       if predictions.cluster_truth is not None else np.full(len(meta), np.nan))
    table = pd.DataFrame({
        **{key: [value] * len(meta) for key, value in condition.keys().items()},
        "track_id": meta["track_id"].astype(str), "split": meta["split"], "clip": meta["augmentation"],
        "offset_s": meta["offset_s"], "seed": meta["seed"], "gain_db": meta["gain_db"],
        "query_s": spec["query_s"] or spec["segment_s"],
        "truth": np.where(predictions.truth >= 0, ids[np.maximum(predictions.truth, 0)], ""),
        **{f"top{k + 1}_id": np.where(ranking[:, k] >= 0, ids[np.maximum(ranking[:, k], 0)], "")
           if ranking.shape[1] > k else "" for k in range(3)},
        "top1": predictions.hits(1), "top3": predictions.hits(3), "cluster_correct": cluster_correct,
        "confidence": predictions.confidence, "seconds": predictions.seconds})
    return table[list(PREDICTION_COLUMNS)]


def check_out_folder(out: Path) -> None:
    """Check, before a run starts, that ``out`` may receive its run folder: absent, empty, or a
    run folder of an earlier run (which the new run replaces whole).

    Raises:
        ArtifactError: ``out`` is a file, or a non-empty folder that is not a run folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} is a file, not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / RUN_FILE).is_file():
        raise ArtifactError(f"{out} is not empty and not a ppazam run folder: choose another --out "
                            "(nothing in it was touched)")


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a data frame with the tidy columns in order."""
    return pd.DataFrame(rows, columns=list(COLUMNS))


STRING_COLUMNS = {"level": str, "stage": str, "unit": str, "git_commit": str, "code_hash": str, "config_hash": str,
                  "model_hash": str, "circuit_hash": str, "artifact_commit": str, "artifact_action": str,
                  "track_id": str, "truth": str, "top1_id": str, "top2_id": str, "top3_id": str}


def read_run(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``results.csv``, ``latency.csv`` and ``run.json`` of a run folder.

    Raises:
        ArtifactError: a file is missing, or is not what the bench writes.
    """
    folder = Path(folder)
    missing = [name for name in (RESULTS_FILE, LATENCY_FILE, RUN_FILE) if not (folder / name).is_file()]
    if missing:
        raise ArtifactError(f"{folder} is not a ppazam run folder (missing {', '.join(missing)})")
    tables = [_read_csv(folder / name, COLUMNS) for name in (RESULTS_FILE, LATENCY_FILE)]
    try:
        run = json.loads((folder / RUN_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{folder / RUN_FILE} is not valid JSON ({e})") from None
    return tables[0], tables[1], run


def read_predictions(folder: Path) -> pd.DataFrame:
    """The per-query predictions of a run folder (empty when the run made none).

    Raises:
        ArtifactError: the run folder has no predictions file (written before it existed), or
            the file is damaged.
    """
    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {PREDICTIONS_FILE}: it was written by an older ppazam; re-run it")
    return _read_csv(path, PREDICTION_COLUMNS)


def read_timings(folder: Path) -> pd.DataFrame:
    """Every timed round of a run folder (empty when it timed none).

    Raises:
        ArtifactError: the file is missing (an older run folder) or damaged.
    """
    path = Path(folder) / TIMINGS_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {TIMINGS_FILE}: it was written by an older ppazam; re-run it")
    return _read_csv(path, TIMING_COLUMNS)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={k: v for k, v in STRING_COLUMNS.items() if k in columns},
                            keep_default_na=False, na_values=[""], low_memory=False)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:
        raise ArtifactError(f"{path} cannot be read ({e}); re-run the bench or restore the file") from None
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(columns=list(columns))
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ArtifactError(f"{path} lacks columns {missing}: it was written by another ppazam version; re-run it")
    for column in ("level", "stage", "unit"):
        if column in table.columns:
            table[column] = table[column].fillna("")
    return table
