"""What each compiled circuit costs: PBS count, bit width, key and ciphertext sizes, compile time."""

import pytest

from ppazam_core.fhe import SECONDS_PER_PBS, CircuitStats

FACTS = ("pbs_count", "max_bit_width", "complexity", "compile_s", "evaluation_key_bytes", "input_ciphertext_bytes",
         "output_ciphertext_bytes", "secret_key_bytes")


def test_circuit_costs(ppazam_run, ppazam_point, ppazam_identifier):
    if ppazam_identifier.circuits is None:
        pytest.skip("the suite has no FHE mode, so nothing was compiled")
    names = sorted(p.name for p in ppazam_identifier.circuits.iterdir() if (p / "server").is_dir())
    for name in names:
        stats = CircuitStats.load(ppazam_identifier.circuits / name)
        condition = ppazam_run.condition(ppazam_point, ppazam_identifier, "fhe", stage=name)
        units = {"compile_s": "s", "complexity": ""}
        for fact in FACTS:
            unit = units.get(fact, "bytes" if fact.endswith("bytes") else "count")
            ppazam_run.record.results.append(condition.row(fact, getattr(stats, fact), 1, unit))
        ppazam_run.record.results.append(condition.row("estimated_fhe_s", stats.pbs_count * SECONDS_PER_PBS, 1, "s"))
        assert stats.pbs_count > 0
