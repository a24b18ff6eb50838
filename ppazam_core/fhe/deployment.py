"""Client and server of the encrypted identifier; they exchange nothing but bytes.

The client (the user's device) holds the client artifacts and the secret keys: it quantizes
and encrypts a patch, and decrypts and dequantizes the result. The server holds only a
:class:`ServerBundle` (each circuit's ``server.zip``, written by :func:`export_server`) and the
evaluation keys each client session uploaded; it cannot decrypt anything. The two talk through a
:class:`Transport`: :class:`LocalTransport` in one process, or HTTP (:mod:`ppazam_core.fhe.serving`).
Every message is framed::

    magic "PPZM" | kind (K keys, Q query, R result) | circuit id | payload length | SHA-256

so a truncated or corrupted message, or keys and ciphertexts meant for another circuit, are
refused with an :class:`~ppazam_core.errors.FheError` before Concrete sees them. Since a client
can re-frame anything, uploaded evaluation keys are also checked against the circuit's own
:class:`KeyLayout` (their length and every byte that does not depend on the key material, which
carries the key parameters) before Concrete reads them: keys with other parameters would crash
the server process inside Concrete at the next query. The digest is
an integrity check against accidents, **not authentication**: anyone on the path can rewrite a
payload and its digest together. Run the server behind TLS to stop tampering in transit.

A circuit folder may also hold a packed CKKS head (:mod:`ppazam_core.fhe.packed`: a
``packed.json`` in its ``client.zip`` and ``server.zip``); :func:`open_client` and
:func:`open_server` pick its client and server, which offer the same methods, so the channel,
the bundle and :mod:`ppazam_core.fhe.serving` serve it alike.

The client's keys (secret keys included) live only in a client folder outside every model
folder (:func:`client_key_dir`), written with mode 0600 in a 0700 folder; they are stored with
their SHA-256 and checked before Concrete reads them: damaged keys (which Concrete may accept and
then decrypt garbage with) are generated anew, with a warning. A client uploads the evaluation
keys of every circuit it may call before its first query, so the order of uploads tells the
server nothing about the query.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from concrete import fhe
from concrete.ml.deployment import FHEModelClient

from ppazam_core.artifacts import damaged, read_json, reading
from ppazam_core.errors import ArtifactError, DamagedArtifactError, FheError
from ppazam_core.fhe.concrete import CIRCUIT_FILE, KEY_LAYOUT_FILE, CircuitStats, KeyLayout, fhe_input
from ppazam_core.store import atomic_folder, default_cache_dir, is_complete
from ppazam_core.fhe.top1_head import CODEC_FILE, Top1Codec
from ppazam_core.fhe.wire import (KEYS, PACKED_MEMBER, QUERY, RESULT, checked_key_file, frame,
                                  private_file, unframe, write_key_digest)

KEYS_FILE = "keys.bin"
BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = 1
KEY_DIR_ENV = "PPAZAM_CLIENT_KEYS"
CIRCUIT_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")

logger = logging.getLogger(__name__)


class ClassifierServer:
    """The server side of one compiled classifier (Concrete ML's or :mod:`ppazam_core.fhe.top1_head`'s:
    both are a concrete-python ``server.zip``); it keeps no keys (see :class:`LocalTransport`
    and :mod:`ppazam_core.fhe.serving` for the sessions that do). An :class:`ArtifactError` when
    ``server.zip`` or ``key-layout.json`` is missing, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when one cannot be read.

    Runs are serialized by :attr:`run_lock` (re-entrant), whoever calls: Concrete's server object
    is not documented as thread-safe, and one loaded circuit may serve several apps and
    transports in one process. A caller may take the lock first to wait for the circuit before
    it takes anything else."""

    def __init__(self, server_dir: Path) -> None:
        server_dir = Path(server_dir)
        if not (server_dir / "server.zip").is_file():
            raise ArtifactError(f"server folder {server_dir} is missing server.zip")
        self.stats = CircuitStats.load(server_dir)
        with reading(server_dir / "server.zip") as path:
            self._server = fhe.Server.load(path)
        self.key_layout = KeyLayout.load(server_dir)
        self.run_lock = threading.RLock()

    def read_keys(self, message: bytes) -> fhe.EvaluationKeys:
        """A client's framed evaluation keys for this circuit, deserialized; an :class:`FheError`
        when the frame is wrong (see :func:`unframe`) or Concrete cannot read them."""
        payload = unframe(message, KEYS, self.stats.circuit_id)
        self.key_layout.check(payload, self.stats.circuit_id)
        try:
            return fhe.EvaluationKeys.deserialize(payload)
        except RuntimeError as e:
            raise FheError(f"evaluation keys for circuit {self.stats.circuit_id} cannot be read: {e}") from e

    def run(self, message: bytes, keys: fhe.EvaluationKeys | None) -> bytes:
        """Evaluate the circuit on one framed encrypted query with a client's ``keys``; returns
        the framed encrypted result. An :class:`FheError` without keys, for a wrong frame, or
        when Concrete cannot evaluate the payload."""
        if keys is None:
            raise FheError(f"no evaluation keys received for circuit {self.stats.circuit_id}; send them first")
        payload = unframe(message, QUERY, self.stats.circuit_id)
        try:
            with self.run_lock:
                result = self._server.run(fhe.Value.deserialize(payload), evaluation_keys=keys)
        except (RuntimeError, ValueError) as e:
            raise FheError(f"query for circuit {self.stats.circuit_id} cannot be evaluated: {e}") from e
        return frame(RESULT, self.stats.circuit_id, result.serialize())


class ServerBundle:
    """What a server needs and nothing more: each compiled classifier's ``server.zip`` and
    ``circuit.json``, by name. Read from a folder written by :func:`export_server`
    (:meth:`load`) or straight from a model's compiled circuits (:meth:`from_circuits`). Each
    classifier is loaded on first use. :meth:`load` raises an :class:`ArtifactError` when the
    folder is not a bundle, a :class:`~ppazam_core.errors.DamagedArtifactError` when its index
    cannot be read."""

    def __init__(self, folders: dict[str, Path], description: dict | None = None) -> None:
        self.folders = dict(sorted(folders.items()))
        self.description = description or {}
        self._servers: dict[str, ClassifierServer] = {}
        self._loading = threading.Lock()  # one ClassifierServer (and run lock) per circuit, whoever asks first

    @classmethod
    def load(cls, folder: Path) -> "ServerBundle":
        folder = Path(folder)
        if not (folder / BUNDLE_FILE).is_file():
            raise ArtifactError(f"{folder} is not a server bundle ({BUNDLE_FILE} is missing); "
                                "write one with `ppazam export-server`")
        description = read_json(folder / BUNDLE_FILE, "format", "circuits")
        if description["format"] != BUNDLE_FORMAT:
            raise damaged(folder / BUNDLE_FILE, f"bundle format {description['format']!r}; this ppazam reads "
                                                f"format {BUNDLE_FORMAT}: export it again with this version")
        ids = description["circuits"]
        if not isinstance(ids, dict) or not ids:
            raise damaged(folder / BUNDLE_FILE, "it lists no circuit")
        odd = [name for name in ids if not CIRCUIT_NAME.fullmatch(name) or not (folder / name).is_dir()]
        if odd:
            raise damaged(folder / BUNDLE_FILE, f"circuits {odd[:3]} are not plain names of folders beside it")
        return cls({name: folder / name for name in ids}, description)

    @classmethod
    def from_circuits(cls, circuits: Path) -> "ServerBundle":
        circuits = Path(circuits)
        return cls({p.name: p / "server" for p in circuits.iterdir() if (p / "server").is_dir()})

    def names(self) -> list[str]:
        return list(self.folders)

    def server(self, name: str) -> ClassifierServer:
        """The server side of classifier ``name``; an :class:`FheError` for a name not in the bundle."""
        if name not in self.folders:
            raise FheError(f"no circuit named {name!r} here; this server holds {', '.join(self.folders) or 'none'}")
        with self._loading:
            return self._servers[name] if name in self._servers else self._load(name)

    def _load(self, name: str) -> ClassifierServer:
        server = open_server(self.folders[name])
        expected = self.description.get("circuits", {}).get(name, server.stats.circuit_id)
        if server.stats.circuit_id != expected:
            raise damaged(self.folders[name] / CIRCUIT_FILE,
                          f"circuit id {server.stats.circuit_id}, the bundle lists {expected}")
        self._servers[name] = server
        return server


def _is_packed(folder: Path, archive: str) -> bool:
    """Whether ``folder/archive`` is a packed CKKS head's (:mod:`ppazam_core.fhe.packed`)."""
    try:
        with zipfile.ZipFile(Path(folder) / archive) as z:
            return PACKED_MEMBER in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def open_server(server_dir: Path) -> ClassifierServer:
    """The server side of a circuit folder: Concrete's (:class:`ClassifierServer`), or a packed
    CKKS head's (:class:`~ppazam_core.fhe.packed.PackedServer`, same interface)."""
    if _is_packed(server_dir, "server.zip"):
        from ppazam_core.fhe.packed import PackedServer  # it builds on this module

        server = PackedServer(server_dir)
        server.prepare()  # the weights' plaintexts encoded now, not in the first query's time
        return server
    return ClassifierServer(server_dir)


