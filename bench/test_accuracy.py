"""Accuracy by condition and mode, overall, per cluster and for the first stage; every query's
prediction; circuit agreement (whether the simulated circuit computes what Concrete ML's clear
execution of the same circuit computes); and the checks any sane run passes.

True FHE runs a seeded sample of each condition's queries spread over the tracks (other clips
at each condition), as many as the family's ``fhe_budget_s`` allows, shared by the conditions
(the first condition runs one query whatever it costs; a later condition skips once the budget
left would not hold one more query);
the same queries in fhe-sim stand beside them as a paired comparison (McNemar's exact test).
"""

import numpy as np
import pytest

from ppazam_core.families import family_modes
from ppazam_core.recognition import Mode
from ppazam_core.results.records import accuracy_rows, mcnemar_exact, prediction_frame, wilson_interval

AGREEMENT_REFERENCE = {Mode.FHE: Mode.FHE_SIM, Mode.FHE_SIM: Mode.QUANT, Mode.QUANT: Mode.FP32}
# Queries simulated a second time to measure the simulator's agreement with itself: Concrete's
# approximate rounding and p_error make each run of a circuit a random draw (the default
# classifiers' cluster top-1 agreed with itself on 67% of phone-in-room queries, 87% of clean
# ones), so the circuit is held to agree with its clear execution as well as with itself.
SELF_AGREEMENT_QUERIES = 128
# Sanity floors on clean queries: top-1 significantly above chance (95% Wilson lower bound above
# 1/tracks), and the quantized model agreeing with fp32 on at least half of them (Wilson upper
# bound); a broken model, front-end or quantization fails them at the suite's n.
QUANT_AGREEMENT_FLOOR = 0.5
SANITY_CONDITION = "clean"


def runs(run, params: dict) -> bool:
    """Whether a parametrization can run: the family runs in the mode, and true FHE measures
    the suite's fhe conditions only (collection deselects the others)."""
    mode = Mode(params["ppazam_mode"])
    return mode in family_modes(params["ppazam_point"].family) and (
        mode is not Mode.FHE or params["ppazam_level"] in run.suite.fhe_conditions())


def test_accuracy(ppazam_run, ppazam_point, ppazam_model, ppazam_queries, ppazam_level, ppazam_mode):
    mode = Mode(ppazam_mode)
    stages = ppazam_run.stages
    if mode is Mode.FHE:
        stages.connect(ppazam_model)  # keys are made (or loaded) and sent before any query is timed
        planned = ppazam_run.fhe_rows(ppazam_point, ppazam_queries, ppazam_level)
        if planned is None:
            seconds, ran = ppazam_run.fhe_spent(ppazam_point)
            pytest.skip(f"{ppazam_point.family}'s fhe budget ({ppazam_run.suite.fhe_budget_s:g} s) is spent: {ran} "
                        f"truly encrypted queries took {seconds:.0f} s at earlier conditions (raise --fhe-budget-s "
                        f"for more)")
        result = stages.predict(ppazam_model, ppazam_queries, mode, planned[0], budget_s=planned[1])
        ppazam_run.spent_on_fhe(ppazam_point, result.seconds)
    else:
        result = stages.predict(ppazam_model, ppazam_queries, mode)
    n = len(result.truth)
    condition = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level)
    ppazam_run.record.predictions.append(prediction_frame(condition, result, ppazam_queries, ppazam_model.track_ids))
    rows = accuracy_rows(condition, result)
    reference = AGREEMENT_REFERENCE.get(mode)
    agreeing = None
    if reference is not None and reference.value in ppazam_run.suite.modes:
        baseline = stages.predict(ppazam_model, ppazam_queries, reference).take(result.rows)
        agreeing = int((baseline.ranking[:, 0] == result.ranking[:, 0]).sum())
        rows.append(condition.proportion("agreement", agreeing, n))
        if mode is Mode.FHE:  # paired: the same queries in fhe-sim
            ours, theirs = result.hits(1), baseline.hits(1)
            rows += [condition.proportion("fhe_sim_top1_same_queries", theirs.sum(), n),
                     condition.row("mcnemar_p_vs_fhe_sim", mcnemar_exact(int((ours & ~theirs).sum()),
                                                                         int((~ours & theirs).sum())), n)]
    for cluster in np.unique(result.cluster_truth) if result.cluster_truth is not None else []:
        members = result.cluster_truth == cluster
        per_cluster = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level, f"cluster{int(cluster)}")
        rows += [per_cluster.proportion("top1", result.hits(1)[members].sum(), int(members.sum())),
                 per_cluster.proportion("top3", result.hits(3)[members].sum(), int(members.sum()))]
    rows.append(condition.row("segments_per_query", ppazam_queries.segments, n))
    if mode.needs_circuits:
        rows.append(condition.row("p_error", ppazam_point.config.fhe.p_error, n))
    if mode is Mode.FHE_SIM:
        clear = stages.predict(ppazam_model, ppazam_queries, Mode.FHE_DISABLE)
        circuit_agreeing = int((clear.ranking[:, 0] == result.ranking[:, 0]).sum())
        again = stages.predict(ppazam_model, ppazam_queries, mode, result.rows[:SELF_AGREEMENT_QUERIES])
        self_agreeing, m = int((again.ranking[:, 0] == result.take(again.rows).ranking[:, 0]).sum()), len(again.rows)
        rows += [condition.proportion("circuit_agreement", circuit_agreeing, n),
                 condition.proportion("simulation_self_agreement", self_agreeing, m)]
    if mode is Mode.FHE:  # one encrypted query end to end (every classifier call), keys already made
        latency = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level, "query")
        ppazam_run.record.latency.append(latency.row("median_s", float(np.median(result.seconds)), n,
                                                     spread=(float(result.seconds.min()), float(result.seconds.max()))))
    ppazam_run.record.results.extend(rows)

    if mode is Mode.FHE_SIM:  # the 95% Wilson intervals do not overlap: the circuit computes something else
        assert wilson_interval(circuit_agreeing, n)[1] >= wilson_interval(self_agreeing, m)[0], (
            f"{ppazam_model.family} at {ppazam_level}: fhe-sim top-1 agrees with the circuit's clear execution "
            f"(fhe-disable) on {circuit_agreeing} of {n} queries, with another simulation of the same queries on "
            f"{self_agreeing} of {m}: the circuit does not compute what Concrete ML compiled")
    if ppazam_level == SANITY_CONDITION and mode is not Mode.FHE:
        chance = 1 / len(ppazam_model.track_ids)
        low = wilson_interval(result.hits(1).sum(), n)[0]
        assert low > chance, (f"{ppazam_model.family} {mode} top-1 on clean queries is {result.hits(1).mean():.3f} "
                              f"(95% lower bound {low:.3f}, n={n}): not above chance ({chance:.3f})")
        if mode is Mode.QUANT and agreeing is not None:
            high = wilson_interval(agreeing, n)[1]
            assert high >= QUANT_AGREEMENT_FLOOR, (
                f"{ppazam_model.family} quant agrees with fp32 on {agreeing} of {n} clean queries "
                f"(95% upper bound {high:.3f} < {QUANT_AGREEMENT_FLOOR}): quantization broke the model")
