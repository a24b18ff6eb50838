"""Costs of every private design against library size (issue 32, item 2): query, answer and
evaluation-key bytes, server seconds and client seconds at N = 64, 1,000, 4,096, 10,000 and
100,000 tracks of 64-dim embeddings, with random unit-vector weights (the costs do not depend on
the values).

A measurement, not a test (pytest does not collect it); run it on a machine as quiet as you can::

    nice -n 5 .tox/ppazam/bin/python bench/design_scaling.py --out /tmp/design-scaling
    .tox/ppazam/bin/python bench/design_scaling.py --out DIR --designs glwe-matmul --sizes 64 1000

It writes ``DIR/design_scaling.csv`` (``design, n_tracks, query_bytes, answer_bytes, key_bytes,
server_s, client_s, estimate, how``), ``DIR/design_scaling.png`` (answer bytes and server seconds
against N, log-log, with Apple's PNNS point: :mod:`reports.scaling_figure`) and
``DIR/design_scaling.json`` (command, commit, versions, machine, limits), prints a short table and
the issue's targets against the figures. It refuses a folder that already holds a
``design_scaling.csv``.

Designs (:data:`DESIGNS`):

* ``embedding-head``: Concrete ML's ``LogisticRegression`` (8 bits, the family's
  :class:`~ppazam_core.families.embedding_head.HeadConfig`), built from the random weights with
  ``from_sklearn_model`` and compiled by the family's own :func:`~ppazam_core.fhe.concrete.compile_linear`;
  0 PBS, one LWE ciphertext per track score in the answer;
* ``embedding-head-top1``: :func:`~ppazam_core.fhe.top1_head.compile_top1_head` with the family's bit
  widths; ``4N - 1`` PBS, one ciphertext in the answer; estimated beyond what it can run from its
  measured seconds per PBS;
* ``embedding-head-packed``: the packed CKKS head, measured by ``bench/packed_scaling.py``'s
  :func:`packed_scaling.measure` (one row a track, ``ring`` rows a shard);
* ``embedding-knn-packed``: the same backend with :data:`ROWS_PER_TRACK` rows a track (1-s
  windows every 0.5 s of 30-s songs: 59), plus the client's best row per track;
* ``glwe-matmul``: the packed GLWE matrix product of ``concrete-ml-extensions`` (Concrete ML's
  hybrid-model backend), default parameters, encoded as Concrete ML's
  ``GLWELinearLayerExecutor`` does (see :func:`glwe_encode_query`); its decoded integers are
  checked against the clear product of the quantized values (:func:`glwe_check`), and a point that
  fails the check is not reported;
* ``two-stage-cnn``: not measured here (a trained CNN and minutes a query); its point is the one
  the CHANGELOG reports (commit a28605f), marked ``reported``.

Which points run: sizes in increasing order, each point in a child process of its own
(``--no-isolate``: in this one, without the guards). The first size of a design always runs; a
larger one runs only when, extrapolated from the sizes that ran, one query fits ``--max-seconds``
(seconds per cost unit at the largest size: tracks, shards, PBS or columns), the setup (build,
compile, key generation) fits ``--max-setup-seconds`` and the memory fits ``--max-memory-gb``
(both through the two largest sizes: a fixed part plus a part per cost unit); the timed queries
are then cut to fit ``--max-seconds`` together (at least one). A child is killed when it outlives
both limits plus a minute, or its resident memory passes ``--max-memory-gb``. Every other point
is an estimate from the largest size that ran, its formula in ``how``; once a size is estimated,
the larger ones are too.

Bytes are as sent: the framed messages of :mod:`ppazam_core.fhe.wire` (77-byte header) for the
ppazam designs, the extension's own serialization for ``glwe-matmul``. ``server_s`` is the
median over the timed queries of the server's call (reading the query, evaluating, serializing
the answer); ``client_s`` the median encryption plus the median decryption and decoding (key
generation, once per session, is in the setup, not here). Seconds are measured on whatever
shares the machine: give them as measured under that load.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

import packed_scaling  # bench/packed_scaling.py: this script's folder is on sys.path
from ppazam_core.config import FheConfig
from ppazam_core.fhe.deployment import open_client, open_server
from ppazam_core.models.encoder.model import WINDOW_S
from ppazam_core.families.embedding_head import HeadConfig
from ppazam_core.families.embedding_head_top1 import INPUT_BITS, WEIGHT_BITS
from ppazam_core.families.embedding_knn_packed import KnnPackedConfig
from ppazam_core.families.packed_head import PackedConfig
from ppazam_core.fhe.concrete import compile_linear
from ppazam_core.fhe.packed import best_per_group, plan
from ppazam_core.provenance import build_record
from ppazam_core.fhe.top1_head import Top1Clear, compile_top1_head
from reports.scaling_figure import COLUMNS, save_design_scaling

DIM = packed_scaling.DIM  # 64-dim embeddings
SIZES = (64, 1000, 4096, 10_000, 100_000)
SONG_S = 30.0
ROWS_PER_TRACK = int((SONG_S - WINDOW_S) / KnnPackedConfig().hop_s) + 1  # 59: 1-s windows every 0.5 s of 30 s
CSV_FILE, FIGURE_FILE, RECORD_FILE = "design_scaling.csv", "design_scaling.png", "design_scaling.json"
CALIBRATION_ROWS = 256
GIB = 1024**3


class PointFailed(RuntimeError):
    """A point could not be measured (timed out, crashed, or its answer decoded wrongly)."""


@dataclass(frozen=True)
class Measured:
    """One design measured at ``n_tracks``: sizes in bytes, seconds (medians over ``rounds``
    queries), ``setup_s`` (build, compile, key generation and upload, once), ``units`` (the
    design's cost unit at this size, see :class:`Design`), ``check`` (what was checked of the
    decoded answers), ``base_rss_bytes`` and ``peak_rss_bytes`` (the child's peak memory before the
    point, and its growth during it; 0 in-process)."""

    design: str
    n_tracks: int
    query_bytes: int
    answer_bytes: int
    key_bytes: int
    server_s: float
    encrypt_s: float
    decrypt_s: float
    rounds: int
    setup_s: float
    units: float
    check: str
    server_min_s: float = math.nan
    peak_rss_bytes: int = 0
    base_rss_bytes: int = 0


@dataclass(frozen=True)
class Design:
    """A private design: how to measure it at ``N`` tracks (``None``: it is only reported), its
    cost unit (``units(N)``, named ``unit``: server seconds, setup and memory grow with it), how
    its answer and keys grow, and figures from elsewhere (``reported``) used when it cannot be
    measured here (``extrapolate_reported``: estimate other sizes from them too)."""

    name: str
    measure: Callable[[int, int, int, Path], Measured] | None
    unit: str
    units: Callable[[int], float]
    answer: Callable[[Measured, int], float] | None = None
    answer_formula: Callable[[Measured], str] | None = None
    keys: Callable[[Measured, int], float] = lambda m, n: m.key_bytes
    keys_formula: Callable[[Measured], str] = lambda m: "keys as measured"
    reported: Measured | None = None
    extrapolate_reported: bool = True


@dataclass(frozen=True)
class Limits:
    """What a point may take to run for real (see the module docstring)."""

    seconds: float = 120.0
    setup_seconds: float = 600.0
    memory_bytes: float = 4 * GIB


# ----------------------------------------------------------------------------------------------
# random heads and queries


def random_head(n_tracks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``W (n_tracks, DIM)`` unit rows and small biases ``b (n_tracks,)``."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_tracks, DIM))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    return W, rng.normal(scale=0.1, size=n_tracks)


def unit_rows(count: int, seed: int) -> np.ndarray:
    """``count`` random unit embeddings ``(count, DIM)``."""
    X = np.random.default_rng(seed + 1).normal(size=(count, DIM))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# the Concrete designs, through the deployment's client and server


def _exchange(folder: Path, X: np.ndarray, keys_dir: Path) -> dict:
    """Keys, then one framed query per row of ``X`` through :func:`open_client` /
    :func:`open_server` of a compiled circuit folder: sizes, seconds and the decrypted logits."""
    client, server = open_client(folder / "client", keys_dir), open_server(folder / "server")
    started = time.perf_counter()
    message = client.evaluation_keys()
    keys = server.read_keys(message)
    keys_s = time.perf_counter() - started
    encrypt, serve, decrypt, queries, answers, logits = [], [], [], [], [], []
    for x in X:
        started = time.perf_counter()
        query = client.encrypt(x[None].astype(np.float32))
        encrypted = time.perf_counter()
        answer = server.run(query, keys)
        served = time.perf_counter()
        logits.append(client.decrypt(answer)[0])
        decrypt.append(time.perf_counter() - served)
        encrypt.append(encrypted - started)
        serve.append(served - encrypted)
        queries.append(len(query))
        answers.append(len(answer))
    return {"keys_s": keys_s, "key_bytes": len(message), "query_bytes": int(statistics.median(queries)),
            "answer_bytes": int(statistics.median(answers)), "server_s": statistics.median(serve),
            "server_min_s": min(serve), "encrypt_s": statistics.median(encrypt),
            "decrypt_s": statistics.median(decrypt), "logits": np.asarray(logits)}


def measure_linear_head(n_tracks: int, rounds: int, seed: int, work: Path) -> Measured:
    """``embedding-head``: Concrete ML's 8-bit ``LogisticRegression`` of the random head, compiled
    as the family compiles it; checked: the decrypted scores equal Concrete ML's clear quantized
    ones (``fhe="disable"``)."""
    from concrete.ml.sklearn import LogisticRegression
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression

    W, b = random_head(n_tracks, seed)
    calibration, X = unit_rows(CALIBRATION_ROWS, seed), unit_rows(rounds, seed + 7)
    started = time.perf_counter()
    fitted = SkLogisticRegression()
    fitted.classes_, fitted.coef_, fitted.intercept_, fitted.n_features_in_ = np.arange(n_tracks), W, b, DIM
    model = LogisticRegression.from_sklearn_model(fitted, X=calibration.astype(np.float32), n_bits=HeadConfig().n_bits)
    folder = work / "head"
    folder.mkdir(parents=True)
    stats = compile_linear(model, calibration, n_tracks, FheConfig(), folder)
    compile_s = time.perf_counter() - started
    got = _exchange(folder, X, work / "keys")
    clear = np.asarray(model.decision_function(X.astype(np.float32), fhe="disable"), dtype=np.float64)
    diff = float(np.abs(got["logits"] - clear).max())
    return Measured(
        "embedding-head", n_tracks, got["query_bytes"], got["answer_bytes"], got["key_bytes"], got["server_s"],
        got["encrypt_s"], got["decrypt_s"], rounds, compile_s + got["keys_s"], n_tracks,
        f"{stats.pbs_count} PBS; decrypted vs clear quantized scores max |diff| {diff:.2g}",
        server_min_s=got["server_min_s"])


def top1_pbs(n_tracks: int) -> int:
    """PBS of the oblivious top-1 head (approximate rounding): ``4N - 1``."""
    return 4 * n_tracks - 1


def measure_top1_head(n_tracks: int, rounds: int, seed: int, work: Path) -> Measured:
    """``embedding-head-top1``: the oblivious argmax circuit of the random head, compiled as the
    family compiles it; checked: the decrypted track equals its clear integer function's."""
    W, b = random_head(n_tracks, seed)
    calibration, X = unit_rows(CALIBRATION_ROWS, seed), unit_rows(rounds, seed + 7)
    folder = work / "top1"
    started = time.perf_counter()
    stats = compile_top1_head(types.SimpleNamespace(coef_=W, intercept_=b), calibration, FheConfig(), folder,
                              input_bits=INPUT_BITS, weight_bits=WEIGHT_BITS)
    compile_s = time.perf_counter() - started
    got = _exchange(folder, X, work / "keys")
    clear, _ = Top1Clear(folder).top1(X)
    agree = int((got["logits"].argmax(axis=1) == clear).sum())
    return Measured(
        "embedding-head-top1", n_tracks, got["query_bytes"], got["answer_bytes"], got["key_bytes"], got["server_s"],
        got["encrypt_s"], got["decrypt_s"], rounds, compile_s + got["keys_s"], stats.pbs_count,
        f"{stats.pbs_count} PBS (compile {compile_s:.0f} s); decrypted track = clear circuit's on {agree}/{len(X)}; "
        f"first call includes key preparation", server_min_s=got["server_min_s"])


