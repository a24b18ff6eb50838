"""Tidy result rows: one metric of one condition per row, traceable to its run.

``results.csv`` holds accuracies and circuit facts, ``latency.csv`` timings; both share
:data:`COLUMNS`. ``run.json`` holds the run's provenance, machine and suite.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ppazam_core.errors import ArtifactError
from ppazam_core.store import atomic_write_text

COLUMNS = ("run_id", "timestamp", "git_commit", "config_hash", "suite", "library", "family", "mode", "bit_width",
           "rounding_bits", "level", "stage", "metric", "value", "ci_low", "ci_high", "n", "unit", "seed")
RESULTS_FILE, LATENCY_FILE, RUN_FILE = "results.csv", "latency.csv", "run.json"
ACCURACY_METRICS = ("top1", "top3", "cluster_accuracy", "agreement")


@dataclass(frozen=True)
class Condition:
    """Everything that names where a number came from, but the metric itself."""

    run_id: str
    timestamp: str
    git_commit: str
    config_hash: str
    suite: str
    library: str
    family: str
    mode: str
    bit_width: int
    rounding_bits: int
    level: str = ""
    stage: str = ""
    seed: int = 0

    def row(self, metric: str, value: float, n: int, unit: str = "", ci: tuple[float, float] | None = None) -> dict:
        """One tidy row; ``ci`` defaults to no interval (NaN bounds)."""
        low, high = ci if ci is not None else (math.nan, math.nan)
        return {**asdict(self), "metric": metric, "value": float(value), "ci_low": low, "ci_high": high, "n": int(n),
                "unit": unit}

    def proportion(self, metric: str, successes: float, n: int) -> dict:
        """A proportion with its 95% Wilson interval."""
        return self.row(metric, successes / n if n else math.nan, n, "fraction", wilson_interval(successes, n))


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class RunRecord:
    """Rows collected during a run, written as one report folder."""

    provenance: dict
    results: list[dict] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RESULTS_FILE, frame(self.results).to_csv(index=False))
        atomic_write_text(out / LATENCY_FILE, frame(self.latency).to_csv(index=False))
        atomic_write_text(out / RUN_FILE, json.dumps(self.provenance, indent=2, default=str))


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a data frame with the tidy columns in order."""
    return pd.DataFrame(rows, columns=list(COLUMNS))


def read_run(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``results.csv``, ``latency.csv`` and ``run.json`` of a report folder."""
    folder = Path(folder)
    missing = [name for name in (RESULTS_FILE, LATENCY_FILE, RUN_FILE) if not (folder / name).is_file()]
    if missing:
        raise ArtifactError(f"{folder} is not a ppazam run folder (missing {', '.join(missing)})")
    dtypes = {"level": str, "stage": str, "unit": str, "git_commit": str, "config_hash": str}
    results = pd.read_csv(folder / RESULTS_FILE, dtype=dtypes, keep_default_na=False, na_values=[""])
    latency = pd.read_csv(folder / LATENCY_FILE, dtype=dtypes, keep_default_na=False, na_values=[""])
    for table in (results, latency):
        for column in ("level", "stage", "unit"):
            table[column] = table[column].fillna("")
    return results, latency, json.loads((folder / RUN_FILE).read_text())
