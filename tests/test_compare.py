"""The paired regression gate: a real model perturbed until top-1 falls by about 2 points at
n = 640 is flagged, identical re-runs (one library size or two) are not, a drop of true-FHE
accuracy is caught at the FHE sample sizes the suites run, and runs of other configurations
are refused."""

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from ppazam_core.cli import main
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.errors import ConfigError
from ppazam_core.models.identifier import Identifier
from ppazam_core.models.pipeline import noise_folder
from ppazam_core.recognition import predict
from ppazam_core.results.records import PREDICTION_COLUMNS, Condition, RunInfo, RunRecord, accuracy_rows, prediction_frame
from reports.compare import Tolerance, compare_runs
from reports.writer import write_report

N_QUERIES = 640


@pytest.fixture(scope="module")
def many_queries(tiny_library, tiny_config, session_cache):
    """At least 640 clean queries of the tiny library (107 clips per track)."""
    config, _ = tiny_config
    spec = config.data.eval_spec("clean")
    per_track = -(-N_QUERIES // len(tiny_library))
    return build_dataset(tiny_library, replace(spec, augmentations_per_track=per_track), session_cache,
                         noise_folder(tiny_library, config.data, session_cache), workers=1)


def write_run(identifier: Identifier, config, queries, out, mode: str = "fp32", seconds: float | None = None):
    """Predict ``queries`` with ``identifier`` and write a run folder as the bench does."""
    info = RunInfo.start("unit")
    record = RunRecord({"run_id": info.run_id, "suite": {"name": "unit"}, "libraries": {"tiny": "fingerprint"}})
    result = predict(identifier, queries, mode)
    condition = info.condition(identifier, config, 4, 6, mode, "clean")
    record.results += accuracy_rows(condition, result)
    record.predictions.append(prediction_frame(condition, result, queries, identifier.track_ids))
    if seconds is not None:
        timing = info.condition(identifier, config, 4, 6, mode, stage="query")
        record.time_rounds(timing, "median_s", [seconds * (1 + 0.01 * i) for i in range(5)])
    write_report(record, out)
    return out


def perturbed(identifier: Identifier, folder, shift: float) -> Identifier:
    """A copy of ``identifier`` whose first fp32 intra-cluster head has the bias of its first
    output lowered by ``shift``: that track's queries start to go to its neighbours."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(identifier.folder, folder, ignore=shutil.ignore_patterns("circuits", "client-keys"))
    weights = sorted((folder / "fp32").glob("intra_*.pt"))[0]
    state = torch.load(weights, weights_only=True)
    state["classifier.bias"][0] -= shift
    torch.save(state, weights)
    return Identifier(folder)


def test_a_two_point_drop_at_640_queries_is_flagged_and_an_identical_rerun_is_not(trained, tiny_config, many_queries,
                                                                                   tmp_path, capsys):
    config, _ = tiny_config
    assert many_queries.queries >= N_QUERIES
    baseline = write_run(trained, config, many_queries, tmp_path / "baseline", seconds=0.01)
    rerun = write_run(trained, config, many_queries, tmp_path / "rerun", seconds=0.01)
    verdict = compare_runs(rerun, baseline)
    assert verdict.passed and verdict.paired_queries == many_queries.queries
    assert verdict.only_in_run == verdict.only_in_baseline == 0
    assert main(["compare", str(rerun), str(baseline)]) == 0

    base_top1 = predict(trained, many_queries, "fp32").hits(1).mean()
    low, high = 0.0, 50.0  # bisect the bias shift until top-1 falls by 1.5-3 points
    for _ in range(16):
        shift = (low + high) / 2
        model = perturbed(trained, tmp_path / "perturbed-model", shift)
        drop = base_top1 - predict(model, many_queries, "fp32").hits(1).mean()
        if 0.015 <= drop <= 0.03:
            break
        low, high = (shift, high) if drop < 0.015 else (low, shift)
    assert 0.015 <= drop <= 0.03, f"no bias shift gave a 1.5-3 point drop (last {drop:.3f} at {shift:.3f})"
    worse = write_run(model, config, many_queries, tmp_path / "worse", seconds=0.01)
    verdict = compare_runs(worse, baseline)
    assert [(r.metric, r.condition.split()[1]) for r in verdict.regressions if r.metric == "top1"] == [("top1", "fp32")]
    assert verdict.regressions[0].p_value < 0.05
    assert main(["compare", str(worse), str(baseline)]) == 1
    assert "REGRESSED" in capsys.readouterr().out and "REGRESSED" in (worse / "report.html").read_text()


def fabricated_run(folder, hits: dict[tuple[str, int], np.ndarray], suite: str = "unit", config_hash: str = "cfg",
                   seconds: dict[str, list[float]] | None = None):
    """A run folder of one family whose queries were right where ``hits[(mode, n_tracks)]`` says
    (as a real run writes them; the gate only reads hits and keys)."""
    info = RunInfo("run", "t", "c", suite)
    record = RunRecord({"run_id": folder.name, "suite": {"name": suite}, "libraries": {"lib": "fingerprint"}})
    frames = []
    for (mode, n_tracks), right in hits.items():
        condition = Condition(info.run_id, "t", "c", "code", suite, "lib", n_tracks, "embedding-head", mode, 8, 0,
                              "clean", config_hash=config_hash)
        record.results.append(condition.proportion("top1", right.sum(), right.size))
        frames.append(pd.DataFrame({**condition.keys(), "track_id": [f"t{i % 64}" for i in range(right.size)],
                                    "split": "eval", "clip": np.arange(right.size) // 64, "offset_s": 1.5,
                                    "seed": np.arange(right.size), "gain_db": 0.0, "query_s": 3.0, "truth": "t",
                                    "top1_id": "t", "top2_id": "u", "top3_id": "v", "top1": right, "top3": right,
                                    "cluster_correct": np.nan, "confidence": 1.0, "seconds": 0.02}))
        for stage, values in (seconds or {}).items():
            record.time_rounds(Condition(info.run_id, "t", "c", "code", suite, "lib", n_tracks, "embedding-head", mode,
                                         8, 0, stage=stage, config_hash=config_hash), "median_s", values)
    record.predictions = [f[list(PREDICTION_COLUMNS)] for f in frames]
    write_report(record, folder)
    return folder


def flip(right: np.ndarray, count: int, to: bool, seed: int = 0) -> np.ndarray:
    """``right`` with ``count`` seeded queries that were ``not to`` set to ``to``."""
    changed = right.copy()
    candidates = np.flatnonzero(right != to)
    changed[np.random.default_rng(seed).choice(candidates, count, replace=False)] = to
    return changed


def test_fhe_sim_noise_is_not_a_regression_but_a_one_sided_drop_is(tmp_path):
    base = np.random.default_rng(1).random(N_QUERIES) < 0.8
    noisy = flip(flip(base, 30, False, 2), 30, True, 3)  # a random circuit: 30 queries lost, 30 won
    baseline = fabricated_run(tmp_path / "base", {("fhe-sim", 64): base})
    assert compare_runs(fabricated_run(tmp_path / "noisy", {("fhe-sim", 64): noisy}), baseline).passed
    dropped = fabricated_run(tmp_path / "dropped", {("fhe-sim", 64): flip(base, 13, False)})  # 2.0 points
    assert [r.metric for r in compare_runs(dropped, baseline).regressions] == ["top1", "top3"]


@pytest.mark.parametrize("n, lost", [(640, 13), (18, 6)])
def test_a_drop_of_true_fhe_accuracy_is_caught_at_the_suites_sample_sizes(tmp_path, n, lost):
    """The default suite encrypts every embedding-head query (640 per level); the quick suite 18."""
    base = np.ones(n, dtype=bool) if n < 100 else np.random.default_rng(4).random(n) < 0.9
    baseline = fabricated_run(tmp_path / "base", {("fhe", 64): base})
    run = fabricated_run(tmp_path / "run", {("fhe", 64): flip(base, lost, False)})
    assert "top1" in [r.metric for r in compare_runs(run, baseline).regressions]


def test_an_identical_rerun_of_two_library_sizes_is_not_a_regression(tmp_path):
    """Keys hold the library size: each size is compared with its own baseline."""
    hits = {("fp32", 100): np.random.default_rng(5).random(200) < 0.95,
            ("fp32", 1000): np.random.default_rng(6).random(2000) < 0.6}
    verdict = compare_runs(fabricated_run(tmp_path / "again", hits), fabricated_run(tmp_path / "base", hits))
    # no query answered otherwise: no test can reach significance, none is counted (Tarone)
    assert verdict.passed and verdict.paired_queries == 2200 and (verdict.compared, verdict.untested) == (0, 4)


def test_latency_growth_needs_significance_and_the_tolerance(tmp_path):
    right = np.ones(20, dtype=bool)
    base = fabricated_run(tmp_path / "base", {("fp32", 64): right}, seconds={"query": [0.010, 0.011, 0.010, 0.012, 0.010]})
    slower = fabricated_run(tmp_path / "slow", {("fp32", 64): right}, seconds={"query": [0.014, 0.015, 0.014, 0.016, 0.014]})
    assert [r.metric for r in compare_runs(slower, base, Tolerance(max_latency_growth=0.25)).regressions] == ["median_s"]
    assert compare_runs(slower, base, Tolerance(max_latency_growth=0.5)).passed
    single = fabricated_run(tmp_path / "single", {("fp32", 64): right}, seconds={"query": [0.05]})
    verdict = compare_runs(single, base)  # one round: untested, as are the two accuracy tests (no discordance)
    assert verdict.passed and (verdict.compared, verdict.untested) == (0, 3)


def test_a_real_drop_is_not_diluted_by_conditions_that_cannot_differ(tmp_path):
    """8 of 16 right queries of one condition lost among 200 conditions where no query changed:
    only the testable condition counts in Holm's adjustment (Tarone's rule)."""
    hits = {("fp32", n): np.ones(18, dtype=bool) for n in range(100, 300)}
    baseline = fabricated_run(tmp_path / "base", hits)
    run = fabricated_run(tmp_path / "run", {**hits, ("fp32", 100): flip(hits[("fp32", 100)], 8, False)})
    verdict = compare_runs(run, baseline)
    assert [(r.condition.split()[4], r.metric) for r in verdict.regressions] == [("100", "top1"), ("100", "top3")]


def test_other_suites_or_configurations_are_refused_unless_allowed(tmp_path):
    right = np.ones(20, dtype=bool)
    base = fabricated_run(tmp_path / "base", {("fp32", 64): right})
    other = fabricated_run(tmp_path / "other", {("fp32", 64): right}, config_hash="changed")
    with pytest.raises(ConfigError, match="config_hash differs"):
        compare_runs(other, base)
    assert compare_runs(other, base, allow_different=True).passed
    nightly = fabricated_run(tmp_path / "nightly", {("fp32", 64): right}, suite="nightly")
    with pytest.raises(ConfigError, match="suite 'nightly'"):
        compare_runs(nightly, base)
    assert main(["compare", str(nightly), str(base)]) == 1
    record = RunRecord({"run_id": "n2", "suite": {"name": "nightly"}})
    record.results.append(Condition("n2", "t", "c", "code", "nightly", "lib", 64, "embedding-head", "fp32", 8, 0,
                                    "clean").proportion("top1", 20, 20))
    verdict = write_report(record, tmp_path / "n2", compare_to=base)  # the bench's --compare-to
    assert not verdict["passed"] and "suite 'nightly'" in verdict["error"]
    assert "NOT COMPARED" in (tmp_path / "n2" / "report.html").read_text()


def test_bad_tolerances_are_config_errors():
    with pytest.raises(ConfigError, match="max_accuracy_drop"):
        Tolerance(max_accuracy_drop=2.0)
    with pytest.raises(ConfigError, match="max_latency_growth"):
        Tolerance(max_latency_growth=-0.1)
    with pytest.raises(ConfigError, match="significance"):
        Tolerance(significance=0.0)
