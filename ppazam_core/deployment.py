"""Client and server of the encrypted identifier; they exchange nothing but bytes.

The client (the user's device) holds the client artifacts and the secret keys: it quantizes
and encrypts a patch, and decrypts and dequantizes the result. The server holds only the
server artifacts (``server.zip``) and the evaluation keys the client sent it; it cannot
decrypt anything. Every message is framed::

    magic "PPZM" | kind (K keys, Q query, R result) | circuit id | payload length | SHA-256

so a truncated or altered message, or keys and ciphertexts meant for another circuit, are
refused with an :class:`~ppazam_core.errors.FheError` before Concrete sees them.

The client's keys are stored with their SHA-256 and checked before Concrete reads them: damaged
keys (which Concrete may accept and then decrypt garbage with) are generated anew, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from concrete import fhe
from concrete.ml.deployment import FHEModelClient, FHEModelServer

from ppazam_core.artifacts import damaged, reading
from ppazam_core.errors import ArtifactError, DamagedArtifactError, FheError
from ppazam_core.fhe import CircuitStats, fhe_input
from ppazam_core.store import atomic_folder, is_complete

MAGIC = b"PPZM"
HEADER = struct.Struct(">4s1s32sQ32s")
KEYS, QUERY, RESULT = b"K", b"Q", b"R"
KIND_NAMES = {KEYS: "evaluation keys", QUERY: "query ciphertext", RESULT: "result ciphertext"}
KEYS_FILE = "keys.bin"
KEYS_DIGEST_FILE = "keys.sha256"

logger = logging.getLogger(__name__)


def frame(kind: bytes, circuit_id: str, payload: bytes) -> bytes:
    """Wrap ``payload`` for the wire."""
    return HEADER.pack(MAGIC, kind, circuit_id.encode(), len(payload), hashlib.sha256(payload).digest()) + payload


def unframe(message: bytes, kind: bytes, circuit_id: str) -> bytes:
    """The payload of ``message``, after checking it is whole, unaltered and meant for this
    circuit; otherwise an :class:`FheError` saying which check failed."""
    expected = KIND_NAMES[kind]
    if not isinstance(message, (bytes, bytearray)):
        raise FheError(f"{expected}: expected bytes, got {type(message).__name__}")
    if len(message) < HEADER.size:
        raise FheError(f"{expected}: message of {len(message)} bytes is too short to hold a header "
                       f"({HEADER.size} bytes); truncated?")
    magic, got_kind, got_id, length, digest = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise FheError(f"{expected}: not a ppazam message (bad magic {magic!r})")
    if got_kind != kind:
        raise FheError(f"{expected}: received {KIND_NAMES.get(got_kind, repr(got_kind))} instead")
    if got_id.decode(errors="replace") != circuit_id:
        raise FheError(f"{expected}: made for circuit {got_id.decode(errors='replace')}, not for this circuit "
                       f"{circuit_id} (keys or ciphertext of another model?)")
    payload = bytes(message[HEADER.size :])
    if len(payload) != length:
        raise FheError(f"{expected}: payload is {len(payload)} bytes, header says {length}; truncated?")
    if hashlib.sha256(payload).digest() != digest:
        raise FheError(f"{expected}: payload does not match its SHA-256 digest; the message was altered")
    return payload


class ClassifierServer:
    """The server side of one compiled classifier. An :class:`ArtifactError` when ``server.zip``
    is missing, a :class:`~ppazam_core.errors.DamagedArtifactError` when it cannot be read."""

    def __init__(self, server_dir: Path) -> None:
        server_dir = Path(server_dir)
        if not (server_dir / "server.zip").is_file():
            raise ArtifactError(f"server folder {server_dir} is missing server.zip")
        self.stats = CircuitStats.load(server_dir)
        with reading(server_dir / "server.zip"):
            self._server = FHEModelServer(str(server_dir))
        self._keys: fhe.EvaluationKeys | None = None

    def receive_keys(self, message: bytes) -> None:
        """Store the client's evaluation keys (deserialized once)."""
        payload = unframe(message, KEYS, self.stats.circuit_id)
        try:
            self._keys = fhe.EvaluationKeys.deserialize(payload)
        except RuntimeError as e:
            raise FheError(f"evaluation keys for circuit {self.stats.circuit_id} cannot be read: {e}") from e

    def run(self, message: bytes) -> bytes:
        """Evaluate the circuit on one encrypted query; returns the framed encrypted result."""
        if self._keys is None:
            raise FheError(f"no evaluation keys received for circuit {self.stats.circuit_id}; send them first")
        payload = unframe(message, QUERY, self.stats.circuit_id)
        try:
            result = self._server.run(payload, self._keys)
        except (RuntimeError, ValueError) as e:
            raise FheError(f"query for circuit {self.stats.circuit_id} cannot be evaluated: {e}") from e
        return frame(RESULT, self.stats.circuit_id, result)


