"""A packed RLWE backend: CKKS (Microsoft SEAL through TenSEAL's ``sealapi``) scoring one
encrypted query against thousands of tracks per ciphertext.

The client encrypts its embedding ``x`` (``d`` values, zero-padded to ``D``, a power of two),
replicated across the ciphertext's slots. The server holds the track vectors ``W`` (``N x d``)
and biases ``b`` in the clear and computes every score ``W x + b`` with the diagonal method and
baby-step giant-step (BSGS) rotations (Halevi-Shoup; Juvekar et al. 2018)::

    y = sum_g rot( sum_b diag'_{gB+b} * rot(x, b), gB ),   diag'_{gB+b} = diag_{gB+b} rotated by -gB

``diag_k[i] = W[i, (i + k) mod D]``; the query is periodic (period ``D``), so ``rot(x, k)[i] =
x[(i + k) mod D]`` and ``y[i] = W[i] . x``. One ciphertext of a ring of degree ``n`` has ``n/2``
complex slots; the real parts carry the first ``n/2`` tracks of a shard and the imaginary parts
the next ``n/2`` (the query is real, so ``(A + iB) x = Ax + i Bx``): **a shard is ``n`` tracks**,
and the answer is ``ceil(N / n)`` ciphertexts. Per query the server makes ``B - 1`` rotations of
the query (shared by every shard), ``G - 1`` rotations per shard, ``D`` plaintext products per
shard, one rescale per shard (down to the smallest modulus, ``q0``: the answer is sent at the
last level), and one plaintext addition (the bias). ``B`` and ``G = D / B`` minimize the
rotations for the number of shards (:func:`bsgs_split`). SEAL's Python API offers no hoisted
rotations: each rotation is one full key switch; with BSGS they are ``O(sqrt D)`` per shard.

Parameters (:class:`PackedParams`): ring degree ``n``, the coefficient modulus ``q0 * q1 * P``
(``q0``: the answer's modulus, ``q1``: the plaintext weights' scale, consumed by the rescale;
``P``: the special prime of key switching) and the query's scale ``2^query_scale_bits``. The
total modulus must fit the HomomorphicEncryption.org standard's table for 128-bit classical
security with a ternary secret (:data:`HE_STANDARD_128`); SEAL checks it again when it builds
the context.

Wire payloads (inside the frames of :mod:`ppazam_core.fhe.deployment`): keys are SEAL's serialized
``GaloisKeys`` (seeded, compressed) for exactly the rotations the server needs; a query is one
SEAL ciphertext encrypted with the secret key (symmetric: half of it is a seed); a result is
``count`` (4 bytes) then per shard ``length`` (8 bytes) and a SEAL ciphertext. The server loads
every SEAL object against its own context (SEAL checks parameters and that every coefficient is
reduced), then checks level, size, scale and the rotation keys it needs; anything else is an
:class:`~ppazam_core.errors.FheError` (a 400 over HTTP). The secret key never leaves the client
folder of :func:`~ppazam_core.fhe.deployment.client_key_dir`.

A compiled packed head is a circuit folder like Concrete's (``client/``, ``server/``,
``circuit.json``) so that the channel, the server bundle and ``ppazam serve`` treat it alike:
``client/client.zip`` holds only ``packed.json`` (the parameters), ``server/server.zip`` also
the weights (``weights.npz``), ``server/key-layout.json`` the largest key body accepted, and
``error.json`` the CKKS approximation error measured at build (used by ``fhe-sim``), with the
versions of TenSEAL and zstandard that built it.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ppazam_core.artifacts import damaged, read_json, reading
from ppazam_core.fhe.wire import (HEADER, KEYS, PACKED_MEMBER, QUERY, RESULT, checked_key_file, frame,
                                  private_file, unframe, write_key_digest)
from ppazam_core.errors import ArtifactError, ConfigError, DamagedArtifactError, FheError
from ppazam_core.fhe.concrete import CircuitStats, KeyLayout
from ppazam_core.store import atomic_folder, is_complete


class _Seal:
    """``tenseal.sealapi``, imported at first use: a process that never scores a packed head
    (every Concrete family, the whole server of a Concrete bundle) never loads SEAL's native
    library beside Concrete's."""

    def __getattr__(self, name: str) -> Any:
        import tenseal.sealapi

        return getattr(tenseal.sealapi, name)


seal = _Seal()

