"""What each compiled circuit costs: PBS count, bit width, key and ciphertext sizes, compile time,
and the server seconds expected from Concrete's cost model calibrated on this machine (rows of
mode ``fhe-estimate``, never ``fhe``), per circuit and per query (the two-stage CNN: the cluster
classifier plus ``cluster_top_k`` intra-cluster classifiers; a linear head: one call per query,
or per window for ``mfcc-logreg``)."""

import statistics
from dataclasses import replace

from ppazam_core.families import family_modes
from ppazam_core.fhe.concrete import CircuitStats
from ppazam_core.recognition import Mode

FACTS = ("pbs_count", "max_bit_width", "complexity", "compile_s", "evaluation_key_bytes", "serialized_key_bytes",
         "input_ciphertext_bytes", "output_ciphertext_bytes", "secret_key_bytes")


def runs(run, params: dict) -> bool:
    """Only families with compiled circuits, in suites that compile them."""
    modes = set(family_modes(params["ppazam_point"].family)) & {Mode(m) for m in run.suite.modes}
    return any(mode.needs_circuits for mode in modes)


def test_circuit_costs(ppazam_run, ppazam_point, ppazam_model):
    names = ppazam_model.circuit_names()
    cost_model = ppazam_run.cost_model()
    estimates: dict[str, float] = {}
    for name in names:
        stats = CircuitStats.load(ppazam_model.channel.circuits / name)
        condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe", stage=name)
        ppazam_run.record.results += [condition.row(fact, getattr(stats, fact), 1) for fact in FACTS]
        estimates[name] = cost_model.server_seconds(stats)
        ppazam_run.record.results.append(replace(condition, mode="fhe-estimate").row("server_s", estimates[name], 1))
    if ppazam_model.cluster_top_k is None:
        query = ppazam_model.calls_per_query * sum(estimates.values())
    else:
        intra = [seconds for name, seconds in estimates.items() if name != "cluster"]
        query = estimates.get("cluster", 0.0) + (ppazam_model.cluster_top_k * statistics.median(intra) if intra else 0)
    condition = ppazam_run.condition(ppazam_point, ppazam_model, "fhe-estimate", stage="query")
    ppazam_run.record.results.append(condition.row("server_s", query, 1))
    assert names, f"{ppazam_model.family} runs in modes that need circuits, yet none was compiled"
