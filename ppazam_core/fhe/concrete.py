"""Concrete ML compilation of the QAT classifiers, their costs, and FHE simulation.

Each QAT classifier is compiled with ``compile_brevitas_qat_model`` over a calibration set of
training patches; a linear head (Concrete ML ``LogisticRegression``) with its own ``compile``.
One compiled classifier is a folder::

    client/    client.zip (client specs + quantizers) and circuit.json   -> the user's device
    server/    server.zip (the compiled circuit, no secret) and circuit.json -> the server
    simulator.zip                                                         -> ``fhe-sim`` mode
    clear.json    the quantized model as compiled (Concrete ML serialization) -> ``fhe-disable`` mode

``circuit.json`` records what the circuit costs (PBS count, maximum integer bit width,
complexity, key and ciphertext sizes, compile time) and a ``circuit_id`` that client and
server use to check they speak about the same circuit. Folders are written atomically by the
caller and loaded without recompiling.

Every array handed to Concrete goes through :func:`fhe_input`: Concrete reads an input's buffer
in C order whatever its strides (concrete-ml 1.9.0 / concrete-python 2.10), so a transposed
array -- torchaudio's mel spectrogram is one -- is encrypted with its pixels scrambled and the
circuit answers at chance while Concrete ML's clear execution (which honours strides) is right.
"""

from __future__ import annotations

import atexit
import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import concrete.compiler
import numpy as np
import torch
from concrete import fhe
from concrete.ml.common.serialization.loaders import loads
from concrete.ml.deployment import FHEModelClient, FHEModelDev
from concrete.ml.torch.compile import compile_brevitas_qat_model

from ppazam_core.artifacts import damaged, read_json, reading
from ppazam_core.config import FheConfig
from ppazam_core.errors import ArtifactError, FheError

# concrete-python 2.10 registers an exit hook (concrete.compiler's terminate_df_parallelization)
# that ends the process with status 0 once a circuit has run: a failed bench, a REGRESSED gate or
# an uncaught error then exited 0 and CI stayed green. The dataflow runtime it stops is never
# started here (no parallelization options are passed), so the hook is taken off.
atexit.unregister(concrete.compiler._terminate_df_parallelization)

CIRCUIT_FILE = "circuit.json"
CLEAR_FILE = "clear.json"
KEY_LAYOUT_FILE = "key-layout.json"


@dataclass(frozen=True)
class CircuitStats:
    """What one compiled circuit costs; sizes in bytes. ``p_error`` is Concrete's probability
    that one table lookup is off; ``security_bits`` the security level its parameters were
    chosen for. ``bootstrap_key_bytes`` and ``keyswitch_key_bytes`` are Concrete's sizes of the
    evaluation keys as expanded in memory; ``serialized_key_bytes`` is what a client uploads (the
    serialized key set, compressed when the circuit was compiled with ``compress_evaluation_keys``:
    3 to 10 times smaller for the default and the test circuits)."""

    circuit_id: str
    input_shape: tuple[int, ...]
    n_classes: int
    pbs_count: int
    max_bit_width: int
    complexity: float
    p_error: float
    compile_s: float
    bootstrap_key_bytes: int
    keyswitch_key_bytes: int
    secret_key_bytes: int
    input_ciphertext_bytes: int
    output_ciphertext_bytes: int
    security_bits: int
    serialized_key_bytes: int

    @property
    def evaluation_key_bytes(self) -> int:
        return self.bootstrap_key_bytes + self.keyswitch_key_bytes

    @classmethod
    def of(cls, circuit: fhe.Circuit, input_shape: tuple[int, ...], n_classes: int, compile_s: float,
           serialized_key_bytes: int) -> "CircuitStats":
        """The costs of a compiled concrete-python ``circuit`` (read from Concrete), under a new id;
        ``serialized_key_bytes`` from its :class:`KeyLayout`."""
        return cls(
            circuit_id=uuid.uuid4().hex,
            input_shape=tuple(int(d) for d in input_shape),
            n_classes=int(n_classes),
            pbs_count=int(circuit.programmable_bootstrap_count),
            max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
            complexity=float(circuit.complexity),
            p_error=float(circuit.p_error),
            compile_s=round(compile_s, 3),
            bootstrap_key_bytes=int(circuit.size_of_bootstrap_keys),
            keyswitch_key_bytes=int(circuit.size_of_keyswitch_keys),
            secret_key_bytes=int(circuit.size_of_secret_keys),
            input_ciphertext_bytes=int(circuit.size_of_inputs),
            output_ciphertext_bytes=int(circuit.size_of_outputs),
            security_bits=int(circuit.configuration.security_level),
            serialized_key_bytes=int(serialized_key_bytes),
        )

    @classmethod
    def load(cls, folder: Path) -> "CircuitStats":
        """Read ``circuit.json`` of a client, server or compiled-classifier folder: an
        :class:`ArtifactError` when it is missing, a
        :class:`~ppazam_core.errors.DamagedArtifactError` when it cannot be read."""
        path = Path(folder) / CIRCUIT_FILE
        if not path.is_file():
            raise ArtifactError(f"{folder} holds no compiled circuit ({CIRCUIT_FILE} is missing)")
        data = read_json(path, "input_shape")
        with reading(path):
            return cls(**{**data, "input_shape": tuple(data["input_shape"])})

    def save(self, folder: Path) -> None:
        (Path(folder) / CIRCUIT_FILE).write_text(json.dumps(asdict(self), indent=2))


