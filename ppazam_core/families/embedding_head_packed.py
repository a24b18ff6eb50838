"""``embedding-head-packed``: the ``embedding-head`` design with a packed RLWE answer. The client
embeds its query in the clear and encrypts it under CKKS; the server, holding the head's weights
in the clear, scores it against thousands of tracks per ciphertext (:mod:`ppazam_core.fhe_packed`):
the answer is ``ceil(N / n)`` ciphertexts for a ring of degree ``n`` (4,096 tracks each by
default), not one ciphertext per track.

The head is the ``embedding-head``'s float model: the same client-side embedder, the same
training segments, the same Concrete ML ``LogisticRegression`` (``[head]`` settings) fitted the
same way, whose scikit-learn model's ``coef_`` and ``intercept_`` the server holds. Modes:

* ``fp32``: ``W x + b`` in floats (the embedding-head's ``fp32`` scores);
* ``quant``: the same with CKKS's fixed-point encoding in the clear (weights on the grid of the
  prime ``q1``, the query and biases on that of the query's scale);
* ``fhe-disable``: the packed computation (diagonals, baby-step giant-step rotations, complex
  packing) on those clear values;
* ``fhe-sim``: ``fhe-disable`` plus the CKKS error measured at build (Gaussian, its standard
  deviation over every score of encrypted calibration queries; seeded by the query);
* ``fhe``: truly encrypted, through the model's :class:`~ppazam_core.deployment.EncryptedChannel`.

Artifacts: ``embedding/``, ``head.npz`` (``W``, ``b``), ``circuits/fhe/packed/`` (see
:mod:`ppazam_core.fhe_packed`) and ``model.json``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from concrete.ml.sklearn import LogisticRegression

from ppazam_core.artifacts import damaged, reading
from ppazam_core.config import ExperimentConfig, require
from ppazam_core.deployment import EncryptedChannel, client_key_dir
from ppazam_core.errors import ArtifactError
from ppazam_core.families.embedding_head import TABLE as HEAD_TABLE
from ppazam_core.families.registry import FamilyTable
from ppazam_core.families.store import FamilyModel, single_model_family, write_family
from ppazam_core.fhe_packed import (HE_STANDARD_128, build_packed, diagonals, fixed_point, load_params, packed_scores,
                                    read_error, seal_context, weight_scale)
from ppazam_core.hear import (client_embedder, embedding_front_end, embedding_settings, embedding_training_dataset,
                              trained_embedder)
from ppazam_core.library import Library
from ppazam_core.privacy import CallPlan
from ppazam_core.recognition import Mode, Scores, log_softmax
from ppazam_core.seeding import derive_seed

FAMILY = "embedding-head-packed"
PACKED = "packed"  # the circuit's name
WEIGHTS_FILE = "head.npz"


@dataclass(frozen=True)
class PackedConfig:
    """``embedding-head-packed``: CKKS parameters of the packed head. ``moduli_bits``: the primes
    ``q0`` (the answer's modulus), ``q1`` (the weights' scale) and ``P`` (key switching); their
    total must fit the HomomorphicEncryption.org 128-bit table for ``ring`` (109 bits at 4,096,
    218 at 8,192, 438 at 16,384). ``query_scale_bits``: the query's scale, ``2^bits``; the scores
    must stay below ``2^(q0 - query_scale_bits - 1)``. ``calibration_queries``: training rows
    encrypted at build to measure the CKKS error."""

    ring: int = 4096
    moduli_bits: tuple[int, ...] = (38, 28, 43)
    query_scale_bits: int = 30
    calibration_queries: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "moduli_bits", tuple(self.moduli_bits))
        require(self.ring in HE_STANDARD_128, "packed.ring", self.ring, f"one of {sorted(HE_STANDARD_128)}")
        require(len(self.moduli_bits) == 3 and all(isinstance(b, int) and 20 <= b <= 60 for b in self.moduli_bits),
                "packed.moduli_bits", list(self.moduli_bits), "three prime sizes of 20 to 60 bits: q0, q1, P")
        require(sum(self.moduli_bits) <= HE_STANDARD_128.get(self.ring, 0), "packed.moduli_bits",
                list(self.moduli_bits), f"at most {HE_STANDARD_128.get(self.ring)} bits in all for ring {self.ring} "
                "(128-bit security, HomomorphicEncryption.org standard)")
        require(isinstance(self.query_scale_bits, int) and 10 <= self.query_scale_bits <= self.moduli_bits[0] - 2,
                "packed.query_scale_bits", self.query_scale_bits, f"10 to {self.moduli_bits[0] - 2} (below q0's bits)")
        require(isinstance(self.calibration_queries, int) and self.calibration_queries >= 1,
                "packed.calibration_queries", self.calibration_queries, "an integer >= 1")


TABLE = FamilyTable("packed", PackedConfig)


def settings(config: ExperimentConfig) -> dict:
    """The parts of ``config`` the packed head depends on."""
    return {"data": config.data.train_spec(), **embedding_settings(config), "head": config.table(HEAD_TABLE.name),
            "packed": config.table(TABLE.name), "seed": config.fhe.seed}


def fit_head(X: np.ndarray, y: np.ndarray, n_classes: int, config: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """The embedding-head's float model (the same Concrete ML ``LogisticRegression`` fit) as
    weights ``(n_classes, d)`` and biases ``(n_classes,)``: decision values ``W x + b``."""
    head = config.table(HEAD_TABLE.name)
    model = LogisticRegression(n_bits=head.n_bits, C=head.C, max_iter=head.max_iter)
    model.fit(np.asarray(X, dtype=np.float32), y)
    coef = np.asarray(model.sklearn_model.coef_, dtype=np.float64)
    intercept = np.asarray(model.sklearn_model.intercept_, dtype=np.float64).reshape(-1)
    if coef.shape[0] == 1:  # two tracks: one decision value, the second class's logit
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    if coef.shape[0] != n_classes:
        raise ArtifactError(f"the head was fitted on {coef.shape[0]} classes; the library has {n_classes} tracks")
    return coef, intercept


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Fit the head over the training segments' embeddings into ``folder`` and build its packed
    circuit (keys, query and answer sizes and the CKKS error measured under a throwaway key)."""
    started = time.perf_counter()
    embedding, embedder = trained_embedder(library, config, cache_dir, workers, refresh)
    dataset = embedding_training_dataset(library, config, cache_dir, workers)
    embedded = embedder.embed_patches(dataset.X)
    timings = {"embedding_s": time.perf_counter() - started}
    with write_family(folder, FAMILY, library, config, timings, embedding=embedding) as tmp:
        started = time.perf_counter()
        W, b = fit_head(embedded, dataset.y, len(library), config)
        np.savez(tmp / WEIGHTS_FILE, W=W, b=b)
        timings["head_s"] = time.perf_counter() - started
        started = time.perf_counter()
        packed = config.table(TABLE.name)
        rng = np.random.default_rng(derive_seed(config.fhe.seed, "calibration", PACKED))
        rows = np.sort(rng.choice(len(embedded), size=min(packed.calibration_queries, len(embedded)), replace=False))
        build_packed(W, b, packed.ring, packed.moduli_bits, packed.query_scale_bits, embedded[rows],
                     tmp / "circuits" / "fhe" / PACKED)
        timings["packed_s"] = time.perf_counter() - started


