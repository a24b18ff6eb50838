"""What the packed CKKS families share: a clear matrix ``W`` (``N x d``) and bias ``b`` on the
server, scored against the client's encrypted embedding ``x`` as ``W x + b``, ``n`` rows a
ciphertext (:mod:`ppazam_core.fhe.packed`), in every mode.

* ``embedding-head-packed``: ``W``, ``b`` a linear head over the tracks (one row a track);
* ``embedding-knn-packed``: ``W`` the embeddings of every track's reference segments, ``b = 0``
  (one row a segment; the client takes each track's best row).

A model folder holds ``embedding/`` (the client-side embedder), ``head.npz`` (``W``, ``b``),
``circuits/fhe/packed/`` (the packed circuit, see :mod:`ppazam_core.fhe.packed`) and
``model.json``. Modes (:meth:`PackedHead.logits`):

* ``fp32``: ``W x + b`` in floats;
* ``quant``: the same with CKKS's fixed-point encoding in the clear (weights on the grid of the
  prime ``q1``, the query and biases on that of the query's scale);
* ``fhe-disable``: the packed computation (diagonals, baby-step giant-step rotations, complex
  packing) on those clear values; it equals ``quant`` up to float64 rounding (~1e-14), which is
  what the bench's ``circuit_agreement`` of ``fhe-sim`` against it checks;
* ``fhe-sim``: ``quant`` plus the CKKS error measured at build (Gaussian, its standard deviation
  over every score of encrypted calibration queries; seeded by the query). It takes the product
  as one matrix product, not through the packed layout: 40 times faster at 1,000 tracks of 59
  references (0.3 against 13 ms a query segment on this 2-core machine);
* ``fhe``: truly encrypted, through the model's :class:`~ppazam_core.fhe.deployment.EncryptedChannel`.

The CKKS parameters are the ``[packed]`` table (:class:`PackedConfig`), shared by both families.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ppazam_core.artifacts import damaged, reading
from ppazam_core.config import ExperimentConfig, require
from ppazam_core.fhe.deployment import EncryptedChannel, client_key_dir
from ppazam_core.errors import ArtifactError
from ppazam_core.families.registry import Family, FamilyTable, get_family
from ppazam_core.families.store import FamilyModel, single_model_family
from ppazam_core.fhe.concrete import CircuitStats
from ppazam_core.fhe.packed import (HE_STANDARD_128, build_packed, diagonals, fixed_point, load_params, packed_scores,
                                    read_error, seal_context, weight_scale)
from ppazam_core.queries.features import FrontEndConfig
from ppazam_core.models.hear import at_segment, client_embedder, embedding_front_end
from ppazam_core.audio.library import Library
from ppazam_core.results.privacy import CallPlan
from ppazam_core.recognition import Mode
from ppazam_core.seeding import derive_seed

PACKED = "packed"  # the circuit's name
WEIGHTS_FILE = "head.npz"


@dataclass(frozen=True)
class PackedConfig:
    """The packed CKKS families: CKKS parameters of the packed head. ``moduli_bits``: the primes
    ``q0`` (the answer's modulus), ``q1`` (the weights' scale) and ``P`` (key switching); their
    total must fit the HomomorphicEncryption.org 128-bit table for ``ring`` (109 bits at 4,096,
    218 at 8,192, 438 at 16,384). ``query_scale_bits``: the query's scale, ``2^bits``; the scores
    must stay below ``2^(q0 - query_scale_bits - 1)``. ``calibration_queries``: rows encrypted
    at build to measure the CKKS error."""

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


def packed_bits(config: ExperimentConfig) -> int:
    """The bit width a packed family is reported at: the query's fixed-point scale."""
    return config.table(TABLE.name).query_scale_bits