def open_client(client_dir: Path, key_dir: Path) -> "ClassifierClient":
    """The client side of a circuit folder: Concrete's (:class:`ClassifierClient`), or a packed
    CKKS head's (:class:`~ppazam_core.fhe.packed.PackedClient`, same interface)."""
    if _is_packed(client_dir, "client.zip"):
        from ppazam_core.fhe.packed import PackedClient  # it builds on this module

        return PackedClient(client_dir, key_dir)
    return ClassifierClient(client_dir, key_dir)


def export_server(circuits: Path, dest: Path, description: dict) -> Path:
    """Write the server bundle of a model's compiled ``circuits`` into ``dest`` (new or empty):
    ``bundle.json`` (``description``, the format and each circuit's id) and, per classifier,
    its ``server.zip``, ``circuit.json`` and ``key-layout.json`` (:class:`KeyLayout`); no
    client artifact and no key. An
    :class:`ArtifactError` when ``dest`` holds files or ``circuits`` holds no server side."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ArtifactError(f"{dest} is not an empty folder; give a new or empty one")
    source = ServerBundle.from_circuits(circuits)
    if not source.folders:
        raise ArtifactError(f"{circuits} holds no compiled server side; run `ppazam compile`")
    ids = {}
    dest.mkdir(parents=True, exist_ok=True)
    for name, folder in source.folders.items():
        (dest / name).mkdir()
        for part in ("server.zip", CIRCUIT_FILE, KEY_LAYOUT_FILE):
            shutil.copyfile(folder / part, dest / name / part)
        ids[name] = CircuitStats.load(folder).circuit_id
    (dest / BUNDLE_FILE).write_text(json.dumps({**description, "format": BUNDLE_FORMAT, "circuits": ids}, indent=2))
    return dest


def forget_keys(circuits: Path, key_dir: Path) -> None:
    """Delete the client's keys of the classifiers compiled in ``circuits`` (before they are
    recompiled: keys of a replaced circuit can never be used again)."""
    for stats_file in Path(circuits).glob("*/client/circuit.json"):
        try:
            circuit_id = CircuitStats.load(stats_file.parent).circuit_id
        except ArtifactError:  # damaged: its keys are unreachable anyway
            continue
        shutil.rmtree(Path(key_dir) / circuit_id, ignore_errors=True)


class Transport(Protocol):
    """How a client reaches a server: upload a circuit's framed evaluation keys once, then send
    framed queries. ``run`` returns the framed result and the server's own seconds."""

    def upload_keys(self, name: str, message: bytes) -> None: ...

    def run(self, name: str, message: bytes) -> tuple[bytes, float]: ...