# ----------------------------------------------------------------------------------------------
# the packed CKKS designs, through bench/packed_scaling.py


def _packed(design: str, rows: int, rounds: int, seed: int, groups_of: int = 1) -> Measured:
    config = PackedConfig()
    r = packed_scaling.measure(rows, rounds, config.ring, config.moduli_bits, config.query_scale_bits, seed)
    best_s = 0.0
    if groups_of > 1:  # the client's best row per track (embedding-knn-packed's scores)
        scores, groups = np.random.default_rng(seed).normal(size=rows), np.arange(rows) // groups_of
        started = time.perf_counter()
        best_per_group(scores, groups)
        best_s = time.perf_counter() - started
    return Measured(
        design, rows // groups_of, r["query_bytes"], r["answer_bytes"], r["key_bytes"], r["server_s"], r["encrypt_s"],
        r["decrypt_s"] + best_s, rounds, r["build_s"] + r["server_load_s"] + r["keygen_s"], r["shards"],
        f"{rows:,} rows, {r['shards']} shard(s), BSGS {r['baby x giant']}, {r['rotations']} rotations; "
        f"max |CKKS error| {r['max_abs_error']:.1e}", server_min_s=r["server_s_min"])


def measure_packed_head(n_tracks: int, rounds: int, seed: int, work: Path) -> Measured:
    """``embedding-head-packed``: one row a track (:func:`packed_scaling.measure`)."""
    return _packed("embedding-head-packed", n_tracks, rounds, seed)


