"""Nightly regression: compare a run with a baseline run, metric by metric.

An accuracy regresses when it dropped by more than ``max_accuracy_drop`` *and* the drop is
beyond what the two confidence intervals explain (the run's upper bound lies below the
baseline's lower bound minus the tolerance). A latency regresses when its median grew by more
than ``max_latency_growth`` (a fraction). Conditions are matched on family, mode, bit width,
rounding bits, level, stage and metric; conditions present on one side only are listed, not
failed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ppazam_core.errors import ConfigError
from reports.tidy import ACCURACY_METRICS, read_run

KEYS = ["family", "mode", "bit_width", "rounding_bits", "level", "stage", "metric"]
VERDICT_FILE = "verdict.json"


@dataclass(frozen=True)
class Tolerance:
    max_accuracy_drop: float = 0.02
    max_latency_growth: float = 0.25

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ConfigError.bad_value("max_accuracy_drop", self.max_accuracy_drop, "a fraction from 0 to 1")
        if not self.max_latency_growth >= 0.0:
            raise ConfigError.bad_value("max_latency_growth", self.max_latency_growth, "a fraction >= 0")


@dataclass(frozen=True)
class Regression:
    """One metric that got worse beyond tolerance."""

    condition: str
    metric: str
    baseline: float
    current: float
    change: float
    reason: str


@dataclass(frozen=True)
class Verdict:
    baseline: str
    tolerance: Tolerance
    compared: int
    regressions: tuple[Regression, ...]
    only_in_run: int
    only_in_baseline: int

    @property
    def passed(self) -> bool:
        return not self.regressions

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare_runs(run: Path, baseline: Path, tolerance: Tolerance = Tolerance()) -> Verdict:
    """Compare the report folders ``run`` and ``baseline``."""
    run_results, run_latency, _ = read_run(run)
    base_results, base_latency, _ = read_run(baseline)
    regressions: list[Regression] = []
    compared = only_run = only_base = 0
    for current, reference, check in ((run_results, base_results, _accuracy_regression),
                                      (run_latency, base_latency, _latency_regression)):
        merged = _merge(current, reference)
        only_run += int((merged["_merge"] == "left_only").sum())
        only_base += int((merged["_merge"] == "right_only").sum())
        both = merged[merged["_merge"] == "both"]
        compared += len(both)
        regressions += [r for r in (check(row, tolerance) for row in both.itertuples(index=False)) if r is not None]
    return Verdict(str(baseline), tolerance, compared, tuple(regressions), only_run, only_base)


def _merge(current: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    columns = KEYS + ["value", "ci_low", "ci_high"]
    return pd.merge(current[columns], reference[columns], on=KEYS, how="outer", suffixes=("", "_base"),
                    indicator=True)


def _condition(row) -> str:
    parts = [row.family, row.mode, f"{row.bit_width}-bit", f"r{row.rounding_bits}", row.level, row.stage]
    return " ".join(str(p) for p in parts if p not in ("", None) and not (isinstance(p, float) and math.isnan(p)))


def _accuracy_regression(row, tolerance: Tolerance) -> Regression | None:
    if row.metric not in ACCURACY_METRICS or math.isnan(row.value) or math.isnan(row.value_base):
        return None
    drop = row.value_base - row.value
    if drop <= tolerance.max_accuracy_drop:
        return None
    high = row.value if math.isnan(row.ci_high) else row.ci_high
    low_base = row.value_base if math.isnan(row.ci_low_base) else row.ci_low_base
    if high >= low_base - tolerance.max_accuracy_drop:
        return None  # within what sampling noise explains
    return Regression(_condition(row), row.metric, row.value_base, row.value, -drop,
                      f"dropped {drop:.3f} (> {tolerance.max_accuracy_drop}); CI upper {high:.3f} "
                      f"below baseline CI lower {low_base:.3f}")


def _latency_regression(row, tolerance: Tolerance) -> Regression | None:
    if row.metric != "median_s" or not row.value_base > 0:
        return None
    growth = row.value / row.value_base - 1.0
    if growth <= tolerance.max_latency_growth:
        return None
    return Regression(_condition(row), row.metric, row.value_base, row.value, growth,
                      f"grew {growth:+.0%} (> {tolerance.max_latency_growth:.0%})")
