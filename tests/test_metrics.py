"""The metric table: one unit, direction and interval kind per metric, used by every writer."""

import pandas as pd
import pytest

from ppazam_core.results.metrics import Interval, Metric, metric, metrics, register_metric
from ppazam_core.results.records import Condition
from reports.compare import paired_metrics
from reports.tables import glossary

CONDITION = Condition("r1", "t", "abc", "code", "unit", "lib", 4, "mfcc-logreg", "fp32", 8, 0)


def test_a_row_takes_its_unit_from_the_table_and_a_qualifier_names_its_metric():
    assert CONDITION.row("median_s", 0.5, 3, spread=(0.4, 0.9))["unit"] == "s"
    assert CONDITION.row("train_s:embedding", 12.0, 1)["unit"] == "s"
    assert CONDITION.proportion("top1", 3, 4) | {"unit": "fraction"} == CONDITION.proportion("top1", 3, 4)
    assert metric("roc_auc").higher_is_better and metric("pbs_count").direction == "lower"


def test_unknown_metrics_and_intervals_a_metric_cannot_have_are_refused():
    with pytest.raises(KeyError, match="register_metric"):
        CONDITION.row("top_1", 0.5, 4)
    with pytest.raises(ValueError, match="no confidence interval"):
        CONDITION.row("median_s", 0.5, 4, ci=(0.4, 0.6))
    with pytest.raises(ValueError, match="no spread"):
        CONDITION.row("roc_auc", 0.9, 4, spread=(0.8, 1.0))
    with pytest.raises(ValueError, match="Wilson"):
        CONDITION.proportion("roc_auc", 3, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Metric("top1", "s", False, Interval.NONE, "another top-1"))


def test_every_metric_is_described_and_the_gate_pairs_the_table_s_accuracies():
    assert all(m.description and m.unit in {"fraction", "s", "ms", "bytes", "bits", "count", "probability", "ratio",
                                            "flag", ""} for m in metrics())
    assert paired_metrics() == {"top1": "top1", "top3": "top3", "cluster_accuracy": "cluster_correct"}


def test_a_plug_in_metric_registers_once_and_reports_list_the_run_s_metrics():
    extra = Metric("toy_margin", "", True, Interval.NONE, "a plug-in's score margin")
    assert register_metric(extra) is register_metric(extra)
    results = pd.DataFrame([CONDITION.proportion("top1", 3, 4), CONDITION.row("toy_margin", 0.2, 4),
                            CONDITION.row("train_s:embedding", 12.0, 1)])
    latency = pd.DataFrame([CONDITION.row("median_s", 0.5, 3, spread=(0.4, 0.9))])
    table = glossary(results, latency)
    assert list(table.index) == ["top1", "toy_margin", "train_s", "median_s"]
    assert table.loc["top1", "better"] == "higher" and table.loc["median_s", "interval"] == "spread"
    assert table.loc["toy_margin", "description"] == "a plug-in's score margin"
    unregistered = glossary(results.assign(metric="gone_metric"), latency.iloc[:0])
    assert list(unregistered.index) == ["gone_metric"] and unregistered.loc["gone_metric", "unit"] == "?"
