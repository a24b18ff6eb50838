"""Accuracy by augmentation level and mode, overall, per cluster and for the first stage, and
circuit agreement: whether the simulated circuit computes what Concrete ML's clear execution of
the same circuit computes."""

import numpy as np
import pytest

from ppazam_core.fhe import CircuitStats
from ppazam_core.recognition import Mode
from reports.tables import CLUSTER_STAGE
from reports.tidy import wilson_interval

AGREEMENT_REFERENCE = {Mode.FHE: Mode.FHE_SIM, Mode.FHE_SIM: Mode.QUANT, Mode.QUANT: Mode.FP32}
# Least top-1 agreement of fhe-sim with fhe-disable on any condition. Exact (or no) rounding:
# the two differ only by PBS errors, p_error per PBS (1e-5 to 0.05 here), so 99%. Approximate
# rounding may move any rounded accumulator by one step of its kept bits, by design
# (Concrete's Exactness.APPROXIMATE): the default 656-PBS classifiers agreed on 80-91% of clean,
# noisy, +10 dB and -20 dB queries; a strided input that Concrete misread gave 16-25%.
CIRCUIT_AGREEMENT_FLOOR = {"exact": 0.99, "approximate": 0.75}


def check_mode(run, model, mode: Mode, condition: str) -> int | None:
    """Skip modes the family cannot run; returns the query limit of the mode."""
    if mode not in model.modes:
        pytest.skip(f"family {model.family} runs in {', '.join(m.value for m in model.modes)} only")
    limit = run.fhe_queries if mode is Mode.FHE else None
    if limit == 0:
        pytest.skip("--fhe-queries 0: no truly encrypted queries in this run")
    if mode is Mode.FHE and run.suite.is_sweep(condition) and not run.suite.fhe_sweeps:
        pytest.skip(f"suite {run.suite.name} runs its gain and length sweeps in fhe-sim, fhe on its levels only "
                    "(fhe_sweeps = false)")
    if mode is Mode.FHE:  # keys are made (or loaded) and sent before any query is timed
        for circuit in model.circuit_names():
            model.channel.connect(circuit)
    return limit


def test_accuracy(ppazam_run, ppazam_point, ppazam_model, ppazam_queries, ppazam_level, ppazam_mode):
    mode = Mode(ppazam_mode)
    limit = check_mode(ppazam_run, ppazam_model, mode, ppazam_level)
    result = ppazam_run.stages.predict(ppazam_model, ppazam_queries, mode, limit)
    n = len(result.truth)
    condition = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level)
    rows = [condition.proportion("top1", result.hits(1).sum(), n),
            condition.proportion("top3", result.hits(3).sum(), n)]
    if result.cluster_predicted is not None:
        rows.append(condition.proportion("cluster_accuracy", (result.cluster_predicted == result.cluster_truth).sum(),
                                         n))
    reference = AGREEMENT_REFERENCE.get(mode)
    if reference is not None and reference.value in ppazam_run.suite.modes:
        baseline = ppazam_run.stages.predict(ppazam_model, ppazam_queries, reference, limit)
        rows.append(condition.proportion("agreement", (baseline.ranking[:, 0] == result.ranking[:, 0]).sum(), n))
    for cluster in np.unique(result.cluster_truth) if result.cluster_truth is not None else []:
        members = result.cluster_truth == cluster
        per_cluster = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level,
                                           f"{CLUSTER_STAGE}{int(cluster)}")
        rows += [per_cluster.proportion("top1", result.hits(1)[members].sum(), int(members.sum())),
                 per_cluster.proportion("top3", result.hits(3)[members].sum(), int(members.sum()))]
    if mode.needs_circuits:
        rows.append(condition.row("p_error", ppazam_point.config.fhe.p_error, n, "probability"))
    if mode is Mode.FHE_SIM:
        clear = ppazam_run.stages.predict(ppazam_model, ppazam_queries, Mode.FHE_DISABLE, limit)
        agreeing = int((clear.ranking[:, 0] == result.ranking[:, 0]).sum())
        rows.append(condition.proportion("circuit_agreement", agreeing, n))
    ppazam_run.record.results.extend(rows)
    if mode is Mode.FHE_SIM:  # fails when the agreement is below the floor beyond its 95% Wilson interval
        floor = circuit_agreement_floor(ppazam_point.config.fhe, ppazam_model)
        assert wilson_interval(agreeing, n)[1] >= floor, (
            f"{ppazam_model.family} at {ppazam_level}: fhe-sim top-1 agrees with the circuit's clear execution "
            f"(fhe-disable) on {agreeing} of {n} queries, significantly below {floor:.0%}")
    if mode is Mode.FHE:  # one encrypted query end to end (every classifier call), keys already made
        latency = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level, "query")
        ppazam_run.record.latency.append(latency.row("median_s", float(np.median(result.seconds)), n, "s",
                                                     (float(result.seconds.min()), float(result.seconds.max()))))
    assert n > 0 and 0.0 <= result.hits(1).mean() <= result.hits(3).mean() <= 1.0


def circuit_agreement_floor(fhe, model) -> float:
    """The least circuit agreement a sane compilation gives (see :data:`CIRCUIT_AGREEMENT_FLOOR`);
    circuits without programmable bootstraps (linear heads) have no rounding to blame."""
    bootstraps = any(CircuitStats.load(model.channel.circuits / name).pbs_count for name in model.circuit_names())
    rounded = fhe.rounding_bits is not None and bootstraps
    return CIRCUIT_AGREEMENT_FLOOR[fhe.rounding_method if rounded else "exact"]
