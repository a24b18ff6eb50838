"""Latency per stage and mode through pytest-benchmark, with PBS counts and bytes in extra_info.

Stages: ``features`` (front-end of one 3 s clip), the stages a family times on its own (its
registry record's ``stages``: ``first-stage``, the cluster classifier, and ``second-stage``, the
classifier of the predicted cluster, of the two-stage CNN), and ``query``
(the model's whole scoring of the clip's patch, front-end excluded: both stages with the suite's
cluster top-k, the client's embedding and the head, the windows and their votes, the fingerprint
lookup; in ``fhe`` mode it is timed query by query in test_accuracy). Rows give the median of
the rounds with their min and max. In ``fhe`` mode each classifier call is a full client/server
exchange, so slow calls run ``pedantic`` with one round; the encrypt / server / decrypt split of
every encrypted call of the session is summarised at the end, per call and per query (times the
calls a query makes: ``cluster_top_k`` second-stage calls, a window per call for mfcc-logreg),
and each circuit's measured server time is held against Concrete's cost model calibrated on
this machine at the start of the run (within 0.5-2x).
"""

import statistics
import time

from dataclasses import replace

import pytest

from ppazam_core.queries.features import FrontEnd
from ppazam_core.families import family_modes, get_family
from ppazam_core.families.registry import families
from ppazam_core.fhe.concrete import CircuitStats
from ppazam_core.recognition import Mode

FAMILY_STAGES = tuple(dict.fromkeys(stage for family in families().values() for stage in family.stages))
STAGES = ("features", *FAMILY_STAGES, "query")
PARTS = (("encrypt", "encrypt_s", "median_s"), ("server", "server_s", "median_s"),
         ("decrypt", "decrypt_s", "median_s"), ("transport", "transport_s", "median_s"),
         ("sent", "request_bytes", "median_bytes"),
         ("received", "response_bytes", "median_bytes"))


ESTIMATE_RATIO = (0.5, 2.0)  # measured server seconds over the calibrated estimate, for circuits with PBS


def runs(run, params: dict) -> bool:
    """Whether a parametrization can run: the family runs in the mode and times the stage
    (the family stages only the families that declare them: the two-stage CNN's oblivious variant
    calls the same circuits and is not timed twice), encrypted queries are timed in
    test_accuracy, and the encrypted breakdown needs encrypted calls (collection deselects the
    others)."""
    family = params["ppazam_point"].family
    encrypted = Mode.FHE.value in run.suite.modes and bool(run.suite.fhe_conditions()) and \
        Mode.FHE in family_modes(family)
    if "ppazam_mode" not in params:  # test_encrypted_breakdown
        return encrypted
    mode, stage = Mode(params["ppazam_mode"]), params["stage"]
    return mode in family_modes(family) and (mode is not Mode.FHE or encrypted and stage != "query") and (
        stage not in FAMILY_STAGES or stage in get_family(family).stages)


@pytest.mark.parametrize("stage", STAGES)
def test_latency(benchmark, ppazam_run, ppazam_point, ppazam_model, ppazam_mode, stage):
    mode = Mode(ppazam_mode)
    model = ppazam_model
    config = ppazam_point.config
    library = ppazam_run.stages.library(config)
    clip = library.load(library.tracks[0], config.data.features.sample_rate, 0.0, config.data.segment_s)
    front_end = FrontEnd(model.features)
    patch = front_end(clip)
    calls = {"features": lambda: front_end(clip), "query": lambda: model.scores(patch, mode)}
    classifiers = model.circuit_names() if mode.needs_circuits else []
    own = model.stage_calls(patch, mode)
    if stage in FAMILY_STAGES and stage not in own:
        pytest.skip(f"{model.family} has no {stage} here (e.g. a single-stage model or a one-track cluster)")
    calls.update({name: call for name, (call, _) in own.items()})
    if mode is Mode.FHE and stage != "features":
        ppazam_run.stages.connect(model)  # keys are set up before timing
    rounds = 1 if mode is Mode.FHE and stage != "features" else ppazam_run.suite.latency_rounds
    seconds: list[float] = []

    def timed():
        started = time.perf_counter()
        calls[stage]()
        seconds.append(time.perf_counter() - started)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0 if mode is Mode.FHE else 1)
    benchmark.extra_info.update({"family": model.family, "mode": mode.value, "stage": stage,
                                 "bit_width": ppazam_point.bit_width})
    # a query of a staged model runs several classifiers: only a stage's own is described
    described = own[stage][1] if stage in own else (classifiers[0] if classifiers and stage == "query" and not own
                                                    else None)
    if described is not None:
        stats = CircuitStats.load(model.channel.circuits / described)
        benchmark.extra_info.update({"pbs_count": stats.pbs_count, "input_bytes": stats.input_ciphertext_bytes,
                                     "output_bytes": stats.output_ciphertext_bytes})
    condition = ppazam_run.condition(ppazam_point, model, mode.value, stage=stage)
    measured = seconds[-rounds:]
    ppazam_run.record.latency.append(condition.row("median_s", statistics.median(measured), len(measured),
                                                   spread=(min(measured), max(measured))))
    ppazam_run.record.time_rounds(condition, "median_s", measured)