class LocalTransport:
    """A server in this process holding one client session's keys: no socket, no copy."""

    def __init__(self, bundle: ServerBundle) -> None:
        self.bundle = bundle
        self._keys: dict[str, fhe.EvaluationKeys] = {}

    def upload_keys(self, name: str, message: bytes) -> None:
        self._keys[name] = self.bundle.server(name).read_keys(message)

    def run(self, name: str, message: bytes) -> tuple[bytes, float]:
        started = time.perf_counter()
        result = self.bundle.server(name).run(message, self._keys.get(name))
        return result, time.perf_counter() - started


def client_key_dir(model_folder: Path) -> Path:
    """The client folder of secret keys for a model: ``$PPAZAM_CLIENT_KEYS``, else
    ``client-keys/`` beside the store's ``models/`` folder, else in the default cache -- never
    inside a model folder, so copying a model (or its server bundle) ships no secret."""
    if os.environ.get(KEY_DIR_ENV):
        return Path(os.environ[KEY_DIR_ENV]).expanduser()
    store = Path(model_folder).resolve().parent
    return (store.parent if store.name == "models" else default_cache_dir()) / "client-keys"


class Codec(Protocol):
    """The client's side of a circuit's numbers: ``encode`` a float input ``(1, *input_shape)``
    into the integers it encrypts, ``logits`` of the decrypted integers ``(1, n_classes)``."""

    def encode(self, x: np.ndarray) -> np.ndarray: ...

    def logits(self, y: np.ndarray) -> np.ndarray: ...