def measure_knn_packed(n_tracks: int, rounds: int, seed: int, work: Path) -> Measured:
    """``embedding-knn-packed``: :data:`ROWS_PER_TRACK` rows a track, then the best row per track."""
    return _packed("embedding-knn-packed", n_tracks * ROWS_PER_TRACK, rounds, seed, ROWS_PER_TRACK)


def packed_shards(rows: int) -> int:
    return plan(DIM, rows, PackedConfig().ring, PackedConfig().moduli_bits, PackedConfig().query_scale_bits).shards


def packed_rotation_keys(rows: int) -> int:
    """Galois keys the client uploads for a head of ``rows`` rows (the BSGS split depends on the shards)."""
    config = PackedConfig()
    return len(plan(DIM, rows, config.ring, config.moduli_bits, config.query_scale_bits).steps())


# ----------------------------------------------------------------------------------------------
# the GLWE matrix product of concrete-ml-extensions


def glwe_params() -> dict:
    """The extension's default parameters (those Concrete ML's GLWE executor uses)."""
    import concrete_ml_extensions as fhext

    return json.loads(fhext.default_params())


def glwe_noise_bound(params: dict) -> int:
    """The largest decoding error accepted on a raw product: the product is encoded in the top
    ``bits_reserved_for_computation`` bits of the 64-bit ciphertext and comes back with additive
    noise, whose standard deviation measured here was about ``2^(bits - 23)`` (13-15 at the
    default 27 bits, whatever the product's magnitude; Zama's own tests compare only the 10 most
    significant bits); the bound is 8 times that."""
    return 2 ** (int(params["bits_reserved_for_computation"]) - 20)


def glwe_encode_weights(W: np.ndarray, n_bits: int = 8) -> dict:
    """Concrete ML's static per-channel quantization of the clear matrix ``W (d, N)``
    (``GLWELinearLayerExecutor._per_channel_weight_quantization``): each column ``j`` affinely
    onto the *signed* range ``[-2^(b-1), 2^(b-1) - 1]`` with scale ``s_j`` and zero point ``z_j``."""
    q_min, q_max = -(2 ** (n_bits - 1)), 2 ** (n_bits - 1) - 1
    lo, hi = W.min(axis=0), W.max(axis=0)
    scale = np.where(hi > lo, (hi - lo) / (q_max - q_min), 1.0)
    zero = np.round(q_min - lo / scale)
    q = np.clip(np.round(W / scale) + zero, q_min, q_max).astype(np.int64)
    return {"q": q, "scale": scale, "zero": zero.astype(np.int64), "sum": q.sum(axis=0), "dim": W.shape[0]}


def glwe_public(weights: dict) -> dict:
    """What the client needs of the server's quantized matrix to decode: each column's scale,
    zero point and sum of quantized weights (per-track figures of the library, not the matrix)."""
    return {key: weights[key] for key in ("scale", "zero", "sum", "dim")}


