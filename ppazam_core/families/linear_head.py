"""An encrypted-evaluable linear classifier over client-side features, in every mode.

A Concrete ML ``LogisticRegression`` is fitted on clear-text feature vectors, compiled over a
calibration sample, and stored in an artifact folder::

    head.json           the fitted model (Concrete ML's own serialization)
    circuits/fhe/head/  client, server and simulator artifacts (see ppazam_core.fhe.concrete)

``fp32`` runs the float scikit-learn model, ``quant`` and ``fhe-disable`` the quantized model in
the clear (Concrete ML's ``fhe="disable"``: for a linear model the QAT-free quantized model is the
circuit), ``fhe-sim`` the stored simulator, ``fhe`` a client/server exchange of encrypted bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from concrete.ml.sklearn import LogisticRegression

from ppazam_core.config import FheConfig
from ppazam_core.fhe.deployment import EncryptedChannel, client_key_dir
from ppazam_core.errors import ArtifactError
from ppazam_core.families.store import FamilyModel
from ppazam_core.fhe.concrete import CircuitStats, SimulatedClassifier, compile_linear, load_concrete_model
from ppazam_core.results.privacy import CallPlan
from ppazam_core.recognition import Mode
from ppazam_core.seeding import derive_seed

HEAD_FILE = "head.json"
HEAD = "head"


CompileHead = Callable[[LogisticRegression, np.ndarray, int, FheConfig, Path], CircuitStats]


def fit_linear_head(X: np.ndarray, y: np.ndarray, n_classes: int, n_bits: int, C: float, max_iter: int,
                    calibration_rows: int, fhe: FheConfig, folder: Path,
                    compile_head: CompileHead = compile_linear) -> CircuitStats:
    """Fit ``LogisticRegression(n_bits)`` on ``X, y`` and compile it into ``folder`` with
    ``compile_head(model, calibration rows, n_classes, fhe, circuit folder)`` (default: Concrete
    ML's own circuit of the model)."""
    model = LogisticRegression(n_bits=n_bits, C=C, max_iter=max_iter)
    model.fit(np.asarray(X, dtype=np.float32), y)
    rng = np.random.default_rng(derive_seed(fhe.seed, "calibration", HEAD))
    calibration = X[np.sort(rng.choice(len(X), size=min(calibration_rows, len(X)), replace=False))]
    circuit = circuits_of(folder) / HEAD
    circuit.mkdir(parents=True)
    stats = compile_head(model, calibration, n_classes, fhe, circuit)
    (folder / HEAD_FILE).write_text(model.dumps())
    return stats


def circuits_of(folder: Path) -> Path:
    """The compiled head of a model folder (its client keys live outside it: ``client_key_dir``)."""
    return Path(folder) / "circuits" / "fhe"


class LinearHead:
    """The fitted head of a model folder, evaluable in every mode. An :class:`ArtifactError`
    when it is missing, a :class:`~ppazam_core.errors.DamagedArtifactError` when it cannot be read."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        if not (folder / HEAD_FILE).is_file():
            raise ArtifactError(f"{folder} holds no linear head ({HEAD_FILE} is missing)")
        self.model = load_concrete_model(folder / HEAD_FILE, "decision_function")
        self.circuits = circuits_of(folder)
        self.stats = CircuitStats.load(self.circuits / HEAD)
        self.channel = EncryptedChannel(self.circuits, client_key_dir(folder))
        self._simulated: SimulatedClassifier | None = None

    def logits(self, X: np.ndarray, mode: Mode | str) -> np.ndarray:
        """Decision values ``(n, n_classes)`` of feature rows ``X``."""
        X = np.asarray(X, dtype=np.float32)
        mode = Mode(mode)
        if mode is Mode.FP32:
            values = self.model.sklearn_model.decision_function(X)
        elif mode in (Mode.QUANT, Mode.FHE_DISABLE):
            values = self.model.decision_function(X, fhe="disable")
        elif mode is Mode.FHE_SIM:
            if self._simulated is None:
                self._simulated = SimulatedClassifier(self.circuits / HEAD)
            values = self._simulated.logits(X)
        else:
            values = self.channel.logits(HEAD, X)
        values = np.asarray(values, dtype=np.float64).reshape(len(X), -1)
        if values.shape[1] == 1:  # two tracks: one decision value, the second class's logit
            values = np.column_stack([np.zeros(len(X)), values[:, 0]])
        return values


class LinearHeadModel(FamilyModel):
    """A family whose server side is the encrypted linear head of its folder: every mode."""

    modes = tuple(Mode)
    head_class: type[LinearHead] = LinearHead

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.head = self.head_class(self.folder)
        self.channel = self.head.channel

    def call_plan(self) -> CallPlan:
        """One head call per window (:attr:`calls_per_query`); the same call whatever the song,
        and every track's decision value back to the client (:mod:`ppazam_core.results.privacy`)."""
        calls = float(self.calls_per_query)
        return CallPlan({HEAD: calls}, 0.0, calls * len(self.track_ids))