def write_packed_head(folder: Path, W: np.ndarray, b: np.ndarray, config: ExperimentConfig, candidates: np.ndarray,
                      groups: np.ndarray | None = None) -> CircuitStats:
    """Write ``W``, ``b`` (``head.npz``) and their packed circuit (``circuits/fhe/packed/``) into
    the model folder being written, ``folder``: CKKS parameters from ``[packed]``, the error and
    sizes measured by encrypting a seeded choice of ``calibration_queries`` rows of
    ``candidates`` (embeddings like the queries'). ``groups``: see
    :func:`~ppazam_core.fhe.packed.build_packed`."""
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    np.savez(Path(folder) / WEIGHTS_FILE, W=W, b=b)
    packed = config.table(TABLE.name)
    rng = np.random.default_rng(derive_seed(config.fhe.seed, "calibration", PACKED))
    rows = np.sort(rng.choice(len(candidates), size=min(packed.calibration_queries, len(candidates)), replace=False))
    return build_packed(W, b, packed.ring, packed.moduli_bits, packed.query_scale_bits,
                        np.asarray(candidates, np.float64)[rows], Path(folder) / "circuits" / "fhe" / PACKED,
                        groups=groups)


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

    @property
    def rows(self) -> int:
        """Scores one query decrypts: the rows of ``W``."""
        return self.params.n_tracks

    def quantized(self) -> tuple[np.ndarray, np.ndarray]:
        """Weights and biases on CKKS's fixed-point grids: ``q1`` for the weights, the query's
        scale for the biases (added at the scores' scale after the rescale)."""
        return fixed_point(self.W, self.weight_scale), fixed_point(self.b, self.params.query_scale)

    def logits(self, X: np.ndarray, mode: Mode | str) -> np.ndarray:
        """Every row's score ``(n, rows)`` of embeddings ``X`` ``(n, d)``."""
        X = np.asarray(X, dtype=np.float64)
        mode = Mode(mode)
        if mode is Mode.FP32:
            return X @ self.W.T + self.b
        if mode is Mode.FHE:
            return np.asarray(self.channel.logits(PACKED, X), dtype=np.float64)
        Xq = fixed_point(X, self.params.query_scale)
        W, b = self.quantized()
        if mode is Mode.FHE_DISABLE:
            if self._layout is None:
                self._layout = diagonals(self.params, W, b)
            return packed_scores(self.params, *self._layout, Xq)
        scores = Xq @ W.T + b
        if mode is Mode.FHE_SIM:
            sigma = float(self.error["error_std"])
            for row, x in zip(scores, X):  # the error measured at build, seeded by the query
                seed = int.from_bytes(hashlib.blake2b(x.tobytes(), digest_size=8).digest(), "big")
                row += np.random.default_rng(seed).normal(0.0, sigma, size=row.shape)
        return scores


class PackedFamilyModel(FamilyModel):
    """A trained model of a packed family: its client-side embedder, its packed head and channel,
    and its call plan. Subclasses set ``family`` and turn :meth:`PackedHead.logits` into track
    scores (``scores``)."""

    modes = tuple(Mode)

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.head = PackedHead(self.folder)
        self.channel = self.head.channel
        self.embedder = client_embedder(at_segment(self.config, get_family(self.family).segment_s(self.config)),
                                        self.folder / "embedding")
        self.features = self.embedder.features

    def call_plan(self) -> CallPlan:
        """One packed call per segment, the same whatever the song (0 bits to the server); every
        row's score back to the client; the CKKS approximation's chance of changing the top-1."""
        calls = float(self.calls_per_query)
        return CallPlan({PACKED: calls}, 0.0, calls * self.head.rows,
                        p_error_per_call=float(self.head.error["p_top1_flip"]))


def packed_family(name: str, settings: Callable[[ExperimentConfig], dict],
                  train: Callable[[Library, ExperimentConfig, Path, Path, int | None, bool], None],
                  model: type[PackedFamilyModel], table: FamilyTable,
                  segment: Callable[[ExperimentConfig], float] | None = None, **spec: Any) -> Family:
    """Register the packed family ``name``: one store folder, the embedding front-end over its
    ``segment`` (default: ``[data] segment_s``), the bit width of the query's scale, and the
    other :class:`~ppazam_core.families.registry.Family` fields in ``spec`` (see
    :func:`~ppazam_core.families.store.single_model_family`)."""
    def front_end(config: ExperimentConfig) -> FrontEndConfig:
        return embedding_front_end(config if segment is None else at_segment(config, segment(config)))

    return single_model_family(name, settings, train, model, table=table, front_end=front_end, segment=segment,
                               bits=packed_bits, **spec)