# HomomorphicEncryption.org security standard (Albrecht et al. 2018), Table 1: the largest
# log2 of the coefficient modulus for 128-bit classical security, ternary (uniform) secret
HE_STANDARD_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
SECURITY_BITS = 128
WEIGHTS_MEMBER = "weights.npz"
ERROR_FILE = "error.json"
SECRET_KEY_FILE = "secret.key"
SCORE_MARGIN = 2.0  # scores are bounded for inputs up to twice the calibration rows' norm (unit embeddings: 2)
KEY_CAP_SLACK = 1.25  # a key body may be this much larger than the one measured at build (compression varies)
SHARD = struct.Struct(">Q")
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, version major, minor, compression mode, reserved, size
SEAL_MAGIC = 0xA15E
COMPR_NONE, COMPR_ZSTD = 0, 2
SEAL_SLACK = 64 * 1024  # bytes of metadata beside a SEAL object's coefficients, at most
COUNT = struct.Struct(">I")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackedParams:
    """The scheme's parameters and the packing of one head: ``dim`` inputs (padded to
    :attr:`padded_dim`), ``n_tracks`` scores, ``baby`` x ``giant`` BSGS steps."""

    ring: int
    moduli_bits: tuple[int, ...]  # q0 (answer), q1 (weights' scale), P (special prime)
    query_scale_bits: int
    dim: int
    n_tracks: int
    baby: int
    giant: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "moduli_bits", tuple(int(b) for b in self.moduli_bits))
        check_security(self.ring, self.moduli_bits)
        if len(self.moduli_bits) != 3:
            raise ConfigError.bad_value("packed moduli", self.moduli_bits, "three prime sizes: q0, q1, P")
        if self.padded_dim > self.slots:
            raise ConfigError.bad_value("packed input dimension", self.dim, f"at most {self.slots} for ring {self.ring}")
        if self.baby * self.giant != self.padded_dim:
            raise ConfigError.bad_value("packed baby x giant steps", (self.baby, self.giant), f"a split of {self.padded_dim}")
        if self.query_scale_bits + 2 > self.moduli_bits[0]:
            raise ConfigError.bad_value("packed query_scale_bits", self.query_scale_bits,
                                        f"below q0's {self.moduli_bits[0]} bits (scores need headroom)")

    @property
    def slots(self) -> int:
        return self.ring // 2

    @property
    def per_ciphertext(self) -> int:
        """Scores one ciphertext carries: real and imaginary parts of every slot."""
        return self.ring

    @property
    def shards(self) -> int:
        return max(1, math.ceil(self.n_tracks / self.per_ciphertext))

    @property
    def padded_dim(self) -> int:
        return 1 << max(0, math.ceil(math.log2(max(self.dim, 1))))

    @property
    def query_scale(self) -> float:
        return float(2 ** self.query_scale_bits)

    def steps(self) -> list[int]:
        """The rotations the server makes: baby steps ``1..B-1`` and giant steps ``B, 2B, ...``."""
        return sorted(set(range(1, self.baby)) | {g * self.baby for g in range(1, self.giant)})

    def galois_elements(self) -> list[int]:
        """SEAL's Galois element of each step (a left rotation by ``k``: ``3^k mod 2n``)."""
        return [pow(3, k, 2 * self.ring) for k in self.steps()]

    def ciphertext_bytes(self, primes: int, parts: int = 2) -> int:
        """Coefficient bytes of a ciphertext of ``parts`` polynomials over ``primes`` primes."""
        return parts * primes * self.ring * 8

    def key_limit(self) -> int:
        """The most bytes the server's Galois keys take inflated: per step, one key-switching
        ciphertext over every prime per data prime, plus metadata."""
        data_primes = len(self.moduli_bits) - 1
        return len(self.steps()) * data_primes * self.ciphertext_bytes(len(self.moduli_bits)) + SEAL_SLACK

    def rotations_per_query(self) -> int:
        return (self.baby - 1) + self.shards * (self.giant - 1)

    def to_json(self) -> dict:
        return {**asdict(self), "moduli_bits": list(self.moduli_bits)}

    @classmethod
    def from_json(cls, data: dict) -> "PackedParams":
        return cls(**{**data, "moduli_bits": tuple(data["moduli_bits"])})


def check_security(ring: int, moduli_bits: tuple[int, ...]) -> int:
    """The security level (bits) of ring degree ``ring`` with primes of ``moduli_bits``: 128 when
    their total fits the HomomorphicEncryption.org table, else a :class:`ConfigError`."""
    if ring not in HE_STANDARD_128:
        raise ConfigError.bad_value("packed ring", ring, sorted(HE_STANDARD_128))
    if sum(moduli_bits) > HE_STANDARD_128[ring]:
        raise ConfigError.bad_value("packed moduli bits", list(moduli_bits),
                                    f"at most {HE_STANDARD_128[ring]} bits in all for ring {ring} "
                                    "(128-bit security, HomomorphicEncryption.org standard)")
    return SECURITY_BITS


def bsgs_split(dim: int, shards: int) -> tuple[int, int]:
    """Baby and giant steps ``(B, G)``, powers of two with ``B * G = dim``, minimizing the
    rotations of a query over ``shards`` shards: ``(B - 1) + shards * (G - 1)``."""
    splits = [(1 << e, dim >> e) for e in range(int(math.log2(dim)) + 1)]
    return min(splits, key=lambda s: ((s[0] - 1) + shards * (s[1] - 1), -s[0]))