class ClassifierClient:
    """The user's side of one compiled classifier: keys, encryption and decryption. An
    :class:`ArtifactError` when ``client.zip`` is missing, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when it cannot be read."""

    def __init__(self, client_dir: Path, key_dir: Path) -> None:
        client_dir = Path(client_dir)
        if not (client_dir / "client.zip").is_file():
            raise ArtifactError(f"client folder {client_dir} is missing client.zip")
        self.stats = CircuitStats.load(client_dir)
        self.key_dir = Path(key_dir) / self.stats.circuit_id  # keys of a recompiled circuit never match
        with reading(client_dir / "client.zip"):
            self._fhe = FHEModelClient(str(client_dir))

    def ensure_keys(self) -> tuple[float, bool]:
        """Load this client's keys, or generate and store them (anew, with a warning, when the
        stored ones are damaged). Returns the seconds it took and whether they were generated."""
        started = time.perf_counter()
        if self._fhe.client.keys.are_generated:
            return time.perf_counter() - started, False
        stored = self._stored_keys()
        if stored is not None:
            self._fhe.client.keys = stored
            return time.perf_counter() - started, False
        self._fhe.client.keygen(force=True)
        with atomic_folder(self.key_dir) as tmp:
            self._fhe.client.keys.serialize_to_file(tmp / KEYS_FILE)
            (tmp / KEYS_DIGEST_FILE).write_text(_sha256(tmp / KEYS_FILE))
        return time.perf_counter() - started, True

    def _stored_keys(self) -> fhe.Keys | None:
        """The stored keys once their SHA-256 checks out; ``None`` when there are none or they
        are damaged (logged)."""
        if not is_complete(self.key_dir):
            return None
        keys_file = self.key_dir / KEYS_FILE
        try:
            with reading(self.key_dir / KEYS_DIGEST_FILE) as digest_file:
                expected = digest_file.read_text().strip()
            with reading(keys_file):
                if _sha256(keys_file) != expected:
                    raise damaged(keys_file, f"its SHA-256 differs from the one in {KEYS_DIGEST_FILE}")
                return fhe.Keys.deserialize(keys_file)
        except DamagedArtifactError as e:
            logger.warning("client keys %s are damaged (%s); generating new ones", e.path, e.reason)
            return None

    def evaluation_keys(self) -> bytes:
        """The framed public evaluation keys for the server."""
        self.ensure_keys()
        return frame(KEYS, self.stats.circuit_id, self._fhe.client.evaluation_keys.serialize())

    def encrypt(self, x: np.ndarray) -> bytes:
        """Quantize and encrypt one normalized patch ``(1, *input_shape)``."""
        x = fhe_input(x, self.stats)
        if x.shape[0] != 1:
            raise FheError(f"one patch per query, got {x.shape[0]}")
        self.ensure_keys()
        return frame(QUERY, self.stats.circuit_id, self._fhe.quantize_encrypt_serialize(x))

    def decrypt(self, message: bytes) -> np.ndarray:
        """Decrypt and dequantize a framed result into logits ``(1, n_classes)`` (no
        post-processing: a linear head gives its decision values, as in the other modes)."""
        payload = unframe(message, RESULT, self.stats.circuit_id)
        try:
            return np.asarray(self._fhe.model.dequantize_output(self._fhe.deserialize_decrypt(payload)),
                              dtype=np.float32)
        except RuntimeError as e:
            raise FheError(f"result of circuit {self.stats.circuit_id} cannot be decrypted: {e}") from e


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class StageCost:
    """One encrypted classifier call of one query."""

    classifier: str
    pbs_count: int
    encrypt_s: float
    request_bytes: int
    server_s: float
    response_bytes: int
    decrypt_s: float


@dataclass(frozen=True)
class KeySetup:
    """Once per classifier: the client's keys and what was sent to the server."""

    classifier: str
    keys_s: float
    generated: bool
    evaluation_key_bytes: int


class EncryptedChannel:
    """A client and a server of the same compiled classifiers, talking in bytes in one process,
    with every exchange timed and measured."""

    def __init__(self, circuits: Path, key_dir: Path) -> None:
        self.circuits = Path(circuits)
        self.key_dir = Path(key_dir)
        self._clients: dict[str, ClassifierClient] = {}
        self._servers: dict[str, ClassifierServer] = {}
        self.costs: list[StageCost] = []
        self.key_setups: dict[str, KeySetup] = {}

    def names(self) -> list[str]:
        """The compiled classifiers this channel can reach."""
        return sorted(p.name for p in self.circuits.iterdir() if (p / "server").is_dir())

    def logits(self, name: str, X: np.ndarray) -> np.ndarray:
        """Logits of classifier ``name`` for normalized patches, each one encrypted on its own."""
        client, server = self.connect(name)
        rows = []
        for x in np.asarray(X, dtype=np.float32):
            started = time.perf_counter()
            request = client.encrypt(x[None])
            encrypted = time.perf_counter()
            response = server.run(request)
            served = time.perf_counter()
            rows.append(client.decrypt(response))
            self.costs.append(StageCost(name, client.stats.pbs_count, encrypted - started, len(request),
                                        served - encrypted, len(response), time.perf_counter() - served))
        return np.concatenate(rows) if rows else np.zeros((0, client.stats.n_classes), np.float32)

    def connect(self, name: str) -> tuple[ClassifierClient, ClassifierServer]:
        """Client and server of classifier ``name``; the first call loads or generates the
        client's keys and sends the evaluation keys to the server."""
        if name not in self._clients:
            client = ClassifierClient(self.circuits / name / "client", self.key_dir / name)
            server = ClassifierServer(self.circuits / name / "server")
            keys_s, generated = client.ensure_keys()
            keys = client.evaluation_keys()
            server.receive_keys(keys)
            self.key_setups[name] = KeySetup(name, keys_s, generated, len(keys))
            self._clients[name], self._servers[name] = client, server
        return self._clients[name], self._servers[name]