class ConcreteMlCodec:
    """Concrete ML's input and output quantizers (``serialized_processing.json`` of the client
    archive, read by ``FHEModelClient``); logits are dequantized outputs, no post-processing (a
    linear head gives its decision values, as in the other modes)."""

    def __init__(self, client_dir: Path, stats: CircuitStats) -> None:
        self.stats = stats
        self._model = FHEModelClient(str(client_dir)).model

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self._model.quantize_input(fhe_input(x, self.stats))

    def logits(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.dequantize_output(y), dtype=np.float32)


def load_codec(client_dir: Path, stats: CircuitStats) -> Codec:
    """The codec of a client folder: a top-1 head's own (:mod:`ppazam_core.fhe.top1_head`) when its
    archive holds one, else Concrete ML's."""
    with zipfile.ZipFile(Path(client_dir) / "client.zip") as archive:
        top1 = CODEC_FILE in archive.namelist()
    return Top1Codec.load(client_dir) if top1 else ConcreteMlCodec(client_dir, stats)


class ClassifierClient:
    """The user's side of one compiled classifier: keys, encryption and decryption. An
    :class:`ArtifactError` when ``client.zip`` is missing, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when it cannot be read."""

    def __init__(self, client_dir: Path, key_dir: Path) -> None:
        """``key_dir``: the client folder of secret keys; this circuit's live in ``<circuit id>/``."""
        client_dir = Path(client_dir)
        if not (client_dir / "client.zip").is_file():
            raise ArtifactError(f"client folder {client_dir} is missing client.zip")
        self.stats = CircuitStats.load(client_dir)
        self.key_dir = Path(key_dir) / self.stats.circuit_id  # keys of a recompiled circuit never match
        with reading(client_dir / "client.zip") as path:
            self.client = fhe.Client.load(path)
            self.codec = load_codec(client_dir, self.stats)

    def ensure_keys(self) -> tuple[float, bool]:
        """Load this client's keys, or generate and store them (anew, with a warning, when the
        stored ones are damaged). Returns the seconds it took and whether they were generated."""
        started = time.perf_counter()
        if self.client.keys.are_generated:
            return time.perf_counter() - started, False
        stored = self._stored_keys()
        if stored is not None:
            self.client.keys = stored
            return time.perf_counter() - started, False
        self.client.keygen(force=True)
        try:
            self.key_dir.parent.mkdir(mode=0o700, parents=True)
            os.chmod(self.key_dir.parent, 0o700)  # mkdir's mode is masked by the umask
        except FileExistsError:  # a folder the user named (even /tmp), or one another client just made, keeps its mode
            pass
        with atomic_folder(self.key_dir) as tmp:  # mkdtemp: mode 0700
            with private_file(tmp / KEYS_FILE):
                self.client.keys.serialize_to_file(tmp / KEYS_FILE)
            write_key_digest(tmp, KEYS_FILE)
        return time.perf_counter() - started, True

    def _stored_keys(self) -> fhe.Keys | None:
        """The stored keys once their SHA-256 checks out; ``None`` when there are none or they
        are damaged (logged)."""
        if not is_complete(self.key_dir):
            return None
        try:
            keys_file = checked_key_file(self.key_dir, KEYS_FILE)
            with reading(keys_file):
                return fhe.Keys.deserialize(keys_file)
        except DamagedArtifactError as e:
            logger.warning("client keys %s are damaged (%s); generating new ones", e.path, e.reason)
            return None

    def evaluation_keys(self) -> bytes:
        """The framed public evaluation keys for the server."""
        self.ensure_keys()
        return frame(KEYS, self.stats.circuit_id, self.client.evaluation_keys.serialize())

    def encrypt(self, x: np.ndarray) -> bytes:
        """Quantize and encrypt one input ``(1, *input_shape)`` (a normalized patch, a feature
        row): the framed query. An :class:`FheError` for another shape or an input the codec refuses."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim < 1 or x.shape[0] != 1:
            raise FheError(f"one input per query, got shape {tuple(x.shape)}")
        self.ensure_keys()
        try:
            encrypted = self.client.encrypt(self.codec.encode(x))
        except (RuntimeError, ValueError) as e:
            raise FheError(f"input cannot be encrypted for circuit {self.stats.circuit_id}: {e}") from e
        return frame(QUERY, self.stats.circuit_id, encrypted.serialize())

    def decrypt(self, message: bytes) -> np.ndarray:
        """Decrypt a framed result into logits ``(1, n_classes)`` float32 (see the codec)."""
        payload = unframe(message, RESULT, self.stats.circuit_id)
        try:
            return self.codec.logits(self.client.decrypt(fhe.Value.deserialize(payload)))
        except RuntimeError as e:
            raise FheError(f"result of circuit {self.stats.circuit_id} cannot be decrypted: {e}") from e


@dataclass(frozen=True)
class StageCost:
    """One encrypted classifier call of one query; seconds and bytes. ``server_s`` is the
    server's own evaluation time, ``transport_s`` the rest of the round trip (HTTP: request,
    framing checks, socket; 0 in one process)."""

    classifier: str
    pbs_count: int
    encrypt_s: float
    request_bytes: int
    server_s: float
    response_bytes: int
    decrypt_s: float
    transport_s: float = 0.0


@dataclass(frozen=True)
class KeySetup:
    """Once per classifier: the client's keys (loaded or generated) and their upload."""

    classifier: str
    keys_s: float
    generated: bool
    evaluation_key_bytes: int
    upload_s: float = 0.0