def plan(dim: int, n_tracks: int, ring: int, moduli_bits: tuple[int, ...], query_scale_bits: int) -> PackedParams:
    """The parameters of a head of ``n_tracks`` x ``dim`` under a ring of degree ``ring``."""
    padded = 1 << max(0, math.ceil(math.log2(max(dim, 1))))
    shards = max(1, math.ceil(n_tracks / ring))
    baby, giant = bsgs_split(padded, shards)
    return PackedParams(ring, tuple(moduli_bits), query_scale_bits, dim, n_tracks, baby, giant)


# --- the packed layout, in numpy (fp32/quant/fhe-disable/fhe-sim and the server's plaintexts) ---


def rotate(v: np.ndarray, steps: int) -> np.ndarray:
    """SEAL's ``rotate_vector``: ``out[i] = v[(i + steps) mod slots]`` (last axis)."""
    return np.roll(v, -steps, axis=-1)


def padded_weights(params: PackedParams, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``W`` zero-padded to ``(shards * n, D)`` and ``b`` to ``shards * n``."""
    rows = params.shards * params.per_ciphertext
    Wp = np.zeros((rows, params.padded_dim))
    Wp[: W.shape[0], : W.shape[1]] = W
    bp = np.zeros(rows)
    bp[: b.shape[0]] = b
    return Wp, bp


def diagonals(params: PackedParams, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The server's plaintext vectors: per shard, the ``D`` complex diagonals, each pre-rotated by
    minus its giant step, ``(shards, D, slots)``, and the complex biases ``(shards, slots)``."""
    Wp, bp = padded_weights(params, W, b)
    n, slots, D = params.per_ciphertext, params.slots, params.padded_dim
    rows = np.arange(slots)
    out = np.empty((params.shards, D, slots), dtype=np.complex128)
    for shard in range(params.shards):
        real, imag = Wp[shard * n : shard * n + slots], Wp[shard * n + slots : (shard + 1) * n]
        for k in range(D):
            diag = real[rows, (rows + k) % D] + 1j * imag[rows, (rows + k) % D]
            out[shard, k] = rotate(diag, -(k // params.baby) * params.baby)
    bias = bp.reshape(params.shards, 2, slots)
    return out, bias[:, 0] + 1j * bias[:, 1]


def replicated(params: PackedParams, x: np.ndarray) -> np.ndarray:
    """The query's slots: ``x`` ``(d,)`` (or each row of ``(n, d)``) zero-padded to ``D`` and
    repeated ``slots / D`` times: ``(slots,)`` (or ``(n, slots)``)."""
    x = np.asarray(x)
    xp = np.zeros(x.shape[:-1] + (params.padded_dim,))
    xp[..., : x.shape[-1]] = x
    return np.tile(xp, params.slots // params.padded_dim)


def packed_scores(params: PackedParams, diags: np.ndarray, bias: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The server's BSGS computation on clear slots, for the queries ``X`` ``(n, d)`` at once
    (or one ``(d,)``): every track's score ``(n, n_tracks)`` (or ``(n_tracks,)``). Each query's
    arithmetic is the same, operation for operation, as for that query alone."""
    X = np.asarray(X)
    single = X.ndim == 1
    q = replicated(params, np.atleast_2d(X))
    babies = [rotate(q, b) for b in range(params.baby)]
    scores = np.empty((len(q), params.shards, 2, params.slots))
    for shard in range(params.shards):
        y = np.zeros(q.shape, dtype=np.complex128)
        for g in range(params.giant):
            inner = sum(diags[shard, g * params.baby + b] * babies[b] for b in range(params.baby))
            y += rotate(inner, g * params.baby)
        y += bias[shard]
        scores[:, shard, 0], scores[:, shard, 1] = y.real, y.imag
    scores = scores.reshape(len(q), -1)[:, : params.n_tracks]
    return scores[0] if single else scores


def best_per_group(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The best score of each group of rows: ``scores`` ``(..., rows)``, ``groups`` ``(rows,)``
    the group of each row (non-decreasing, every group from 0 present: see
    :func:`check_groups`); ``(..., n_groups)``. A private kNN's track scores: each track's best
    reference segment."""
    groups = np.asarray(groups)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.maximum.reduceat(np.asarray(scores), starts, axis=-1)


def check_groups(groups: np.ndarray, rows: int, n_groups: int | None = None) -> str | None:
    """Why ``groups`` cannot group ``rows`` rows into (``n_groups``) contiguous groups numbered
    from 0 in order, or ``None`` when it can."""
    groups = np.asarray(groups)
    if groups.shape != (rows,) or rows == 0 or not np.issubdtype(groups.dtype, np.integer):
        return f"{groups.shape} {groups.dtype} group labels for {rows} rows"
    steps = np.diff(groups)
    if groups[0] != 0 or np.any((steps != 0) & (steps != 1)):
        return "group labels are not contiguous runs numbered 0, 1, 2, ..."
    if n_groups is not None and int(groups[-1]) + 1 != n_groups:
        return f"{int(groups[-1]) + 1} groups, expected {n_groups}"
    return None


def fixed_point(values: np.ndarray, scale: float) -> np.ndarray:
    """``values`` on the grid of ``1 / scale``: CKKS's fixed-point encoding, in the clear."""
    return np.round(np.asarray(values, dtype=np.float64) * scale) / scale


# --- SEAL plumbing ---


def seal_context(params: PackedParams) -> seal.SEALContext:
    """SEAL's CKKS context of ``params`` (checked by SEAL for 128-bit security too)."""
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.ring)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(params.ring, list(params.moduli_bits)))
    context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not context.parameters_set():
        raise ConfigError.bad_value("packed parameters", params.to_json(), context.parameters_error_message())
    return context


def weight_scale(context: seal.SEALContext) -> float:
    """The weights' scale: the prime ``q1`` the rescale divides by, so the scores come back at
    exactly the query's scale."""
    return float(context.first_context_data().parms().coeff_modulus()[1].value())


def to_bytes(obj: Any) -> bytes:
    """SEAL's serialization of ``obj`` (its Python API saves to files only)."""
    with tempfile.TemporaryDirectory(prefix="ppazam-seal-") as tmp:
        path = os.path.join(tmp, "blob")
        obj.save(path)
        with open(path, "rb") as handle:
            return handle.read()


def inflated(payload: bytes, limit: int, what: str) -> bytes:
    """``payload`` (a serialized SEAL object) with its body decompressed, at most ``limit`` bytes
    of it, and its header saying so: SEAL's own loader inflates a zstd body without bound, so a
    few MB of crafted zstd could make it allocate tens of GB. An :class:`FheError` for a payload
    that is not a SEAL object, not compressed with zstd (or not at all), or larger than ``limit``."""
    if len(payload) < SEAL_HEADER.size:
        raise FheError(f"{what} is {len(payload)} bytes: too short for a SEAL object")
    magic, header_size, _, _, mode, _, size = SEAL_HEADER.unpack_from(payload)
    if magic != SEAL_MAGIC or header_size != SEAL_HEADER.size or size != len(payload):
        raise FheError(f"{what} is not a serialized SEAL object (bad header)")
    if mode == COMPR_NONE:
        body = payload[SEAL_HEADER.size :]
    elif mode == COMPR_ZSTD:
        try:
            import zstandard  # at first use, as SEAL: Concrete-only processes load neither

            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload[SEAL_HEADER.size :])) as reader:
                body = reader.read(limit + 1)
        except zstandard.ZstdError as e:
            raise FheError(f"{what}: its compressed body cannot be read ({e})") from e
    else:
        raise FheError(f"{what}: compression mode {mode} is not accepted (zstd or none)")
    if len(body) > limit:
        raise FheError(f"{what} holds more than the {limit} bytes this circuit's data can take")
    return payload[:5] + bytes([COMPR_NONE]) + payload[6:8] + struct.pack("<Q", SEAL_HEADER.size + len(body)) + body


def from_bytes(kind: type, context: seal.SEALContext, payload: bytes, what: str, limit: int) -> Any:
    """A SEAL object of ``kind`` read from ``payload`` (at most ``limit`` bytes once inflated, see
    :func:`inflated`) against ``context`` (SEAL refuses other parameters, sizes that do not fit
    them and unreduced coefficients); an :class:`FheError` when it cannot be read."""
    payload = inflated(payload, limit, what)
    obj = kind()
    with tempfile.TemporaryDirectory(prefix="ppazam-seal-") as tmp:
        path = os.path.join(tmp, "blob")
        with open(path, "wb") as handle:
            handle.write(payload)
        try:
            obj.load(context, path)
        except (RuntimeError, ValueError, TypeError, MemoryError) as e:
            raise FheError(f"{what} cannot be read as CKKS data of this circuit's parameters: {e}") from e
    return obj


def _read_archive(path: Path) -> dict[str, bytes]:
    with reading(path):
        with zipfile.ZipFile(path) as z:
            return {name: z.read(name) for name in z.namelist()}


def _read_params(members: dict[str, bytes], path: Path) -> PackedParams:
    if PACKED_MEMBER not in members:
        raise damaged(path, f"it holds no {PACKED_MEMBER}")
    with reading(path):
        return PackedParams.from_json(json.loads(members[PACKED_MEMBER]))


# --- the server ---


class PackedServer:
    """The server side of one packed head (the interface of
    :class:`~ppazam_core.fhe.deployment.ClassifierServer`): the weights' plaintexts encoded once,
    clients' Galois keys checked, queries evaluated. Keeps no keys. An :class:`ArtifactError`
    when ``server.zip`` is missing, a :class:`DamagedArtifactError` when it cannot be read."""

    def __init__(self, server_dir: Path) -> None:
        server_dir = Path(server_dir)
        if not (server_dir / "server.zip").is_file():
            raise ArtifactError(f"server folder {server_dir} is missing server.zip")
        self.stats = CircuitStats.load(server_dir)
        members = _read_archive(server_dir / "server.zip")
        self.params = _read_params(members, server_dir / "server.zip")
        if WEIGHTS_MEMBER not in members:
            raise damaged(server_dir / "server.zip", f"it holds no {WEIGHTS_MEMBER}")
        with reading(server_dir / "server.zip"):
            with np.load(io.BytesIO(members[WEIGHTS_MEMBER])) as weights:
                W, b = np.asarray(weights["W"], np.float64), np.asarray(weights["b"], np.float64)
        if W.shape != (self.params.n_tracks, self.params.dim) or b.shape != (self.params.n_tracks,):
            raise damaged(server_dir / "server.zip", f"weights {W.shape} and biases {b.shape} do not fit "
                                                     f"{self.params.n_tracks} tracks of {self.params.dim}")
        self.key_layout = KeyLayout.load(server_dir)  # only its length: the largest key body accepted
        self.run_lock = threading.RLock()
        self.context = seal_context(self.params)
        self.evaluator = seal.Evaluator(self.context)
        self.encoder = seal.CKKSEncoder(self.context)
        self._weights = (W, b)
        self._plaintexts: tuple[list[list[seal.Plaintext | None]], list[np.ndarray]] | None = None

    def _encoded(self) -> tuple[list[list[seal.Plaintext | None]], list[np.ndarray]]:
        """The diagonals encoded at the query's level and the weights' scale (once, on first use)."""
        with self.run_lock:
            if self._plaintexts is None:
                diags, bias = diagonals(self.params, *self._weights)
                first, scale = self.context.first_parms_id(), weight_scale(self.context)
                # an all-zero diagonal (a small library, padded dimensions) is skipped: its product
                # would be a transparent ciphertext, which SEAL refuses
                plain = [[self._encode(diag, first, scale) if np.any(diag) else None for diag in shard]
                         for shard in diags]
                self._plaintexts = (plain, list(bias))
            return self._plaintexts

    def _encode(self, values: np.ndarray, parms_id: list[int], scale: float) -> seal.Plaintext:
        plaintext = seal.Plaintext()
        self.encoder.encode(values.tolist(), parms_id, scale, plaintext)
        return plaintext

    def prepare(self) -> None:
        """Encode the weights now rather than at the first query."""
        self._encoded()

    def read_keys(self, message: bytes) -> seal.GaloisKeys:
        """A client's framed Galois keys; an :class:`FheError` for a wrong frame, a body longer
        than this circuit's keys can be, keys SEAL refuses for these parameters, or keys that
        lack a rotation the server needs."""
        payload = unframe(message, KEYS, self.stats.circuit_id)
        if len(payload) > self.key_layout.length:
            raise FheError(f"evaluation keys for circuit {self.stats.circuit_id} are {len(payload)} bytes, more than "
                           f"its rotation keys can be ({self.key_layout.length})")
        keys = from_bytes(seal.GaloisKeys, self.context, payload, f"evaluation keys for circuit {self.stats.circuit_id}",
                          self.params.key_limit())
        if keys.parms_id() != self.context.key_parms_id():
            raise FheError(f"evaluation keys for circuit {self.stats.circuit_id} are not at its key level")
        missing = [k for k, elt in zip(self.params.steps(), self.params.galois_elements()) if not keys.has_key(elt)]
        if missing:
            raise FheError(f"evaluation keys for circuit {self.stats.circuit_id} lack the rotations {missing[:5]}")
        return keys

    def read_query(self, payload: bytes) -> seal.Ciphertext:
        """The query ciphertext of a payload, checked: this circuit's parameters at their first
        level, two polynomials in NTT form, the query's scale."""
        what = f"query for circuit {self.stats.circuit_id}"
        query = from_bytes(seal.Ciphertext, self.context, payload, what,
                           self.params.ciphertext_bytes(len(self.params.moduli_bits) - 1) + SEAL_SLACK)
        if query.parms_id() != self.context.first_parms_id():
            raise FheError(f"{what} is not at the first level of its modulus chain")
        if query.size() != 2 or not query.is_ntt_form():
            raise FheError(f"{what} is not a fresh two-part ciphertext in NTT form (size {query.size()})")
        if query.scale != self.params.query_scale:
            raise FheError(f"{what} has scale {query.scale:g}, the circuit expects {self.params.query_scale:g}")
        return query

    def run(self, message: bytes, keys: seal.GaloisKeys | None) -> bytes:
        """Every track's score of one framed encrypted query with a client's ``keys``: the framed
        result (one ciphertext per shard). An :class:`FheError` without keys or for a wrong query."""
        if keys is None:
            raise FheError(f"no evaluation keys received for circuit {self.stats.circuit_id}; send them first")
        payload = unframe(message, QUERY, self.stats.circuit_id)
        with self.run_lock:
            query = self.read_query(payload)
            try:
                shards = self.evaluate(query, keys)
            except (RuntimeError, ValueError) as e:
                raise FheError(f"query for circuit {self.stats.circuit_id} cannot be evaluated: {e}") from e
            blobs = [to_bytes(c) for c in shards]
        body = COUNT.pack(len(blobs)) + b"".join(SHARD.pack(len(blob)) + blob for blob in blobs)
        return frame(RESULT, self.stats.circuit_id, body)

    def evaluate(self, query: seal.Ciphertext, keys: seal.GaloisKeys) -> list[seal.Ciphertext]:
        """The BSGS diagonal product (see the module docstring), one ciphertext per shard at the
        smallest modulus."""
        plain, bias = self._encoded()
        p, ev = self.params, self.evaluator
        babies = [query]
        for b in range(1, p.baby):
            rotated = seal.Ciphertext()
            ev.rotate_vector(query, b, keys, rotated)
            babies.append(rotated)
        answers = []
        for shard in range(p.shards):
            total = None
            for g in range(p.giant):
                inner = None
                for b in range(p.baby):
                    if plain[shard][g * p.baby + b] is None:
                        continue
                    product = seal.Ciphertext()
                    ev.multiply_plain(babies[b], plain[shard][g * p.baby + b], product)
                    if inner is None:
                        inner = product
                    else:
                        ev.add_inplace(inner, product)
                if inner is None:
                    continue
                if g:
                    ev.rotate_vector_inplace(inner, g * p.baby, keys)
                if total is None:
                    total = inner
                else:
                    ev.add_inplace(total, inner)
            if total is None:
                raise FheError(f"shard {shard} of circuit {self.stats.circuit_id} has only zero weights")
            ev.rescale_to_next_inplace(total)  # down to q0, the smallest modulus: the answer's size
            ev.add_plain_inplace(total, self._encode(bias[shard], total.parms_id(), total.scale))
            answers.append(total)
        return answers


# --- the client ---


class PackedClient:
    """The user's side of one packed head (the interface of
    :class:`~ppazam_core.fhe.deployment.ClassifierClient`): its secret key (in ``key_dir/<circuit
    id>/``, 0600 in a 0700 folder, checked by SHA-256), Galois keys, encryption and decryption.
    An :class:`ArtifactError` when ``client.zip`` is missing."""

    def __init__(self, client_dir: Path, key_dir: Path) -> None:
        client_dir = Path(client_dir)
        if not (client_dir / "client.zip").is_file():
            raise ArtifactError(f"client folder {client_dir} is missing client.zip")
        self.stats = CircuitStats.load(client_dir)
        self.params = _read_params(_read_archive(client_dir / "client.zip"), client_dir / "client.zip")
        self.key_dir = Path(key_dir) / self.stats.circuit_id
        self.context = seal_context(self.params)
        self.encoder = seal.CKKSEncoder(self.context)
        self.secret_key: seal.SecretKey | None = None
        self._galois: bytes | None = None

    def ensure_keys(self) -> tuple[float, bool]:
        """Load this client's secret key, or generate and store it (anew, with a warning, when the
        stored one is damaged). Returns the seconds it took and whether it was generated."""
        started = time.perf_counter()
        if self.secret_key is not None:
            return time.perf_counter() - started, False
        stored = self._stored_key()
        if stored is not None:
            self.secret_key = stored
            return time.perf_counter() - started, False
        self.secret_key = seal.KeyGenerator(self.context).secret_key()
        try:
            self.key_dir.parent.mkdir(mode=0o700, parents=True)
            os.chmod(self.key_dir.parent, 0o700)
        except FileExistsError:
            pass
        with atomic_folder(self.key_dir) as tmp:
            with private_file(tmp / SECRET_KEY_FILE):
                self.secret_key.save(str(tmp / SECRET_KEY_FILE))
            write_key_digest(tmp, SECRET_KEY_FILE)
        return time.perf_counter() - started, True

    def _stored_key(self) -> seal.SecretKey | None:
        if not is_complete(self.key_dir):
            return None
        try:
            path = checked_key_file(self.key_dir, SECRET_KEY_FILE)
            with reading(path):
                key = seal.SecretKey()
                try:
                    key.load(self.context, str(path))
                except (RuntimeError, ValueError) as e:
                    raise damaged(path, f"SEAL cannot read it: {e}") from e
                return key
        except DamagedArtifactError as e:
            logger.warning("client key %s is damaged (%s); generating a new one", e.path, e.reason)
            return None

    def evaluation_keys(self) -> bytes:
        """The framed Galois keys of the rotations the server makes (no secret key, no public key)."""
        self.ensure_keys()
        if self._galois is None:
            generator = seal.KeyGenerator(self.context, self.secret_key)
            self._galois = to_bytes(generator.create_galois_keys(self.params.galois_elements()))
        return frame(KEYS, self.stats.circuit_id, self._galois)

    def encrypt(self, x: np.ndarray) -> bytes:
        """Encrypt one embedding ``(1, dim)`` (symmetric encryption with the secret key): the framed query."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (1, self.params.dim) or not np.isfinite(x).all():
            raise FheError(f"one finite input of shape (1, {self.params.dim}) per query, got shape {tuple(x.shape)}")
        self.ensure_keys()
        plaintext = seal.Plaintext()
        self.encoder.encode(replicated(self.params, x[0]).tolist(), self.params.query_scale, plaintext)
        encrypted = seal.Encryptor(self.context, self.secret_key).encrypt_symmetric(plaintext)
        return frame(QUERY, self.stats.circuit_id, to_bytes(encrypted))

    def decrypt(self, message: bytes) -> np.ndarray:
        """Every track's score ``(1, n_tracks)`` of a framed result."""
        payload = unframe(message, RESULT, self.stats.circuit_id)
        what = f"result of circuit {self.stats.circuit_id}"
        if len(payload) < COUNT.size or COUNT.unpack_from(payload)[0] != self.params.shards:
            raise FheError(f"{what} does not hold its {self.params.shards} ciphertexts")
        self.ensure_keys()
        decryptor, offset, scores = seal.Decryptor(self.context, self.secret_key), COUNT.size, []
        for _ in range(self.params.shards):
            if offset + SHARD.size > len(payload):
                raise FheError(f"{what} is truncated")
            (length,) = SHARD.unpack_from(payload, offset)
            offset += SHARD.size
            ciphertext = from_bytes(seal.Ciphertext, self.context, payload[offset : offset + length], what,
                                    self.params.ciphertext_bytes(1) + SEAL_SLACK)
            offset += length
            plaintext = seal.Plaintext()
            try:
                decryptor.decrypt(ciphertext, plaintext)
            except (RuntimeError, ValueError) as e:
                raise FheError(f"{what} cannot be decrypted: {e}") from e
            values = np.asarray(self.encoder.decode_complex(plaintext))
            scores.append(np.concatenate([values.real, values.imag]))
        if offset != len(payload):
            raise FheError(f"{what} has {len(payload) - offset} bytes past its ciphertexts")
        return np.concatenate(scores)[None, : self.params.n_tracks].astype(np.float32)

    def secret_key_words(self) -> bytes:
        """The secret key's raw coefficients (NTT form, every prime) as bytes: for the tests'
        check that none of it reaches the server."""
        self.ensure_keys()
        array = self.secret_key.data().dyn_array()
        return np.asarray([array.at(i) for i in range(array.size())], dtype="<u8").tobytes()


# --- building a packed head ---


def build_packed(W: np.ndarray, b: np.ndarray, ring: int, moduli_bits: tuple[int, ...], query_scale_bits: int,
                 calibration: np.ndarray, folder: Path, groups: np.ndarray | None = None) -> CircuitStats:
    """Write the packed head of weights ``W`` ``(N, d)`` and biases ``b`` into ``folder`` (new):
    client and server sides, and the costs and approximation error measured by encrypting
    ``calibration`` rows under a throwaway key (sizes of keys, query and answer as sent).
    ``groups`` ``(N,)``: the answer each row belongs to when the client takes the best row of
    each group (a kNN's track of each reference, see :func:`best_per_group`); the chance of a
    changed top-1 is then that of a changed best group. ``None``: every row is an answer."""
    started = time.perf_counter()
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    if groups is not None and (reason := check_groups(groups, W.shape[0])) is not None:
        raise ValueError(f"packed head groups: {reason}")
    params = plan(W.shape[1], W.shape[0], ring, moduli_bits, query_scale_bits)
    norm = max(1.0, float(np.linalg.norm(calibration, axis=1).max()) if len(calibration) else 1.0)
    bound = float((np.linalg.norm(W, axis=1) * norm * SCORE_MARGIN + np.abs(b)).max())
    if bound >= 2.0 ** (moduli_bits[0] - query_scale_bits - 1):
        raise ConfigError.bad_value("packed.query_scale_bits", query_scale_bits,
                                    f"at most {moduli_bits[0] - 2 - math.ceil(math.log2(bound))}: scores up to "
                                    f"{bound:.3g} must fit q0's {moduli_bits[0]} bits at the query's scale")
    circuit_id = uuid.uuid4().hex
    folder = Path(folder)
    for side in ("client", "server"):
        (folder / side).mkdir(parents=True)
    params_json = json.dumps(params.to_json(), indent=2).encode()
    with zipfile.ZipFile(folder / "client" / "client.zip", "w") as z:
        z.writestr(PACKED_MEMBER, params_json)
    weights = io.BytesIO()
    np.savez(weights, W=W, b=b)
    with zipfile.ZipFile(folder / "server" / "server.zip", "w") as z:
        z.writestr(PACKED_MEMBER, params_json)
        z.writestr(WEIGHTS_MEMBER, weights.getvalue())
    provisional = _stats(params, circuit_id, 0, 0, 0, 0.0, 0.0)
    for side in ("client", "server"):
        provisional.save(folder / side)
    KeyLayout(1 << 40, ()).save(folder / "server")  # replaced below by the measured size
    measured = measure(folder, calibration, W, b, groups)
    compile_s = time.perf_counter() - started
    stats = _stats(params, circuit_id, measured["key_bytes"], measured["query_bytes"], measured["answer_bytes"],
                   measured["p_top1_flip"], compile_s)
    for side in ("client", "server"):
        stats.save(folder / side)
    stats.save(folder)
    KeyLayout(int(measured["key_bytes"] * KEY_CAP_SLACK), ()).save(folder / "server")
    versions = {"tenseal": metadata.version("tenseal"), "zstandard": metadata.version("zstandard")}
    (folder / ERROR_FILE).write_text(json.dumps({**measured, "versions": versions}, indent=2))
    return stats


def _stats(params: PackedParams, circuit_id: str, key_bytes: int, query_bytes: int, answer_bytes: int,
           p_error: float, compile_s: float) -> CircuitStats:
    """The costs of a packed head in Concrete's record: no PBS; ``keyswitch_key_bytes`` the Galois
    keys in memory (one key per step: ``2 x 2 x (levels) x n x 8`` bytes each); ``p_error`` the
    probability the approximation changes a query's top-1 (see :func:`measure`)."""
    galois_in_memory = params.key_limit() - SEAL_SLACK
    return CircuitStats(circuit_id=circuit_id, input_shape=(params.dim,), n_classes=params.n_tracks, pbs_count=0,
                        max_bit_width=params.moduli_bits[0], complexity=0.0, p_error=float(p_error),
                        compile_s=round(compile_s, 3), bootstrap_key_bytes=0, keyswitch_key_bytes=galois_in_memory,
                        secret_key_bytes=len(params.moduli_bits) * params.ring * 8,
                        input_ciphertext_bytes=int(query_bytes), output_ciphertext_bytes=int(answer_bytes),
                        security_bits=SECURITY_BITS, serialized_key_bytes=int(key_bytes))


def measure(folder: Path, calibration: np.ndarray, W: np.ndarray, b: np.ndarray,
            groups: np.ndarray | None = None) -> dict:
    """Encrypt ``calibration`` rows under a throwaway secret key and compare the decrypted scores
    with the exact ones: the CKKS error (std and max over every score), payload sizes, and the
    probability that the error changes a query's top-1 under a Gaussian model of it (the mean
    over the rows of ``P(N(0, 2 sigma^2) > gap)``, ``gap`` the exact best-minus-second score;
    with ``groups``, of the best score of each group, see :func:`best_per_group`)."""
    with tempfile.TemporaryDirectory(prefix="ppazam-packed-keys-") as keys:
        server, client = PackedServer(folder / "server"), PackedClient(folder / "client", Path(keys))
        galois = client.evaluation_keys()
        evaluation = server.read_keys(galois)
        errors, gaps, queries, answers, seconds = [], [], [], [], []
        for x in np.asarray(calibration, dtype=np.float64):
            query = client.encrypt(x[None])
            started = time.perf_counter()
            answer = server.run(query, evaluation)
            seconds.append(time.perf_counter() - started)
            got = client.decrypt(answer)[0].astype(np.float64)
            exact = W @ x + b
            errors.append(got - exact)
            answers_exact = exact if groups is None else best_per_group(exact, groups)
            top = np.sort(answers_exact)[-2:] if len(answers_exact) > 1 else np.array([0.0, np.inf])
            gaps.append(top[1] - top[0])
            queries.append(len(query))
            answers.append(len(answer))
    error = np.concatenate(errors)
    sigma = float(error.std()) if error.size else 0.0
    flip = [0.5 * math.erfc(g / (2 * sigma)) if sigma > 0 else 0.0 for g in gaps]
    return {"rows": len(errors), "error_std": sigma, "error_max": float(np.abs(error).max()) if error.size else 0.0,
            "p_top1_flip": float(np.mean(flip)) if flip else 0.0,
            "key_bytes": len(galois) - HEADER.size,
            "query_bytes": int(np.median(queries)) - HEADER.size, "answer_bytes": int(np.median(answers)) - HEADER.size,
            "server_s": float(np.median(seconds)) if seconds else 0.0}


def read_error(folder: Path) -> dict:
    """The approximation error a packed head measured at build (``error.json``)."""
    path = Path(folder) / ERROR_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder} holds no packed head ({ERROR_FILE} is missing)")
    return read_json(path, "error_std", "p_top1_flip")


def load_params(folder: Path) -> PackedParams:
    """The parameters of a packed head's folder (its public client side)."""
    path = Path(folder) / "client" / "client.zip"
    if not path.is_file():
        raise ArtifactError(f"{folder} holds no packed head (client/client.zip is missing)")
    return _read_params(_read_archive(path), path)
