"""Nightly regression gate: a run against a baseline run, query by query.

Accuracy is compared *paired*: the two runs' predictions (``predictions.csv.gz``) are matched on
the condition (suite, library and its size, family, mode, bit width, rounding, level, stage) and
the query's stable key (track, split, clip, offset, seed, gain, length). Per condition and paired metric
of :mod:`ppazam_core.results.metrics` (top-1, top-3, first-stage cluster accuracy), the discordant pairs -- queries only the baseline
got right (``worse``) and only the run got right (``better``) -- go into McNemar's exact test
(McNemar 1947; one-sided: is ``worse`` larger than a fair coin gives?). A metric regresses when
its Holm-adjusted p-value (Holm 1979, over the tests of the comparison that could reach
significance at all, by Tarone's rule: a condition whose queries all agree cannot, and does not
dilute the others; so that an identical re-run is not flagged by chance across dozens of
conditions) is below ``significance`` *and* the paired drop is larger than ``max_accuracy_drop``.

Latency is compared on samples: the timed rounds of each stage (``latency.csv``'s conditions,
samples in ``timings.csv.gz``) and the per-query seconds of truly encrypted queries (pooled over
levels). A latency regresses when the one-sided Mann-Whitney U test (run slower) is significant
after Holm's adjustment *and* the median grew by more than ``max_latency_growth``. Too few rounds
(a single sample on a side, or too few for the smallest achievable p-value) can conclude nothing:
the condition is counted as untested, and suites time 10 rounds for that reason.

Runs of different suites, configurations (``config_hash``) or library content are refused with
:class:`~ppazam_core.errors.ConfigError` unless ``allow_different`` is set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest, mannwhitneyu
from statsmodels.stats.multitest import multipletests

from ppazam_core.errors import ConfigError
from ppazam_core.results.metrics import metric, metrics
from ppazam_core.results.records import CONDITION_KEYS, QUERY_KEYS, read_predictions, read_run, read_timings

VERDICT_FILE = "verdict.json"
LATENCY_KEYS = [k for k in CONDITION_KEYS if k != "level"]  # encrypted query times pooled over levels


@dataclass(frozen=True)
class Tolerance:
    """What the gate tolerates: a paired accuracy drop up to ``max_accuracy_drop`` (a fraction),
    a median latency growth up to ``max_latency_growth`` (a fraction), and a change that is not
    significant at ``significance`` (family-wise, Holm-adjusted)."""

    max_accuracy_drop: float = 0.01
    max_latency_growth: float = 0.25
    significance: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise ConfigError.bad_value("max_accuracy_drop", self.max_accuracy_drop, "a fraction from 0 to 1")
        if not self.max_latency_growth >= 0.0:
            raise ConfigError.bad_value("max_latency_growth", self.max_latency_growth, "a fraction >= 0")
        if not 0.0 < self.significance < 1.0:
            raise ConfigError.bad_value("significance", self.significance, "0 < significance < 1")


def gate_options() -> list[tuple[str, dict]]:
    """The gate's command-line options (flag, ``add_argument`` keywords), shared by ``ppazam
    compare`` and the bench's ``--compare-to``."""
    defaults = Tolerance()
    return [
        ("--max-accuracy-drop", {"type": float, "default": defaults.max_accuracy_drop,
                                 "help": f"tolerated paired top-k drop, a fraction (default {defaults.max_accuracy_drop})"}),
        ("--max-latency-growth", {"type": float, "default": defaults.max_latency_growth,
                                  "help": f"tolerated median latency growth, a fraction (default "
                                          f"{defaults.max_latency_growth})"}),
        ("--significance", {"type": float, "default": defaults.significance,
                            "help": f"family-wise significance of the paired tests, Holm-adjusted (default "
                                    f"{defaults.significance})"}),
        ("--allow-different", {"action": "store_true",
                               "help": "compare even when the suites, configurations or libraries differ"}),
    ]


@dataclass(frozen=True)
class Regression:
    """One metric of one condition that got worse beyond tolerance and chance."""

    condition: str
    metric: str
    baseline: float
    current: float
    change: float
    p_value: float  # Holm-adjusted
    n: int
    reason: str