def role(classifier: str) -> str:
    """The stage a classifier call belongs to: the two-stage CNN's first or second stage, or a
    family's single encrypted head."""
    return {"cluster": "first-stage"}.get(classifier, "second-stage" if classifier.startswith("intra_") else classifier)


def calls_per_query(model, stage: str) -> int:
    """Encrypted calls one query (of one segment) makes to the classifiers of ``stage``."""
    if stage == "first-stage":
        return 1
    if stage == "second-stage":
        return model.cluster_top_k
    return model.calls_per_query


@pytest.mark.point_summary  # after every encrypted call of the point
def test_encrypted_breakdown(ppazam_run, ppazam_point, ppazam_model):
    """Encrypt / server / decrypt split, bytes and ms per PBS of every encrypted call so far,
    and each circuit's server seconds against the calibrated cost model."""
    channel = ppazam_model.channel
    if not channel.costs:
        pytest.skip("no encrypted call of this model in this session (deselected by -k?)")
    for stage in sorted({role(c.classifier) for c in channel.costs}):
        costs = [c for c in channel.costs if role(c.classifier) == stage]
        for part, field, metric in PARTS:
            values = [getattr(c, field) for c in costs]
            condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage=f"{stage}:{part}")
            median = statistics.median(values)
            ppazam_run.record.latency += [
                condition.row(metric, median, len(values), spread=(min(values), max(values))),
                condition.row(metric.replace("median", "per_query"), median * calls_per_query(ppazam_model, stage),
                              len(values))]
    cost_model = ppazam_run.cost_model()
    outside = []
    for name in sorted({c.classifier for c in channel.costs}):
        server = [c.server_s for c in channel.costs if c.classifier == name]
        stats = CircuitStats.load(channel.circuits / name)
        condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage=name)
        ppazam_run.record.time_rounds(condition, "server_s", server)
        if stats.pbs_count == 0:  # the cost model counts PBS and key switches; it says nothing of these
            continue
        per_pbs = [1000 * s / stats.pbs_count for s in server]
        estimate = cost_model.server_seconds(stats)
        ratio = statistics.median(server) / estimate
        ppazam_run.record.latency += [
            condition.row("ms_per_pbs", statistics.median(per_pbs), len(per_pbs), spread=(min(per_pbs), max(per_pbs))),
            replace(condition, mode="fhe-estimate").row("server_s", estimate, 1),
            condition.row("server_s_over_estimate", ratio, len(server))]
        if not ESTIMATE_RATIO[0] <= ratio <= ESTIMATE_RATIO[1]:
            outside.append(f"{name}: {statistics.median(server):.2f} s measured, {estimate:.2f} s estimated")
    for setup in channel.key_setups.values():
        condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage=f"keys:{setup.classifier}")
        ppazam_run.record.latency.append(condition.row("keys_s", setup.keys_s, 1))
        ppazam_run.record.results.append(condition.row("evaluation_key_bytes_sent", setup.evaluation_key_bytes, 1))
    assert not outside, (f"server seconds outside {ESTIMATE_RATIO[0]}-{ESTIMATE_RATIO[1]}x of Concrete's cost model "
                         f"calibrated on this machine ({cost_model.seconds_per_complexity:.3g} s per unit): "
                         + "; ".join(outside))