@dataclass(frozen=True)
class KeyLayout:
    """What every serialized evaluation-key set of one circuit has in common: its ``length`` in
    bytes and its ``fixed`` byte runs (offset, bytes): the Cap'n Proto headers and key
    descriptions (ids and parameters: LWE dimension, polynomial size, levels, base logs). Found by
    generating two key sets for the circuit's client specs and keeping the runs of whole
    :attr:`WORD`-byte words (Cap'n Proto's unit) that are equal in both: random key material
    repeats a word with probability 2^-64, while single equal bytes at a run's edge are chance
    (1 in 256 per edge) and would refuse a client's own keys.
    Concrete 2.10's ``ServerKeyset`` exposes no parameters to compare, and keys with parameters
    other than the circuit's pass its deserializer, then crash the process in the first bootstrap."""

    length: int
    fixed: tuple[tuple[int, bytes], ...]
    WORD = 8

    @classmethod
    def of(cls, client_specs: fhe.ClientSpecs) -> "KeyLayout":
        """The layout of ``client_specs``'s evaluation keys (two throwaway key generations:
        2 to 7 s for the default models' circuits, and twice the serialized key size in memory)."""
        first, second = (np.frombuffer(_fresh_evaluation_keys(client_specs), dtype=np.uint8) for _ in range(2))
        if len(first) != len(second):
            raise FheError(f"two key generations gave {len(first)} and {len(second)} bytes: no fixed layout")
        words = len(first) // cls.WORD
        same = (first[:words * cls.WORD] == second[:words * cls.WORD]).reshape(words, cls.WORD).all(axis=1)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], same, [False]]).astype(np.int8))) * cls.WORD
        return cls(len(first), tuple((int(a), first[a:b].tobytes()) for a, b in zip(edges[::2], edges[1::2])))

    def check(self, payload: bytes, circuit_id: str) -> None:
        """An :class:`FheError` unless ``payload`` (serialized evaluation keys) has this layout."""
        if len(payload) != self.length:
            raise FheError(f"evaluation keys for circuit {circuit_id} are {len(payload)} bytes, its keys are "
                           f"{self.length}: keys of another circuit or model, or damaged")
        for offset, expected in self.fixed:
            if payload[offset:offset + len(expected)] != expected:
                raise FheError(f"evaluation keys for circuit {circuit_id} differ from its key parameters in "
                               f"bytes {offset}-{offset + len(expected) - 1}: keys of another circuit or model, or damaged")

    def save(self, folder: Path) -> None:
        fixed = [[offset, run.hex()] for offset, run in self.fixed]
        (Path(folder) / KEY_LAYOUT_FILE).write_text(json.dumps({"length": self.length, "fixed": fixed}))

    @classmethod
    def load(cls, folder: Path) -> "KeyLayout":
        """Read ``key-layout.json`` of a server folder: an :class:`ArtifactError` when it is
        missing (circuits compiled before ppazam checked keys: compile them again), a
        :class:`~ppazam_core.errors.DamagedArtifactError` when it cannot be read."""
        path = Path(folder) / KEY_LAYOUT_FILE
        if not path.is_file():
            raise ArtifactError(f"{folder} has no {KEY_LAYOUT_FILE}; compile its circuits again")
        data = read_json(path, "length", "fixed")
        with reading(path):
            return cls(int(data["length"]), tuple((int(offset), bytes.fromhex(run)) for offset, run in data["fixed"]))


def _fresh_evaluation_keys(client_specs: fhe.ClientSpecs) -> bytes:
    client = fhe.Client(client_specs)
    client.keygen(force=True)
    return client.evaluation_keys.serialize()


def compile_classifier(model: torch.nn.Module, calibration: np.ndarray, n_classes: int, config: FheConfig,
                       folder: Path) -> CircuitStats:
    """Compile a QAT classifier on normalized ``calibration`` patches into ``folder`` (empty)."""
    started = time.perf_counter()
    module = compile_brevitas_qat_model(model.eval(), np.ascontiguousarray(calibration, dtype=np.float32),
                                        rounding_threshold_bits=config.rounding(), p_error=config.p_error)
    return save_compiled(module, calibration.shape[1:], n_classes, time.perf_counter() - started, folder)