def glwe_encode_query(x: np.ndarray, n_bits: int = 8) -> dict:
    """Concrete ML's dynamic quantization of a query row ``x (1, d)``
    (``_dynamic_input_quantization``): affinely onto the *unsigned* range ``[0, 2^b - 1]``.

    The extension computes on ``uint64`` arrays modulo 2^64: the query is encrypted unsigned, the
    signed weights are passed as their two's complement (``int64 -> uint64``), and the decrypted
    ``uint64`` product is read back as ``int64`` (two's complement again); zero points are taken
    out afterwards (:func:`glwe_decode`)."""
    q_min, q_max = 0, 2**n_bits - 1
    lo, hi = float(x.min()), float(x.max())
    scale = (hi - lo) / (q_max - q_min) if hi > lo else 1.0
    zero = round((q_min - lo) / scale)
    q = np.clip(np.round(x / scale) + zero, q_min, q_max).astype(np.int64)
    return {"q": q, "scale": scale, "zero": int(zero)}


def glwe_decode(raw: np.ndarray, query: dict, weights: dict) -> np.ndarray:
    """Scores ``(1, N)`` of a decrypted raw product ``raw (1, N)`` int64:
    ``raw - (z_w * sum(x_q) + z_x * sum_j(w_q) - z_x * z_w * d)``, times ``s_x * s_w``
    (``_apply_correction_and_dequantize``)."""
    d = weights["dim"]
    correction = (weights["zero"] * query["q"].sum() + query["zero"] * weights["sum"]
                  - query["zero"] * weights["zero"] * d)
    return (raw - correction) * query["scale"] * weights["scale"]


def glwe_check(raw: np.ndarray, query: dict, weights: dict, params: dict) -> tuple[float, str | None]:
    """``(max |error|, reason or None)`` of a decrypted raw product against the clear integer
    product ``x_q @ w_q``: the reason when an error exceeds :func:`glwe_noise_bound`."""
    exact = query["q"] @ weights["q"]
    error = np.abs(raw.astype(np.int64) - exact)
    bound = glwe_noise_bound(params)
    worst = float(error.max())
    if worst > bound:
        return worst, (f"decoded product differs from the clear x_q @ w_q by up to {worst:.0f} (bound {bound}, "
                       f"{int((error > bound).sum())} of {error.size} values): wrong encoding")
    return worst, None


class GlweServer:
    """The server of the GLWE design: the clear quantized matrix and a client's compression key."""

    def __init__(self, weights: dict, key: bytes) -> None:
        import concrete_ml_extensions as fhext

        self.fhext = fhext
        self.data = np.ascontiguousarray(weights["q"].astype(np.uint64))  # two's complement of the signed weights
        self.key = fhext.deserialize_compression_key(key)

    def run(self, query: bytes) -> bytes:
        encrypted = self.fhext.EncryptedMatrix.deserialize(query)
        result = self.fhext.matrix_multiplication(encrypted_matrix=encrypted, data=self.data,
                                                  compression_key=self.key)
        return result.serialize()


class GlweClient:
    """The client of the GLWE design: private key, encoding, encryption and decoding."""

    def __init__(self, public: dict) -> None:
        """``public``: :func:`glwe_public` of the server's matrix."""
        import concrete_ml_extensions as fhext

        self.fhext = fhext
        self.params_json = glwe_params()
        self.params = fhext.MatmulCryptoParameters.deserialize(json.dumps(self.params_json))
        self.private_key, self._compression_key = fhext.create_private_key(self.params)
        self.public = public
        self._last: dict | None = None

    def evaluation_keys(self) -> bytes:
        return self._compression_key.serialize()

    def encrypt(self, x: np.ndarray) -> bytes:
        self._last = glwe_encode_query(np.asarray(x, dtype=np.float64).reshape(1, -1))
        data = np.ascontiguousarray(self._last["q"].astype(np.uint64))
        return self.fhext.encrypt_matrix(pkey=self.private_key, crypto_params=self.params, data=data).serialize()

    def decrypt_raw(self, answer: bytes, n_columns: int) -> np.ndarray:
        poly = int(self.params_json["polynomial_size"])
        result = self.fhext.CompressedResultEncryptedMatrix.deserialize(answer)
        raw = self.fhext.decrypt_matrix(result, self.private_key, self.params, n_columns % poly or poly)
        return np.asarray(raw).astype(np.int64).reshape(1, -1)[:, :n_columns]  # uint64 -> two's complement

    def decrypt(self, answer: bytes, n_columns: int) -> np.ndarray:
        return glwe_decode(self.decrypt_raw(answer, n_columns), self._last, self.public)


def glwe_roundtrip(n_tracks: int, rounds: int, seed: int) -> dict:
    """Keys, then ``rounds`` queries of the GLWE design over a random head ``(n_tracks, DIM)``:
    sizes, seconds, and per query the raw decrypted product, the clear one and the scores
    (decoded, clear quantized, float)."""
    W, b = random_head(n_tracks, seed)
    X = unit_rows(rounds, seed + 7)
    started = time.perf_counter()
    weights = glwe_encode_weights(W.T)
    client = GlweClient(glwe_public(weights))
    key = client.evaluation_keys()
    server = GlweServer(weights, key)
    setup_s = time.perf_counter() - started
    out = {"setup_s": setup_s, "key_bytes": len(key), "params": client.params_json, "queries": [], "answers": [],
           "encrypt": [], "serve": [], "decrypt": [], "raw": [], "exact": [], "scores": [], "clear": [], "float": []}
    for x in X:
        started = time.perf_counter()
        query = client.encrypt(x)
        encrypted = time.perf_counter()
        answer = server.run(query)
        served = time.perf_counter()
        scores = client.decrypt(answer, n_tracks)
        out["decrypt"].append(time.perf_counter() - served)
        out["encrypt"].append(encrypted - started)
        out["serve"].append(served - encrypted)
        out["queries"].append(len(query))
        out["answers"].append(len(answer))
        encoded = glwe_encode_query(x[None])
        out["raw"].append(client.decrypt_raw(answer, n_tracks))
        out["exact"].append(encoded["q"] @ weights["q"])
        out["scores"].append(scores[0])
        out["clear"].append(glwe_decode(encoded["q"] @ weights["q"], encoded, weights)[0])
        out["float"].append(W @ x)
    out["encoded_queries"] = [glwe_encode_query(x[None]) for x in X]
    out["weights"] = weights
    return out


