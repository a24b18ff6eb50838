"""Latency per stage and mode through pytest-benchmark, with PBS counts and bytes in extra_info.

Stages: ``features`` (front-end of one 3 s clip), ``first-stage`` (cluster classifier) and
``second-stage`` (the classifier of the predicted cluster) of the two-stage CNN, and ``query``
(the model's whole scoring of the clip's patch: both stages with the suite's cluster top-k, the
client's embedding and the head, the windows and their votes, the fingerprint lookup; in ``fhe``
mode it is timed query by query in test_accuracy). In ``fhe`` mode each classifier call is a
full client/server exchange, so slow calls run ``pedantic`` with one round; the encrypt / server
/ decrypt split of every encrypted call of the session is summarised at the end.
"""

import statistics
import time

import numpy as np
import pytest

from ppazam_core.features import FrontEnd
from ppazam_core.fhe import CircuitStats
from ppazam_core.identifier import Identifier
from ppazam_core.recognition import Mode

STAGES = ("features", "first-stage", "second-stage", "query")
PARTS = (("encrypt", "encrypt_s", "median_s", "s"), ("server", "server_s", "median_s", "s"),
         ("decrypt", "decrypt_s", "median_s", "s"), ("sent", "request_bytes", "median_bytes", "bytes"),
         ("received", "response_bytes", "median_bytes", "bytes"))


@pytest.mark.parametrize("stage", STAGES)
def test_latency(benchmark, ppazam_run, ppazam_point, ppazam_model, ppazam_mode, stage):
    mode = Mode(ppazam_mode)
    model = ppazam_model
    if mode not in model.modes:
        pytest.skip(f"family {model.family} runs in {', '.join(m.value for m in model.modes)} only")
    if mode is Mode.FHE and ppazam_run.fhe_queries == 0:
        pytest.skip("--fhe-queries 0: no encrypted timing in this run")
    if mode is Mode.FHE and stage == "query":
        pytest.skip("encrypted queries are timed one by one in test_accuracy (stage 'query' per level)")
    if stage in ("first-stage", "second-stage") and not isinstance(model, Identifier):
        pytest.skip(f"family {model.family} has no {stage}")
    config = ppazam_point.config
    library = ppazam_run.stages.library(config)
    clip = library.load(library.tracks[0], config.data.features.sample_rate, 0.0, config.data.segment_s)
    front_end = FrontEnd(model.features)
    patch = front_end(clip)
    calls = {"features": lambda: front_end(clip), "query": lambda: model.scores(front_end(clip), mode)}
    classifiers = model.circuit_names() if mode.needs_circuits else []
    intra = None
    if isinstance(model, Identifier):
        normalized = model.normalizer(patch)
        cluster = int(model.scores(patch, Mode.QUANT).cluster_log_probs.argmax())
        intra = f"intra_{cluster:03d}" if model.members[cluster].size > 1 else None
        calls["first-stage"] = lambda: model.classifier_logits(mode, "cluster", normalized)
        calls["second-stage"] = lambda: model.classifier_logits(mode, intra, normalized)
        if stage == "first-stage" and model.n_clusters == 1 or stage == "second-stage" and intra is None:
            pytest.skip("single-stage identifier or one-track cluster: no such stage")
        classifiers = [c for c in classifiers if c in ("cluster", intra)]
    if mode is Mode.FHE and stage != "features":
        for classifier in classifiers:  # keys are set up before timing
            model.channel.connect(classifier)
    rounds = 1 if mode is Mode.FHE and stage != "features" else ppazam_run.suite.latency_rounds
    seconds: list[float] = []

    def timed():
        started = time.perf_counter()
        calls[stage]()
        seconds.append(time.perf_counter() - started)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0 if mode is Mode.FHE else 1)
    benchmark.extra_info.update({"family": model.family, "mode": mode.value, "stage": stage,
                                 "bit_width": ppazam_point.bit_width})
    described = {"first-stage": "cluster", "second-stage": intra}.get(stage) if isinstance(model, Identifier) \
        else (classifiers[0] if classifiers and stage == "query" else None)
    if described is not None:
        stats = CircuitStats.load(model.channel.circuits / described)
        benchmark.extra_info.update({"pbs_count": stats.pbs_count, "input_bytes": stats.input_ciphertext_bytes,
                                     "output_bytes": stats.output_ciphertext_bytes})
    condition = ppazam_run.condition(ppazam_point, model, mode.value, stage=stage)
    measured = seconds[-rounds:]
    ppazam_run.record.latency.append(condition.row("median_s", statistics.median(measured), len(measured), "s",
                                                   (min(measured), max(measured))))
    assert all(s > 0 for s in measured)


def role(classifier: str) -> str:
    """The stage a classifier call belongs to: the two-stage CNN's first or second stage, or a
    family's single encrypted head."""
    return {"cluster": "first-stage"}.get(classifier, "second-stage" if classifier.startswith("intra_") else classifier)


def test_encrypted_breakdown(ppazam_run, ppazam_point, ppazam_model):
    """Encrypt / server / decrypt split, bytes and ms per PBS of every encrypted call so far."""
    channel = ppazam_model.channel
    if channel is None or not channel.costs:
        pytest.skip("no encrypted call in this run")
    for stage in sorted({role(c.classifier) for c in channel.costs}):
        costs = [c for c in channel.costs if role(c.classifier) == stage]
        for part, field, metric, unit in PARTS:
            values = [getattr(c, field) for c in costs]
            condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage=f"{stage}:{part}")
            ppazam_run.record.latency.append(condition.row(metric, statistics.median(values), len(values), unit,
                                                           (min(values), max(values))))
    for name in sorted({c.classifier for c in channel.costs if c.pbs_count > 0}):
        per_pbs = [1000 * c.server_s / c.pbs_count for c in channel.costs if c.classifier == name]
        condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage=name)
        ppazam_run.record.latency.append(condition.row("ms_per_pbs", statistics.median(per_pbs), len(per_pbs), "ms",
                                                       (min(per_pbs), max(per_pbs))))
    for setup in channel.key_setups.values():
        condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage=f"keys:{setup.classifier}")
        ppazam_run.record.latency.append(condition.row("keys_s", setup.keys_s, 1, "s"))
        ppazam_run.record.results.append(condition.row("evaluation_key_bytes_sent", setup.evaluation_key_bytes, 1,
                                                       "bytes"))
    assert np.isfinite([c.server_s for c in channel.costs]).all()
