"""The privacy ledger: what each design reveals, and what it costs to keep it private.

For one model in one mode, per query segment (a longer query repeats it per segment):

* ``server_learns_bits`` -- bits about the song the server learns from what it observes: in the
  clear modes (``fp32``, ``quant``) the query itself, so all ``log2 N`` bits; under FHE only which
  circuits a query calls can tell, so 0 for a design that calls the same circuits for every query.
  The leaky two-stage CNN calls the intra-cluster classifiers of the ``k`` clusters the client
  picked: with tracks equally likely a priori, the server learns the entropy of the song's cluster
  (``-sum p_c log2 p_c``, ``p_c`` = cluster size / N) for ``k = 1``, at most
  ``min(that, log2 C(K, k))`` for larger ``k``, and nothing when ``k = K``;
* ``server_calls`` -- encrypted circuit calls (expected, over tracks equally likely);
* ``client_scores`` -- scores the client decrypts (the library owner's model is that queryable);
* ``bytes_up`` / ``bytes_down`` -- bytes sent and received per segment (expected): measured
  framed messages where the run made encrypted calls, else Concrete's ciphertext sizes plus
  the frame header of :mod:`ppazam_core.fhe.deployment` (``sizes_measured`` says which);
* ``key_bytes_up`` -- evaluation keys the client uploads once, for every circuit: measured
  framed messages, else each circuit's serialized key size recorded at compile
  (:class:`~ppazam_core.fhe.concrete.KeyLayout`) plus the frame header;
* ``security_bits`` -- the security level Concrete chose the parameters for (bits; NaN in the
  clear, as ``sizes_measured``);
* ``p_error_per_query`` -- probability that at least one table lookup of a query is off
  (``1 - prod (1 - p_error)^PBS`` over its calls; ``p_error`` per lookup from Concrete). An
  error moves one lookup's result by a quantization step; the accuracy rows show what it costs.
  A packed CKKS design has no lookup: its call plan gives the chance that one call's approximation
  error changes the top-1 (``CallPlan.p_error_per_call``, measured at build).

The design of each family comes from its :class:`CallPlan` (``model.call_plan()``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import numpy as np

from ppazam_core.fhe.deployment import EncryptedChannel
from ppazam_core.fhe.wire import HEADER
from ppazam_core.fhe.concrete import CircuitStats
from ppazam_core.recognition import Mode
from ppazam_core.results.records import Condition

ENCRYPTED_MODES = (Mode.FHE_DISABLE, Mode.FHE_SIM, Mode.FHE)  # modes that evaluate the encrypted design


@dataclass(frozen=True)
class CallPlan:
    """How one query segment uses the server under FHE: expected calls per circuit, the bits
    the call pattern reveals about the song, and the scores the client decrypts."""

    calls: dict[str, float]
    server_learns_bits: float
    client_scores: float
    p_error_per_call: float = 0.0  # a design without table lookups (CKKS): the chance one call's answer is off


@dataclass(frozen=True)
class Ledger:
    """One row of the privacy ledger (see the module docstring for each field)."""

    server_learns_bits: float
    server_calls: float
    client_scores: float
    bytes_up: float
    bytes_down: float
    key_bytes_up: float
    security_bits: float
    p_error_per_query: float
    sizes_measured: float  # 1: bytes and keys measured on this run's encrypted exchanges; 0: Concrete's sizes

    def metrics(self) -> dict[str, float]:
        return asdict(self)

    def rows(self, condition: Condition) -> list[dict]:
        """Tidy result rows of this ledger under ``condition`` (give it ``stage="ledger"``)."""
        return [condition.row(name, value, 1) for name, value in self.metrics().items()]


def cluster_entropy_bits(sizes: np.ndarray, searched: int) -> float:
    """Bits the server learns from the ``searched`` clusters a query calls, clusters of ``sizes``
    tracks (see the module docstring)."""
    p = np.asarray(sizes, dtype=np.float64) / np.sum(sizes)
    entropy = float(-(p[p > 0] * np.log2(p[p > 0])).sum())
    return max(0.0, min(entropy, math.log2(math.comb(len(p), searched))))


def ledger(model, mode: Mode | str, channel: EncryptedChannel | None) -> Ledger:
    """The ledger of ``model`` (anything with ``track_ids`` and, when it compiles circuits,
    ``call_plan()``) in ``mode``; ``channel`` is its client of the compiled classifiers (``None``
    for clear-text families). Clear modes send the query in the clear: nothing is encrypted.
    Bytes are the channel's measured medians per circuit where it made encrypted calls (and its
    uploaded keys once every key set went up), else Concrete's ciphertext and key sizes --
    uncompressed, so an upper bound for circuits compiled with compression
    (``sizes_measured`` says which). Raises :class:`~ppazam_core.errors.ArtifactError` when a
    circuit's ``circuit.json`` is missing."""
    mode = Mode(mode)
    n_tracks = len(model.track_ids)
    if mode not in ENCRYPTED_MODES or channel is None:
        return Ledger(math.log2(n_tracks), 0.0, float(n_tracks), 0.0, 0.0, 0.0, math.nan, 0.0, math.nan)
    plan = model.call_plan()
    names = channel.names()
    stats = {name: CircuitStats.load(channel.circuits / name) for name in names}
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    for name in plan.calls:  # measured medians where this channel made calls
        costs = [c for c in channel.costs if c.classifier == name]
        if costs:
            sent[name] = statistics.median(c.request_bytes for c in costs)
            received[name] = statistics.median(c.response_bytes for c in costs)
    keys_measured = set(channel.key_setups) == set(names)
    keys = (sum(s.evaluation_key_bytes for s in channel.key_setups.values()) if keys_measured
            else sum(s.serialized_key_bytes + HEADER.size for s in stats.values()))
    survive = math.prod((1.0 - stats[n].p_error) ** (stats[n].pbs_count * calls) for n, calls in plan.calls.items())
    survive *= (1.0 - plan.p_error_per_call) ** sum(plan.calls.values())
    return Ledger(
        server_learns_bits=plan.server_learns_bits,
        server_calls=sum(plan.calls.values()),
        client_scores=plan.client_scores,
        bytes_up=sum(c * sent.get(n, stats[n].input_ciphertext_bytes + HEADER.size) for n, c in plan.calls.items()),
        bytes_down=sum(c * received.get(n, stats[n].output_ciphertext_bytes + HEADER.size)
                       for n, c in plan.calls.items()),
        key_bytes_up=float(keys),
        security_bits=float(min(s.security_bits for s in stats.values())),
        p_error_per_query=1.0 - survive,
        sizes_measured=float(keys_measured and set(sent) == set(plan.calls)))