@dataclass(frozen=True)
class Verdict:
    baseline: str
    tolerance: Tolerance
    compared: int  # accuracy and latency tests made
    paired_queries: int
    regressions: tuple[Regression, ...]
    untested: int  # tests that could not reach significance (no discordant query, too few timed rounds)
    only_in_run: int  # queries or latency conditions
    only_in_baseline: int
    baseline_run_id: str = ""

    @property
    def passed(self) -> bool:
        return not self.regressions

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def compare_runs(run: Path, baseline: Path, tolerance: Tolerance = Tolerance(),
                 allow_different: bool = False) -> Verdict:
    """Compare the run folders ``run`` and ``baseline`` (see the module docstring).

    Raises:
        ArtifactError: a folder is not a run folder, or lacks the predictions the gate pairs.
        ConfigError: the runs measured different suites, configurations or libraries (unless
            ``allow_different``), or have no query in common.
    """
    run_results, run_latency, run_info = read_run(run)
    base_results, base_latency, base_info = read_run(baseline)
    if not allow_different:
        check_comparable(run_results, run_info, base_results, base_info)
    predictions = {folder: read_predictions(folder) for folder in (run, baseline)}
    accuracy, paired, acc_only_run, acc_only_base = _accuracy_tests(predictions[run], predictions[baseline])
    latency, untested, lat_only_run, lat_only_base = _latency_tests(
        *((read_timings(folder), predictions[folder]) for folder in (run, baseline)))
    if paired == 0:
        raise ConfigError(f"no query of {run} matches a query of {baseline} (other suites, conditions or "
                          "libraries): there is nothing to compare")
    tests = testable(accuracy + latency, tolerance.significance)
    if tests:
        adjusted = multipletests([t["p"] for t in tests], method="holm")[1]
        for test, p in zip(tests, adjusted):
            test["p_adjusted"] = float(p)
    regressions = [_regression(t, tolerance) for t in tests]
    untested += len(accuracy) + len(latency) - len(tests)
    return Verdict(str(baseline), tolerance, len(tests), paired, tuple(r for r in regressions if r is not None),
                   untested, acc_only_run + lat_only_run, acc_only_base + lat_only_base,
                   str(base_info.get("run_id", "")))


def testable(tests: list[dict], significance: float) -> list[dict]:
    """The tests that could reach significance, by Tarone's rule (Tarone 1990): the smallest
    ``K`` such that at most ``K`` tests have a smallest achievable p-value (``min_p``: 0.5^d for
    McNemar's exact test on d discordant pairs, 1 / C(n1 + n2, n1) for Mann-Whitney) at or below
    ``significance / K``; those are the ones Holm's adjustment counts. A condition with no
    discordant query, or too few timed rounds, then does not dilute the others."""
    for bound in range(1, len(tests) + 1):
        chosen = [t for t in tests if t["min_p"] <= significance / bound]
        if len(chosen) <= bound:
            return chosen
    return []


def check_comparable(run_results: pd.DataFrame, run_info: dict, base_results: pd.DataFrame, base_info: dict) -> None:
    """Refuse to compare runs of different suites, configurations or library content.

    Raises:
        ConfigError: naming what differs.
    """
    suites = (run_info.get("suite", {}).get("name"), base_info.get("suite", {}).get("name"))
    if suites[0] != suites[1]:
        raise ConfigError(f"the run measured suite {suites[0]!r}, the baseline {suites[1]!r}; "
                          "compare runs of one suite (or pass --allow-different)")
    configs = [set(map(tuple, results[["family", "bit_width", "rounding_bits", "n_tracks", "config_hash"]]
                       .drop_duplicates().astype(str).values)) for results in (run_results, base_results)]
    differing = sorted({c[:4] for c in configs[0] ^ configs[1]} & {c[:4] for c in configs[0]} & {c[:4] for c in configs[1]})
    if differing:
        raise ConfigError(f"the run and the baseline used other configurations for {', '.join(' '.join(d) for d in differing[:3])}"
                          " (config_hash differs); compare runs of one configuration (or pass --allow-different)")
    libraries = (run_info.get("libraries", {}), base_info.get("libraries", {}))
    changed = sorted(name for name in set(libraries[0]) & set(libraries[1]) if libraries[0][name] != libraries[1][name])
    if changed:
        raise ConfigError(f"library {changed[0]} holds other audio in the run than in the baseline (content "
                          "fingerprints differ); compare runs of one library (or pass --allow-different)")


def _accuracy_tests(current: pd.DataFrame, reference: pd.DataFrame) -> tuple[list[dict], int, int, int]:
    keys = list(CONDITION_KEYS + QUERY_KEYS)
    current, reference = _keyed(current, keys), _keyed(reference, keys)
    merged = current.merge(reference, on=keys, how="outer", suffixes=("", "_base"), indicator=True)
    only_run = int((merged["_merge"] == "left_only").sum())
    only_base = int((merged["_merge"] == "right_only").sum())
    both = merged[merged["_merge"] == "both"]
    tests = []
    for condition, group in both.groupby(list(CONDITION_KEYS), sort=False, dropna=False):
        for name, column in paired_metrics().items():
            ours, theirs = group[column], group[f"{column}_base"]
            if ours.isna().any() or theirs.isna().any():
                continue
            ours, theirs = ours.astype(bool).to_numpy(), theirs.astype(bool).to_numpy()
            worse, better = int((theirs & ~ours).sum()), int((ours & ~theirs).sum())
            p = binomtest(worse, worse + better, 0.5, alternative="greater").pvalue if worse + better else 1.0
            tests.append({"kind": "accuracy", "condition": dict(zip(CONDITION_KEYS, condition)), "metric": name,
                          "baseline": float(theirs.mean()), "current": float(ours.mean()), "n": len(group),
                          "change": (better - worse) / len(group), "p": float(p),
                          "min_p": 0.5 ** (worse + better),
                          "detail": f"{worse} queries only the baseline got right, {better} only the run"})
    return tests, len(both), only_run, only_base