class EncryptedChannel:
    """The client of a model's compiled classifiers talking to a server through ``transport``
    (default: a :class:`LocalTransport` over the model's own server sides), every exchange
    timed and measured in :attr:`costs`. ``circuits`` holds the client sides (public); the
    secret keys live in ``key_dir`` (:func:`client_key_dir`)."""

    def __init__(self, circuits: Path, key_dir: Path, transport: Transport | None = None) -> None:
        self.circuits = Path(circuits)
        self.key_dir = Path(key_dir)
        self.transport = transport or LocalTransport(ServerBundle.from_circuits(self.circuits))
        self._clients: dict[str, ClassifierClient] = {}
        self.costs: list[StageCost] = []
        self.key_setups: dict[str, KeySetup] = {}

    def names(self) -> list[str]:
        """The compiled classifiers this channel can reach."""
        return sorted(p.name for p in self.circuits.iterdir() if (p / "client").is_dir())

    def open(self) -> None:
        """Load or generate the client's keys of every classifier and upload each evaluation key
        set, all before the first query (once per channel)."""
        for name in self.names():
            if name in self.key_setups:
                continue
            client = open_client(self.circuits / name / "client", self.key_dir)
            keys_s, generated = client.ensure_keys()
            keys = client.evaluation_keys()
            started = time.perf_counter()
            self.transport.upload_keys(name, keys)
            self.key_setups[name] = KeySetup(name, keys_s, generated, len(keys), time.perf_counter() - started)
            self._clients[name] = client

    def client(self, name: str) -> ClassifierClient:
        """The client side of classifier ``name`` (opening the channel first)."""
        self.open()
        if name not in self._clients:
            raise FheError(f"no compiled classifier named {name!r} in {self.circuits}")
        return self._clients[name]

    def logits(self, name: str, X: np.ndarray) -> np.ndarray:
        """Logits of classifier ``name`` for normalized patches, each one encrypted on its own."""
        client = self.client(name)
        rows = []
        for x in np.asarray(X, dtype=np.float32):
            started = time.perf_counter()
            request = client.encrypt(x[None])
            encrypted = time.perf_counter()
            response, server_s = self.transport.run(name, request)
            served = time.perf_counter()
            rows.append(client.decrypt(response))
            self.costs.append(StageCost(name, client.stats.pbs_count, encrypted - started, len(request), server_s,
                                        len(response), time.perf_counter() - served,
                                        max(served - encrypted - server_s, 0.0)))
        return np.concatenate(rows) if rows else np.zeros((0, client.stats.n_classes), np.float32)