def compile_linear(model: Any, calibration: np.ndarray, n_classes: int, config: FheConfig, folder: Path) -> CircuitStats:
    """Compile a fitted Concrete ML linear model (e.g. ``LogisticRegression``) on ``calibration``
    rows into ``folder`` (empty). Linear models need no rounding: their circuits hold no PBS."""
    started = time.perf_counter()
    model.compile(np.ascontiguousarray(calibration, dtype=np.float32), p_error=config.p_error)
    return save_compiled(model, calibration.shape[1:], n_classes, time.perf_counter() - started, folder)


def save_compiled(model: Any, input_shape: tuple[int, ...], n_classes: int, compile_s: float,
                  folder: Path) -> CircuitStats:
    """Record the costs of a compiled Concrete ML model and save its client, server (with its
    :class:`KeyLayout`) and simulator artifacts into ``folder``."""
    circuit = model.fhe_circuit
    layout = KeyLayout.of(circuit.client.specs)
    stats = CircuitStats.of(circuit, input_shape, n_classes, compile_s, layout.length)
    deployment = folder / "deployment"
    FHEModelDev(str(deployment), model).save(via_mlir=False)
    for side in ("client", "server"):
        (folder / side).mkdir()
        (deployment / f"{side}.zip").rename(folder / side / f"{side}.zip")
        stats.save(folder / side)
    layout.save(folder / "server")
    deployment.rmdir()
    circuit.simulator.save(folder / "simulator.zip", via_mlir=False)
    (folder / CLEAR_FILE).write_text(model.dumps())
    stats.save(folder)
    return stats


class SimulatedClassifier:
    """A compiled classifier run in FHE simulation: same integers and error model as the
    encrypted circuit, without encryption. An :class:`ArtifactError` when a file is missing, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when one cannot be read."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        self.stats = CircuitStats.load(folder)
        for part in ("client/client.zip", "simulator.zip"):
            if not (folder / part).is_file():
                raise ArtifactError(f"compiled classifier {folder} is missing {part}")
        with reading(folder / "client" / "client.zip") as client:
            self._quantizer = FHEModelClient(str(client.parent)).model
            self._client = fhe.Client.load(client, is_simulated=True)
        with reading(folder / "simulator.zip") as simulator:
            self._server = fhe.Server.load(simulator)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Dequantized outputs ``(n, n_classes)`` float32 for normalized inputs
        ``(n, *input_shape)``, one circuit run each. Raises :class:`FheError` on a wrong shape."""
        X = fhe_input(X, self.stats)
        rows = []
        for x in X:
            q_x = self._quantizer.quantize_input(x[None])
            q_y = self._client.simulate_decrypt(self._server.run(self._client.simulate_encrypt(q_x)))
            rows.append(self._quantizer.dequantize_output(np.asarray(q_y)))
        return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, self.stats.n_classes), np.float32)


class ClearCircuit:
    """A compiled classifier executed in the clear by Concrete ML (``fhe="disable"``): the
    integers the circuit computes, rounding included, without encryption or its error model.
    Its top-1 against :class:`SimulatedClassifier`'s is the circuit agreement. An
    :class:`ArtifactError` when a file is missing, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when one cannot be read."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        self.stats = CircuitStats.load(folder)
        if not (folder / CLEAR_FILE).is_file():
            raise ArtifactError(f"compiled classifier {folder} is missing {CLEAR_FILE} (compiled by an older "
                                "version); recompile it with --refresh")
        self._model = load_concrete_model(folder / CLEAR_FILE, "decision_function", "forward")

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Dequantized outputs ``(n, n_classes)`` float32 for normalized inputs ``(n, *input_shape)``."""
        X = fhe_input(X, self.stats)
        if hasattr(self._model, "decision_function"):  # a Concrete ML linear model
            values = self._model.decision_function(X, fhe="disable")
        else:  # a QuantizedModule
            values = self._model.forward(X, fhe="disable")
        return np.asarray(values, dtype=np.float32).reshape(len(X), -1)


def load_concrete_model(path: Path, *methods: str) -> Any:
    """A model saved with Concrete ML's ``dumps`` that has one of ``methods``; a
    :class:`~ppazam_core.errors.DamagedArtifactError` when ``path`` cannot be read as one."""
    with reading(path):
        model = loads(Path(path).read_text())
    if not any(hasattr(model, method) for method in methods):
        raise damaged(path, f"holds a {type(model).__name__}, not a Concrete ML model")
    return model


def fhe_input(X: np.ndarray, stats: CircuitStats) -> np.ndarray:
    """``X`` as a C-contiguous float32 array of the circuit's input shape ``(n, *input_shape)``,
    the only layout Concrete reads correctly (see the module docstring); an :class:`FheError`
    when the shape does not fit."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != len(stats.input_shape) + 1 or tuple(X.shape[1:]) != stats.input_shape:
        raise FheError(f"input of shape {tuple(X.shape)} does not fit the circuit, which takes "
                       f"(n, {', '.join(map(str, stats.input_shape))})")
    return np.ascontiguousarray(X)