def glwe_answer_bytes(n_columns: int, params: dict, overhead: int = 0) -> int:
    """The answer's size model: one packed GLWE mask of ``polynomial_size`` coefficients per
    ``polynomial_size`` columns and one body coefficient per column, each of
    ``output_storage_ciphertext_modulus`` bits, plus the serialization's ``overhead``."""
    poly, bits = int(params["polynomial_size"]), int(params["output_storage_ciphertext_modulus"])
    return math.ceil(n_columns / poly) * poly * bits // 8 + math.ceil(n_columns * bits / 8) + overhead


def measure_glwe(n_tracks: int, rounds: int, seed: int, work: Path) -> Measured:
    """``glwe-matmul``: a 1 x 64 encrypted query against the clear 64 x N matrix; a
    :class:`PointFailed` when a decoded product is wrong (:func:`glwe_check`)."""
    r = glwe_roundtrip(n_tracks, rounds, seed)
    worst, top1 = 0.0, 0
    for raw, encoded, scores, clear in zip(r["raw"], r["encoded_queries"], r["scores"], r["clear"]):
        error, reason = glwe_check(raw, encoded, r["weights"], r["params"])
        if reason is not None:
            raise PointFailed(f"glwe-matmul at {n_tracks:,} tracks: {reason}")
        worst = max(worst, error)
        top1 += int(np.argmax(scores) == np.argmax(clear))
    answer = int(statistics.median(r["answers"]))
    overhead = answer - glwe_answer_bytes(n_tracks, r["params"])
    return Measured(
        "glwe-matmul", n_tracks, int(statistics.median(r["queries"])), answer, r["key_bytes"],
        statistics.median(r["serve"]), statistics.median(r["encrypt"]), statistics.median(r["decrypt"]), rounds,
        r["setup_s"], n_tracks,
        f"decoded x_q @ w_q max |error| {worst:.0f} (bound {glwe_noise_bound(r['params'])}); top-1 = clear quantized "
        f"on {top1}/{rounds}; answer {overhead:+d} B against its size model", server_min_s=min(r["serve"]))


# ----------------------------------------------------------------------------------------------
# the designs


def _per_unit_answer(design_units: Callable[[int], float], unit: str) -> tuple[Callable, Callable]:
    def answer(m: Measured, n: int) -> float:
        return m.answer_bytes * design_units(n) / m.units

    def formula(m: Measured) -> str:
        return f"answer {m.answer_bytes / m.units:,.0f} B/{unit}"

    return answer, formula


def _glwe_answer(m: Measured, n: int) -> float:
    params = glwe_params()
    return glwe_answer_bytes(n, params, m.answer_bytes - glwe_answer_bytes(m.n_tracks, params))


def _glwe_answer_formula(m: Measured) -> str:
    params = glwe_params()
    mask = int(params["polynomial_size"]) * int(params["output_storage_ciphertext_modulus"]) // 8
    return (f"answer ceil(N/{params['polynomial_size']}) x {mask:,} B + "
            f"N x {params['output_storage_ciphertext_modulus'] / 8:g} B (+ layout, fit at {m.n_tracks:,})")


def _knn_rows(n: int) -> int:
    return n * ROWS_PER_TRACK


# Reported elsewhere (CHANGELOG, 2026-12-01, commit a28605f: 64 tracks, the privacy ledger of the
# main job on 2 cores): the top-1 head's true call "about 4 s" (4.2 s a query), 16.7 KB down,
# 146 MB of evaluation keys, a 1.8 KB request; the leaky two-stage CNN (5 clusters, 4-bit CNN,
# k = 1) 43 s a query (two classifier calls of 17-31 s of server time), 603 KB down.
TOP1_REPORTED = Measured("embedding-head-top1", 64, 1_800, 16_700, 146_000_000, 4.2, math.nan, math.nan, 0, math.nan,
                         top1_pbs(64), "reported: CHANGELOG 2026-12-01 (a28605f), privacy ledger, 64 tracks")
TWO_STAGE_REPORTED = Measured("two-stage-cnn", 64, -1, 603_000, -1, 43.0, math.nan, math.nan, 0, math.nan, 1,
                              "reported: CHANGELOG 2026-12-01 (a28605f), leaky k = 1, 5 clusters, 4-bit CNN: "
                              "43 s a query (two calls of 17-31 s server time, client included), 603 KB down a "
                              "segment; query and key bytes not recorded; cost set by the clusters' size, not "
                              "measured against N")

def _tracks(n: int) -> float:
    return float(n)


def _knn_shards(n: int) -> float:
    return packed_shards(_knn_rows(n))