def paired_metrics() -> dict[str, str]:
    """The metrics compared query by query, with the column of ``predictions.csv.gz`` holding
    each query's hit (the metric table's ``paired``)."""
    return {m.name: m.paired for m in metrics() if m.paired}


def _latency_tests(*sides: tuple[pd.DataFrame, pd.DataFrame]) -> tuple[list[dict], int, int, int]:
    """Mann-Whitney tests of the run's and the baseline's ``(timings, predictions)``."""
    samples = []
    for timings, queries in sides:
        encrypted = queries[queries["mode"] == "fhe"].assign(stage="query", metric="median_s")
        pooled = encrypted[LATENCY_KEYS + ["metric", "seconds"]]
        samples.append(pd.concat([timings[LATENCY_KEYS + ["metric", "seconds"]], pooled], ignore_index=True)
                       if not timings.empty or not pooled.empty else pd.DataFrame(columns=LATENCY_KEYS + ["metric", "seconds"]))
    keys = LATENCY_KEYS + ["metric"]
    current = {k: g["seconds"].to_numpy(float) for k, g in _keyed(samples[0], keys).groupby(keys, dropna=False)}
    reference = {k: g["seconds"].to_numpy(float) for k, g in _keyed(samples[1], keys).groupby(keys, dropna=False)}
    tests, untested = [], 0
    for key in current.keys() & reference.keys():
        ours, theirs = current[key], reference[key]
        if len(ours) < 2 or len(theirs) < 2 or not _lower_is_better(key[-1]):  # e.g. a plug-in's metric not installed
            untested += 1
            continue
        growth = float(np.median(ours) / np.median(theirs) - 1.0) if np.median(theirs) > 0 else 0.0
        p = float(mannwhitneyu(ours, theirs, alternative="greater").pvalue)
        tests.append({"kind": "latency", "condition": dict(zip(keys, key)), "metric": key[-1],
                      "baseline": float(np.median(theirs)), "current": float(np.median(ours)),
                      "n": len(ours), "change": growth, "p": p, "min_p": 1 / comb(len(ours) + len(theirs), len(ours)),
                      "detail": f"{len(ours)} samples against {len(theirs)}"})
    return tests, untested, len(current.keys() - reference.keys()), len(reference.keys() - current.keys())


def _lower_is_better(name: str) -> bool:
    """Whether the timed metric ``name`` is registered here as lower-is-better (slower: worse)."""
    try:
        return metric(name).higher_is_better is False
    except KeyError:
        return False


def _regression(test: dict, tolerance: Tolerance) -> Regression | None:
    p = test["p_adjusted"]
    if p >= tolerance.significance:
        return None
    if test["kind"] == "accuracy":
        if -test["change"] <= tolerance.max_accuracy_drop:
            return None
        reason = (f"dropped {-test['change']:.3f} (> {tolerance.max_accuracy_drop}) on {test['n']} paired queries; "
                  f"{test['detail']}; McNemar exact p = {p:.2g} (Holm-adjusted) < {tolerance.significance}")
    else:
        if test["change"] <= tolerance.max_latency_growth:
            return None
        reason = (f"median grew {test['change']:+.0%} (> {tolerance.max_latency_growth:.0%}); {test['detail']}; "
                  f"Mann-Whitney p = {p:.2g} (Holm-adjusted) < {tolerance.significance}")
    return Regression(_describe(test["condition"]), test["metric"], test["baseline"], test["current"], test["change"],
                      p, test["n"], reason)


def _keyed(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``table`` with its key columns as strings, so that both runs' keys compare equal."""
    table = table.copy()
    for key in keys:
        table[key] = table[key].fillna("").astype(str)
    return table


def _describe(condition: dict) -> str:
    parts = [condition.get("family"), condition.get("mode"), f"{condition.get('bit_width')}-bit",
             f"r{condition.get('rounding_bits')}", f"{condition.get('n_tracks')} tracks", condition.get("level", ""),
             condition.get("stage", "")]
    return " ".join(str(p) for p in parts if p not in ("", None, "nan"))
