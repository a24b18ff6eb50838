"""Accuracy by augmentation level and mode, overall, per cluster and for the first stage, and
circuit agreement: whether the simulated circuit computes what Concrete ML's clear execution of
the same circuit computes."""

import numpy as np
import pytest

from ppazam_core.recognition import Mode
from reports.tables import CLUSTER_STAGE
from reports.tidy import wilson_interval

AGREEMENT_REFERENCE = {Mode.FHE: Mode.FHE_SIM, Mode.FHE_SIM: Mode.QUANT, Mode.QUANT: Mode.FP32}
# Queries simulated a second time to measure the simulator's agreement with itself: Concrete's
# approximate rounding and p_error make each run of a circuit a random draw (the default
# classifiers' cluster top-1 agreed with itself on 67% of phone-in-room queries, 87% of clean
# ones), so the circuit is held to agree with its clear execution as well as with itself.
SELF_AGREEMENT_QUERIES = 128


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
    rows.append(condition.row("segments_per_query", ppazam_queries.segments, n, "count"))
    if mode.needs_circuits:
        rows.append(condition.row("p_error", ppazam_point.config.fhe.p_error, n, "probability"))
    if mode is Mode.FHE_SIM:
        clear = ppazam_run.stages.predict(ppazam_model, ppazam_queries, Mode.FHE_DISABLE, limit)
        agreeing = int((clear.ranking[:, 0] == result.ranking[:, 0]).sum())
        again = ppazam_run.stages.predict(ppazam_model, ppazam_queries, mode, SELF_AGREEMENT_QUERIES)
        first = result.ranking[np.searchsorted(result.rows, again.rows), 0]
        self_agreeing, m = int((again.ranking[:, 0] == first).sum()), len(again.rows)
        rows += [condition.proportion("circuit_agreement", agreeing, n),
                 condition.proportion("simulation_self_agreement", self_agreeing, m)]
    ppazam_run.record.results.extend(rows)
    if mode is Mode.FHE_SIM:  # the 95% Wilson intervals do not overlap: the circuit computes something else
        assert wilson_interval(agreeing, n)[1] >= wilson_interval(self_agreeing, m)[0], (
            f"{ppazam_model.family} at {ppazam_level}: fhe-sim top-1 agrees with the circuit's clear execution "
            f"(fhe-disable) on {agreeing} of {n} queries, with another simulation of the same queries on "
            f"{self_agreeing} of {m}: the circuit does not compute what Concrete ML compiled")
    if mode is Mode.FHE:  # one encrypted query end to end (every classifier call), keys already made
        latency = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level, "query")
        ppazam_run.record.latency.append(latency.row("median_s", float(np.median(result.seconds)), n, "s",
                                                     (float(result.seconds.min()), float(result.seconds.max()))))
    assert n > 0 and 0.0 <= result.hits(1).mean() <= result.hits(3).mean() <= 1.0