def _designs() -> dict[str, Design]:
    head_answer, head_formula = _per_unit_answer(_tracks, "track")
    packed_answer, packed_formula = _per_unit_answer(packed_shards, "shard")
    knn_answer, knn_formula = _per_unit_answer(_knn_shards, "shard")
    rotation_keys = "keys x rotation keys at N / at this size"
    return {d.name: d for d in (
        Design("embedding-head", measure_linear_head, "track", _tracks, head_answer, head_formula),
        Design("embedding-head-top1", measure_top1_head, "PBS", lambda n: float(top1_pbs(n)),
               lambda m, n: m.answer_bytes, lambda m: "answer one ciphertext, as measured",
               keys_formula=lambda m: "keys as at this size (the index field widens with N: not re-measured)",
               reported=TOP1_REPORTED),
        Design("embedding-head-packed", measure_packed_head, "shard", packed_shards, packed_answer, packed_formula,
               keys=lambda m, n: m.key_bytes * packed_rotation_keys(n) / packed_rotation_keys(m.n_tracks),
               keys_formula=lambda m: rotation_keys),
        Design("embedding-knn-packed", measure_knn_packed, "shard", _knn_shards, knn_answer, knn_formula,
               keys=lambda m, n: (m.key_bytes * packed_rotation_keys(_knn_rows(n))
                                  / packed_rotation_keys(_knn_rows(m.n_tracks))),
               keys_formula=lambda m: rotation_keys),
        Design("glwe-matmul", measure_glwe, "column", _tracks, _glwe_answer, _glwe_answer_formula),
        Design("two-stage-cnn", None, "query", lambda n: 1.0, reported=TWO_STAGE_REPORTED,
               extrapolate_reported=False),
    )}


DESIGNS: dict[str, Design] = _designs()


# ----------------------------------------------------------------------------------------------
# rows: measured, estimated, reported


def _nan_if_negative(value: float) -> float:
    return math.nan if value is None or value < 0 else value


def measured_row(m: Measured, estimate: str = "no") -> dict:
    if estimate == "reported":
        how = m.check
    else:
        how = (f"measured: median of {m.rounds} quer{'y' if m.rounds == 1 else 'ies'} (server min "
               f"{1000 * m.server_min_s:.1f} ms), setup {m.setup_s:.1f} s"
               + (f", peak memory +{m.peak_rss_bytes / 1e6:,.0f} MB" if m.peak_rss_bytes else "") + f"; {m.check}")
    return {"design": m.design, "n_tracks": m.n_tracks, "query_bytes": _nan_if_negative(m.query_bytes),
            "answer_bytes": _nan_if_negative(m.answer_bytes), "key_bytes": _nan_if_negative(m.key_bytes),
            "server_s": m.server_s, "client_s": m.encrypt_s + m.decrypt_s, "estimate": estimate, "how": how}


def extrapolate(design: Design, m: Measured, n: int, reason: str = "") -> dict:
    """The estimated row of ``design`` at ``n`` tracks from its point ``m``: server seconds per
    cost unit; answer and keys by the design's own rules; encryption as measured, decryption in
    proportion to the answer."""
    answer = design.answer(m, n)
    server = m.server_s * design.units(n) / m.units
    client = m.encrypt_s + m.decrypt_s * answer / m.answer_bytes
    source = "the reported point" if m.rounds == 0 else "measured"
    how = (f"estimate from {m.n_tracks:,} tracks ({source}): server {_seconds(m.server_s / m.units)}/{design.unit} "
           f"x {design.units(n):,.0f} {_plural(design.unit)}; {design.answer_formula(m)}; client encrypt as measured + "
           f"decrypt x answer ratio; {design.keys_formula(m)}" + (f" [{reason}]" if reason else ""))
    return {"design": design.name, "n_tracks": n, "query_bytes": m.query_bytes, "answer_bytes": answer,
            "key_bytes": design.keys(m, n), "server_s": server, "client_s": client, "estimate": "yes", "how": how}


def _affine(points: list[Measured], units: float, value: Callable[[Measured], float]) -> float | None:
    """``value`` at ``units`` through the two largest points (fixed part + a non-negative slope per
    unit); ``None`` from one point, which cannot tell a fixed cost from one that grows."""
    if len(points) < 2:
        return None
    (u1, v1), (u2, v2) = [(p.units, value(p)) for p in points[-2:]]
    slope = max((v2 - v1) / (u2 - u1), 0.0) if u2 > u1 else 0.0
    return v2 + slope * (units - u2)


def refusal(design: Design, points: list[Measured], n: int, limits: Limits) -> tuple[str | None, float]:
    """``(why the point at n tracks is not run for real or None, one query's predicted seconds)``:
    a query's seconds per cost unit from the largest point; the setup and the memory through the
    two largest (the setup from one point: in proportion to the cost units)."""
    m = points[-1]
    row = extrapolate(design, m, n)
    call_s = row["server_s"] + (0.0 if math.isnan(row["client_s"]) else row["client_s"])
    units = design.units(n)
    setup = _affine(points, units, lambda p: p.setup_s)
    setup = m.setup_s * units / m.units if setup is None else setup
    memory = _affine(points, units, lambda p: p.base_rss_bytes + p.peak_rss_bytes)
    if call_s > limits.seconds:
        return f"one query predicted {call_s:.0f} s > --max-seconds {limits.seconds:g}", call_s
    if setup > limits.setup_seconds:
        return f"setup predicted {setup:.0f} s > --max-setup-seconds {limits.setup_seconds:g}", call_s
    if memory is not None and memory > limits.memory_bytes:
        return f"memory predicted {memory / GIB:.1f} GiB > --max-memory-gb {limits.memory_bytes / GIB:g}", call_s
    return None, call_s


def _plural(unit: str) -> str:
    return unit if unit.isupper() else unit + "s"


def _seconds(s: float) -> str:
    return f"{1000 * s:.3g} ms" if s < 1 else f"{s:.3g} s"


# ----------------------------------------------------------------------------------------------
# running points


