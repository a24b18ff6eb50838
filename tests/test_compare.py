"""The regression check catches a deliberately degraded model and passes an identical re-run."""

import shutil

import numpy as np
import pytest
import torch

from ppazam_core.cli import main
from ppazam_core.errors import ConfigError
from ppazam_core.identifier import Identifier
from ppazam_core.recognition import predict
from reports.compare import Tolerance, compare_runs
from reports.tidy import Condition, RunRecord
from reports.writer import write_report


def write_run(identifier: Identifier, queries, out, run_id: str, seconds: float = 0.01):
    """Evaluate ``identifier`` in fp32 and quant and write a report folder, as the bench does."""
    record = RunRecord({"run_id": run_id, "timestamp": "t", "git_commit": "c", "library": "tiny",
                        "suite": {"name": "unit"}, "environment": {"packages": {}}})
    for mode in ("fp32", "quant"):
        result = predict(identifier, queries, mode)
        condition = Condition(run_id, "t", "c", identifier.folder.name, "unit", "tiny", "two-stage-cnn", mode, 4, 6,
                              "clean")
        n = len(result.truth)
        record.results += [condition.proportion("top1", result.hits(1).sum(), n),
                           condition.proportion("top3", result.hits(3).sum(), n)]
        timing = Condition(run_id, "t", "c", identifier.folder.name, "unit", "tiny", "two-stage-cnn", mode, 4, 6,
                           stage="query")
        record.latency.append(timing.row("median_s", seconds, 5, "s"))
    write_report(record, out)
    return out


def degraded_copy(identifier: Identifier, folder) -> Identifier:
    """The same identifier with the output rows of every intra-cluster head rotated, so each
    cluster's classifier names the wrong track."""
    shutil.copytree(identifier.folder, folder, ignore=shutil.ignore_patterns("circuits", "client-keys"))
    for weights in list((folder / "fp32").glob("intra_*.pt")) + list((folder / identifier.manifest["quant"]).glob(
            "intra_*.pt")):
        state = torch.load(weights, weights_only=True)
        for key in ("classifier.weight", "classifier.bias"):
            state[key] = torch.roll(state[key], shifts=1, dims=0)
        torch.save(state, weights)
    return Identifier(folder)


def test_identical_rerun_passes_and_degraded_model_fails(trained, clean_queries, tmp_path, capsys):
    baseline = write_run(trained, clean_queries, tmp_path / "baseline", "base")
    rerun = write_run(trained, clean_queries, tmp_path / "rerun", "again")
    verdict = compare_runs(rerun, baseline)
    assert verdict.passed and verdict.compared == 6 and verdict.only_in_run == verdict.only_in_baseline == 0
    assert main(["compare", str(rerun), str(baseline)]) == 0

    degraded = degraded_copy(trained, tmp_path / "degraded-model")
    worse = write_run(degraded, clean_queries, tmp_path / "degraded", "worse")
    verdict = compare_runs(worse, baseline, Tolerance(max_accuracy_drop=0.02))
    assert not verdict.passed
    assert {(r.condition.split()[1], r.metric) for r in verdict.regressions} >= {("fp32", "top1"), ("quant", "top1")}
    assert main(["compare", str(worse), str(baseline), "--max-accuracy-drop", "0.02"]) == 1
    assert "REGRESSED" in capsys.readouterr().out
    assert "REGRESSED" in (worse / "report.html").read_text()


def test_latency_growth_beyond_tolerance_is_a_regression(trained, clean_queries, tmp_path):
    baseline = write_run(trained, clean_queries, tmp_path / "baseline", "base", seconds=0.010)
    slower = write_run(trained, clean_queries, tmp_path / "slower", "slow", seconds=0.014)
    verdict = compare_runs(slower, baseline, Tolerance(max_latency_growth=0.25))
    assert [r.metric for r in verdict.regressions] == ["median_s", "median_s"]
    assert compare_runs(slower, baseline, Tolerance(max_latency_growth=0.5)).passed


def test_small_drop_within_confidence_intervals_is_not_a_regression(tmp_path):
    def run(hits: int, name: str):
        record = RunRecord({"run_id": name})
        condition = Condition(name, "t", "c", "h", "unit", "lib", "two-stage-cnn", "fp32", 4, 6, "small")
        record.results.append(condition.proportion("top1", hits, 40))
        write_report(record, tmp_path / name)
        return tmp_path / name

    assert compare_runs(run(30, "noisy"), run(32, "base")).passed  # 0.75 vs 0.80 on 40 queries: noise
    assert not compare_runs(run(10, "broken"), tmp_path / "base").passed


def test_bad_tolerances_are_config_errors():
    with pytest.raises(ConfigError, match="max_accuracy_drop"):
        Tolerance(max_accuracy_drop=2.0)
    with pytest.raises(ConfigError, match="max_latency_growth"):
        Tolerance(max_latency_growth=-0.1)
    assert np.isclose(Tolerance().max_accuracy_drop, 0.02)
