"""What a compiled circuit will cost on this machine: Concrete's cost model, calibrated here.

Concrete gives each circuit a ``complexity`` (its cost model of the cryptographic work: PBS and
key switches, weighted by their parameters), but seconds per unit of complexity depend on the
machine (cores, SIMD, memory), and a PBS also has a cost the model does not weigh by its
parameters (a circuit of many small PBS runs slower than its complexity says). So
:func:`calibrate` times small circuits of table lookups -- 3 and 7 bits (small and large PBS
parameters), 16 and 64 lookups (one PBS each) -- and fits, by non-negative least squares,
``seconds = overhead + per_pbs * PBS + per_complexity * complexity``. A circuit without PBS (the
linear heads) does little the cost model counts; its estimate is 0 and its measured time is
serialization and per-call work outside the model.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import nnls

from ppazam_core.fhe.concrete import CircuitStats

CALIBRATION_CIRCUITS = ((3, 16), (3, 64), (7, 16), (7, 64))  # (bits of the lookup, lookups = PBS)
CALIBRATION_RUNS = 3


@dataclass(frozen=True)
class CostModel:
    """Seconds of a circuit's server run predicted from its PBS count and complexity;
    ``calibration`` lists each timed circuit's bits, PBS count, complexity and median seconds."""

    overhead_s: float
    seconds_per_pbs: float
    seconds_per_complexity: float
    calibration_s: float
    calibration: tuple[dict, ...]

    def server_seconds(self, stats: CircuitStats) -> float:
        """Predicted seconds of one server run of the circuit ``stats`` describes (0 without PBS)."""
        if stats.pbs_count == 0:
            return 0.0
        return self.overhead_s + self.seconds_per_pbs * stats.pbs_count + self.seconds_per_complexity * stats.complexity

    def to_dict(self) -> dict:
        return asdict(self)


def calibrate(circuits: tuple[tuple[int, int], ...] = CALIBRATION_CIRCUITS, runs: int = CALIBRATION_RUNS) -> CostModel:
    """Compile, key and time each ``(bits, lookups)`` table-lookup circuit (``runs`` server runs
    each, p_error 0.05) and fit the cost model through their medians. About 15-30 s on 2 cores,
    mostly key generation."""
    from concrete import fhe

    started = time.perf_counter()
    points = []
    for bits, size in circuits:
        levels = 1 << bits
        table = fhe.LookupTable([(v * 37 + 11) % levels for v in range(levels)])
        compiler = fhe.Compiler(lambda x: table[x], {"x": "encrypted"})
        circuit = compiler.compile([np.random.default_rng(i).integers(0, levels, size) for i in range(8)], p_error=0.05)
        circuit.keygen()
        encrypted = circuit.encrypt(np.arange(size) % levels)
        seconds = []
        for _ in range(runs):
            run_started = time.perf_counter()
            circuit.run(encrypted)
            seconds.append(time.perf_counter() - run_started)
        points.append({"bits": bits, "pbs_count": int(circuit.programmable_bootstrap_count),
                       "complexity": float(circuit.complexity), "median_s": float(np.median(seconds))})
    design = np.array([[1.0, p["pbs_count"], p["complexity"]] for p in points])
    scale = design.max(axis=0)  # columns of like size, for a well-conditioned fit
    coefficients = nnls(design / scale, np.array([p["median_s"] for p in points]))[0] / scale
    return CostModel(*map(float, coefficients), round(time.perf_counter() - started, 2), tuple(points))
