"""What each compiled circuit costs: PBS count, bit width, key and ciphertext sizes, compile time,
and the encrypted latency expected from Concrete's cost model, per circuit and per query (the
two-stage CNN: the cluster classifier plus ``cluster_top_k`` intra-cluster classifiers; a linear
head: one call per query, or per window for ``mfcc-logreg``)."""

import statistics

import pytest

from ppazam_core.fhe import CircuitStats

FACTS = ("pbs_count", "max_bit_width", "complexity", "compile_s", "evaluation_key_bytes", "input_ciphertext_bytes",
         "output_ciphertext_bytes", "secret_key_bytes")


def test_circuit_costs(ppazam_run, ppazam_point, ppazam_model):
    names = ppazam_model.circuit_names()
    if not names:
        pytest.skip(f"nothing compiled for {ppazam_model.family} in this suite")
    estimates: dict[str, float] = {}
    for name in names:
        stats = CircuitStats.load(ppazam_model.channel.circuits / name)
        condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage=name)
        units = {"compile_s": "s", "complexity": ""}
        for fact in FACTS:
            unit = units.get(fact, "bytes" if fact.endswith("bytes") else "count")
            ppazam_run.record.results.append(condition.row(fact, getattr(stats, fact), 1, unit))
        ppazam_run.record.results.append(condition.row("estimated_fhe_s", stats.estimated_seconds, 1, "s"))
        estimates[name] = stats.estimated_seconds
        assert stats.input_ciphertext_bytes > 0
    if ppazam_model.cluster_top_k is None:
        query = ppazam_model.calls_per_query * sum(estimates.values())
    else:
        intra = [seconds for name, seconds in estimates.items() if name != "cluster"]
        query = estimates.get("cluster", 0.0) + (ppazam_model.cluster_top_k * statistics.median(intra) if intra else 0)
    condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage="query")
    ppazam_run.record.results.append(condition.row("estimated_fhe_s", query, 1, "s"))