def _child(name: str, n_tracks: int, rounds: int, seed: int, work: str, conn) -> None:
    """A point in a child process: the :class:`Measured` fields (or the error) sent on ``conn``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        m = DESIGNS[name].measure(n_tracks, rounds, seed, Path(work))
        grown = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0)
        conn.send(("ok", asdict(replace(m, peak_rss_bytes=grown * 1024, base_rss_bytes=before * 1024))))
    except PointFailed as e:
        conn.send(("failed", str(e)))
    except Exception as e:  # noqa: BLE001 -- any error of a child is reported to the parent, which goes on estimating
        conn.send(("failed", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_point(design: Design, n_tracks: int, rounds: int, seed: int, limits: Limits, isolate: bool) -> Measured:
    """Measure ``design`` at ``n_tracks`` (``rounds`` timed queries) in a child process killed
    when it outlives the setup and query limits (plus a minute to start) or its resident memory
    passes the memory limit (``isolate``), or in this one; a :class:`PointFailed` when it cannot."""
    work = Path(tempfile.mkdtemp(prefix=f"ppazam-design-{design.name}-{n_tracks}-"))
    try:
        if not isolate:
            return design.measure(n_tracks, rounds, seed, work)
        return _in_child(design.name, n_tracks, rounds, seed, work, limits)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _resident_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` (``/proc``; 0 when unknown)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _in_child(name: str, n_tracks: int, rounds: int, seed: int, work: Path, limits: Limits) -> Measured:
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no state shared with Concrete or SEAL here
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(name, n_tracks, rounds, seed, str(work), send))
    deadline = time.monotonic() + limits.setup_seconds + limits.seconds + 60
    child.start()
    send.close()
    got, killed = None, None
    try:
        while got is None and killed is None:
            if receive.poll(1.0):
                got = receive.recv()
            elif time.monotonic() > deadline:
                killed = f"no result within {limits.setup_seconds + limits.seconds + 60:.0f} s (child killed)"
            elif (resident := _resident_bytes(child.pid)) > limits.memory_bytes:
                killed = (f"resident memory {resident / GIB:.1f} GiB > --max-memory-gb "
                          f"{limits.memory_bytes / GIB:g} (child killed)")
    except EOFError:  # the child ended without a word
        pass
    finally:
        if got is None and child.is_alive():
            child.kill()
        child.join()
        receive.close()
    if got is None:
        raise PointFailed(killed or f"the child process died (exit code {child.exitcode}; out of memory?)")
    status, payload = got
    if status != "ok":
        raise PointFailed(payload)
    return Measured(**payload)


def scale_design(design: Design, sizes: tuple[int, ...], rounds: int, limits: Limits, seed: int = 0,
                 isolate: bool = True, measure: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """Every row of one design at ``sizes`` (see the module docstring); ``measure=False``: from its
    reported figures only."""
    if design.reported is not None and not design.extrapolate_reported and (design.measure is None or not measure):
        return [measured_row(design.reported, "reported")]  # its one point, whatever the sizes
    rows: list[dict] = []
    points: list[Measured] = []
    stopped = None if measure and design.measure is not None else "not measured here"
    for n in sorted(set(sizes)):
        if stopped is None:
            rounds_here = rounds
            if points:
                stopped, call_s = refusal(design, points, n, limits)
                rounds_here = max(1, min(rounds, int(limits.seconds // max(call_s, 1e-9))))
            if stopped is None:
                log(f"  {design.name} at {n:,} tracks: measuring ({rounds_here} queries)...")
                try:
                    m = run_point(design, n, rounds_here, seed, limits, isolate)
                except PointFailed as e:
                    stopped = f"failed at {n:,} tracks: {e}"
                    log(f"  {design.name} at {n:,} tracks: {stopped}")
                else:
                    points.append(m)
                    rows.append(measured_row(m))
                    log(f"  {design.name} at {n:,} tracks: server {_seconds(m.server_s)}, answer "
                        f"{m.answer_bytes / 1e3:,.1f} KB, setup {m.setup_s:.1f} s")
                    continue
        base = points[-1] if points else design.reported
        if base is None:
            rows.append({"design": design.name, "n_tracks": n, "estimate": "none", "how": f"no figure: {stopped}"})
        elif not points and n == base.n_tracks:
            rows.append(measured_row(base, "reported"))
        else:
            rows.append(extrapolate(design, base, n, stopped or ""))
    return rows


def scaling(designs: list[str], sizes: tuple[int, ...], rounds: int, limits: Limits, seed: int = 0,
            isolate: bool = True, estimate_only: frozenset[str] = frozenset(),
            log: Callable[[str], None] = print) -> pd.DataFrame:
    """The rows of every design in ``designs`` (names of :data:`DESIGNS`), in :data:`COLUMNS`."""
    unknown = sorted(set(designs) - set(DESIGNS))
    if unknown:
        raise ValueError(f"unknown design(s) {unknown}; choose among {', '.join(DESIGNS)}")
    rows = []
    for name in designs:
        rows += scale_design(DESIGNS[name], sizes, rounds, limits, seed, isolate, name not in estimate_only, log)
    frame = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    for column in ("query_bytes", "answer_bytes", "key_bytes"):
        frame[column] = pd.to_numeric(frame[column]).round().astype("Int64")
    return frame


# ----------------------------------------------------------------------------------------------
# output


def table(rows: pd.DataFrame) -> str:
    """A short text table of ``rows``."""
    lines = [f"{'design':22} {'tracks':>8} {'query KB':>9} {'answer KB':>11} {'keys MB':>8} {'server ms':>10} "
             f"{'client ms':>9}  estimate"]

    def number(value, scale, digits):
        return "-" if pd.isna(value) else f"{value / scale:,.{digits}f}"

    for row in rows.itertuples():
        lines.append(f"{row.design:22} {row.n_tracks:>8,} {number(row.query_bytes, 1e3, 1):>9} "
                     f"{number(row.answer_bytes, 1e3, 1):>11} {number(row.key_bytes, 1e6, 2):>8} "
                     f"{number(row.server_s, 1e-3, 1):>10} {number(row.client_s, 1e-3, 1):>9}  {row.estimate}")
    return "\n".join(lines)


TARGETS = (  # issue 32: (design, tracks, column, at most, what)
    ("embedding-head-packed", 4096, "answer_bytes", 64e3, "answer <= 64 KB"),
    ("embedding-head-packed", 4096, "query_bytes", 64e3, "query <= 64 KB"),
    ("embedding-head-packed", 4096, "server_s", 0.050, "server <= 50 ms"),
    ("embedding-head-packed", 4096, "key_bytes", 20e6, "keys <= 20 MB"),
    ("embedding-head-packed", 100_000, "answer_bytes", 1.5e6, "answer <= 1.5 MB"),
    ("embedding-head-packed", 100_000, "server_s", 1.5, "server <= 1.5 s"),
)


def targets(rows: pd.DataFrame) -> list[str]:
    """The issue's targets against ``rows`` (``pass``/``FAIL``/``n/a``, with the figure and
    whether it was measured)."""

    def value(design, n, column):
        hit = rows[(rows["design"] == design) & (rows["n_tracks"] == n)]
        if hit.empty or pd.isna(hit[column].iloc[0]):
            return None, None
        return float(hit[column].iloc[0]), {"no": "measured"}.get(hit["estimate"].iloc[0], hit["estimate"].iloc[0])

    def shown(got, column):
        if column == "server_s":
            return f"{got * 1e3:,.1f} ms"
        return f"{got / 1e6:,.2f} MB" if got >= 1e6 else f"{got / 1e3:,.1f} KB"

    out = []
    for design, n, column, limit, what in TARGETS:
        got, how = value(design, n, column)
        if got is None:
            out.append(f"n/a   {design} at {n:,}: {what} (no figure)")
        else:
            verdict = "pass" if got <= limit else "FAIL"
            out.append(f"{verdict:5} {design} at {n:,}: {what}: {shown(got, column)} ({how})")
    packed, packed_how = value("embedding-head-packed", 1000, "answer_bytes")
    head, head_how = value("embedding-head", 1000, "answer_bytes")
    if packed is None or head is None:
        out.append("n/a   1,000 tracks: answer >= 100x smaller than embedding-head's (no figure)")
    else:
        out.append(f"{'pass' if head >= 100 * packed else 'FAIL':5} 1,000 tracks: answer {head / packed:.0f}x smaller "
                   f"than embedding-head's ({shown(packed, 'answer_bytes')}, {packed_how}, against "
                   f"{shown(head, 'answer_bytes')}, {head_how}; >= 100x asked)")
    return out


def _versions() -> dict:
    out = {}
    for name in ("concrete-ml", "concrete-python", "concrete-ml-extensions", "tenseal", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write(rows: pd.DataFrame, out: Path, record: dict | None = None) -> Path:
    """``out/design_scaling.csv``, ``.png`` and ``.json`` (``record``: what ran, how); refuses a
    folder that already holds results."""
    out = Path(out)
    if (out / CSV_FILE).exists():
        raise FileExistsError(f"{out / CSV_FILE} exists; give a new --out folder (results are never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / CSV_FILE, index=False)
    save_design_scaling(rows, out / FIGURE_FILE)
    (out / RECORD_FILE).write_text(json.dumps({**(record or {}), "versions": _versions(), "build": build_record()},
                                              indent=2, default=str))
    return out / CSV_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the CSV, figure and record")
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    parser.add_argument("--estimate-only", nargs="+", default=[], choices=list(DESIGNS),
                        help="designs not measured here: estimated from their reported figures")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3, help="timed queries a point at most (median reported)")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="a point runs for real when its timed queries fit this (at least one query)")
    parser.add_argument("--max-setup-seconds", type=float, default=600.0,
                        help="... and its build, compile and key generation fit this")
    parser.add_argument("--max-memory-gb", type=float, default=4.0, help="... and its memory growth fits this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-isolate", action="store_true", help="measure in this process (no memory figure)")
    args = parser.parse_args(argv)
    if (args.out / CSV_FILE).exists():
        parser.error(f"{args.out / CSV_FILE} exists; give a new --out folder")
    if args.rounds < 1 or min(args.sizes) < 2:
        parser.error("--rounds must be >= 1 and every size >= 2 tracks")
    limits = Limits(args.max_seconds, args.max_setup_seconds, args.max_memory_gb * GIB)
    started = time.time()
    load = os.getloadavg()
    print(f"design scaling: {DIM}-dim queries, sizes {args.sizes}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} at the start; limits a point: queries {limits.seconds:g} s, setup "
          f"{limits.setup_seconds:g} s, memory {args.max_memory_gb:g} GiB", flush=True)
    rows = scaling(args.designs, tuple(args.sizes), args.rounds, limits, args.seed, not args.no_isolate,
                   frozenset(args.estimate_only), log=lambda line: print(line, flush=True))
    record = {"command": " ".join([sys.executable, *sys.argv]), "limits": asdict(limits), "rounds": args.rounds,
              "sizes": args.sizes, "load_average_start": load, "load_average_end": os.getloadavg(),
              "wall_s": time.time() - started}
    path = write(rows, args.out, record)
    print(table(rows))
    print("\nissue 32 targets (embedding-head-packed):")
    print("\n".join(targets(rows)))
    print(f"\nwrote {path}, {args.out / FIGURE_FILE} and {args.out / RECORD_FILE} "
          f"({time.time() - started:.0f} s; load average at the end {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