class PackedHead:
    """The packed head of a model folder in every mode (see the module docstring). An
    :class:`ArtifactError` when a part is missing, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when one cannot be read."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        if not (folder / WEIGHTS_FILE).is_file():
            raise ArtifactError(f"{folder} holds no packed head ({WEIGHTS_FILE} is missing)")
        with reading(folder / WEIGHTS_FILE):
            with np.load(folder / WEIGHTS_FILE) as weights:
                self.W, self.b = np.asarray(weights["W"], np.float64), np.asarray(weights["b"], np.float64)
        self.circuits = folder / "circuits" / "fhe"
        self.params = load_params(self.circuits / PACKED)
        if self.W.shape != (self.params.n_tracks, self.params.dim):
            raise damaged(folder / WEIGHTS_FILE, f"weights {self.W.shape} do not fit the packed circuit's "
                                                 f"{self.params.n_tracks} x {self.params.dim}")
        self.error = read_error(self.circuits / PACKED)
        self.weight_scale = weight_scale(seal_context(self.params))
        self.channel = EncryptedChannel(self.circuits, client_key_dir(folder))
        self._layout: tuple[np.ndarray, np.ndarray] | None = None

    def quantized(self) -> tuple[np.ndarray, np.ndarray]:
        """Weights and biases on CKKS's fixed-point grids: ``q1`` for the weights, the query's
        scale for the biases (added at the scores' scale after the rescale)."""
        return fixed_point(self.W, self.weight_scale), fixed_point(self.b, self.params.query_scale)

    def logits(self, X: np.ndarray, mode: Mode | str) -> np.ndarray:
        """Every track's score ``(n, n_tracks)`` of embeddings ``X`` ``(n, d)``."""
        X = np.asarray(X, dtype=np.float64)
        mode = Mode(mode)
        if mode is Mode.FP32:
            return X @ self.W.T + self.b
        if mode is Mode.FHE:
            return np.asarray(self.channel.logits(PACKED, X), dtype=np.float64)
        Xq = fixed_point(X, self.params.query_scale)
        W, b = self.quantized()
        if mode is Mode.QUANT:
            return Xq @ W.T + b
        if self._layout is None:
            self._layout = diagonals(self.params, W, b)
        scores = np.stack([packed_scores(self.params, *self._layout, x) for x in Xq]) if len(Xq) else \
            np.zeros((0, self.params.n_tracks))
        if mode is Mode.FHE_SIM:
            sigma = float(self.error["error_std"])
            for row, x in zip(scores, X):  # the error measured at build, seeded by the query
                seed = int.from_bytes(hashlib.blake2b(x.tobytes(), digest_size=8).digest(), "big")
                row += np.random.default_rng(seed).normal(0.0, sigma, size=row.shape)
        return scores


class EmbeddingHeadPacked(FamilyModel):
    """A trained ``embedding-head-packed`` model."""

    family = FAMILY
    modes = tuple(Mode)

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.head = PackedHead(self.folder)
        self.channel = self.head.channel
        self.embedder = client_embedder(self.config, self.folder / "embedding")
        self.features = self.embedder.features

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        log_probs = log_softmax(self.head.logits(self.embedder.embed_patches(patches), mode))
        return Scores(log_probs, np.exp(log_probs.max(axis=1)))

    def call_plan(self) -> CallPlan:
        """One packed call per segment, the same whatever the song (0 bits to the server); every
        track's score back to the client; the CKKS approximation's chance of changing the top-1."""
        calls = float(self.calls_per_query)
        return CallPlan({PACKED: calls}, 0.0, calls * len(self.track_ids),
                        p_error_per_call=float(self.head.error["p_top1_flip"]))


SPEC = single_model_family(FAMILY, settings, train, EmbeddingHeadPacked, table=TABLE, front_end=embedding_front_end,
                           bits=lambda config: config.table(TABLE.name).query_scale_bits)
