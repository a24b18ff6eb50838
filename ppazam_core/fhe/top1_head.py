"""Oblivious-answer linear head: the server computes the encrypted decision values of every
track *and* their encrypted argmax, and answers with one ciphertext from which the client
decodes the top-1 track index and a coarse score (``score_bits`` bits) -- nothing about the
other tracks.

:mod:`ppazam_core.fhe.concrete`'s linear head answers with one ciphertext per track (~10 KB each: 0.6 MB
at 64 tracks, 10 MB at 1000) and costs no programmable bootstrapping (PBS). This head answers
16 KB whatever the library size, and pays for the argmax in PBS: ``4 N - 1`` of them for ``N``
tracks with approximate rounding (``N`` more per removed bit with exact rounding), none wider
than 7 bits with the defaults.

The circuit, built with concrete-python from a fitted linear classifier's float weights::

    q_x   (1, d) int, encrypted     the client's features, symmetric ``input_bits``-bit integers
    acc   = q_x @ W + b             W (d, N) clear ``weight_bits``-bit integers, b clear, offset
                                    so that acc >= 0 ((acc + offset) * scale ~ decision values)
    r     = round_bit_pattern(acc)  keeps ``rounding_bits`` MSBs                  (approx.: 0 PBS)
    v     = leaf(r)                 N PBS: score code clip(floor((r - low) / step), 0, 2**s - 1),
                                    low = the lowest best score of a calibration row
    knockout tournament, ceil(log2 N) levels; pairs (x, y) of neighbours, an odd one carried up:
      d     = y - x
      right = [d >= 0]              1 PBS per pair, s + 1 bits (ties go right)
      v'    = relu(d) + x           1 PBS per pair, s + 1 bits: max(x, y), still s bits wide
    wins  = sum over levels of right @ M_l + c_l     clear 0/+-1 matrices: per track, the levels
                                    its side won (no PBS)
    onehot = [wins == levels]       N PBS: exactly one champion, ties included
    out   = onehot @ (1..N) + (v_root << index_bits)     1 PBS; (1,) uint

The client reads ``index = (out & (2**index_bits - 1)) - 1`` and the score code ``out >>
index_bits``. Carrying the index inside the compared values instead (``(score << l) | path``,
``np.maximum``) needs two PBS per pair but no one-hot step; its values grow one bit per level,
and at 64 tracks the 10-bit PBS near the root needed 2**15-2**16-coefficient keys: 17 GB of
evaluation keys and a 512 KB answer, against 1.5 GB and 16 KB here (``size_of_*`` figures;
compressed and serialized, 146 MB).

Quantization: not Concrete ML's (``model._q_weights``, 8-bit inputs and weights: an 18-bit
accumulator and weight columns of 2-norm ~400 that multiply the input noise). 5-bit inputs and
4-bit weights, symmetric per tensor from ``sklearn_model.coef_`` (a 10-11 bit accumulator)
kept the argmax of Concrete ML's 8-bit model on 100% of the evaluation queries of the 6-, 16-
and 64-track embedding heads; what the bootstrapping costs is set by ``rounding_bits`` (the leaf
PBS precision) and ``score_bits``, not by the accumulator.

Errors: one PBS error in the tournament names another track, or none (the decoded index field
is then 0 or above N: :meth:`Top1Codec.decode` raises), so the circuit is compiled for a
*global* error probability (``global_p_error``: that any PBS of a run errs), not
``FheConfig.p_error``'s per-PBS one. Approximate rounding (``FheConfig.rounding_method``) may
round an accumulator on a rounding boundary either way: simulation then differs from
:class:`Top1Clear` (exact rounding) on those rows, by one score code.

Folder layout, as :func:`ppazam_core.fhe.concrete.save_compiled` writes::

    client/    client.zip (concrete ``client.specs.json`` + ``top1_codec.json`` + versions.json)
               and circuit.json
    server/    server.zip (``circuit.server.save(via_mlir=False)``, read by ``fhe.Server.load``)
               and circuit.json
    simulator.zip      the simulated server
    clear.json         the integer function (``Top1Spec``) for :class:`Top1Clear`
    circuit.json

:mod:`ppazam_core.fhe.deployment`'s client and server run it as they run Concrete ML's circuits
(both are concrete-python archives); the client's codec is :class:`Top1Codec` instead of Concrete
ML's quantizers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from concrete import fhe

from ppazam_core.artifacts import damaged, read_json, reading
from ppazam_core.config import FheConfig
from ppazam_core.errors import ArtifactError, FheError
from ppazam_core.fhe.concrete import CLEAR_FILE, CircuitStats, KeyLayout

CODEC_FILE = "top1_codec.json"
LOW_SCORE = -1e9  # the logit of every track but the decoded one in Top1Simulated/Top1Clear

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the integer function


@dataclass(frozen=True)
class Top1Spec:
    """The integer function of the circuit, enough to rebuild it or evaluate it in the clear.

    ``weights`` (d, N) and ``bias`` (N,) are integers; ``acc = q_x @ weights + bias`` (>= 0 on
    calibration: ``(acc + offset) * scale`` is the quantized decision value);
    ``lsbs_to_remove`` bits are rounded off ``acc``; ``low`` and ``step`` (in ``acc`` units)
    define the score code ``clip(floor((rounded - low) / step), 0, 2**score_bits - 1)``.
    """

    weights: np.ndarray
    bias: np.ndarray
    lsbs_to_remove: int
    low: float
    step: float
    score_bits: int
    offset: int = 0
    scale: float = 1.0

    @property
    def n_classes(self) -> int:
        return int(self.weights.shape[1])

    def leaf(self, rounded: np.ndarray) -> np.ndarray:
        """Score codes of rounded accumulators (the leaf table)."""
        codes = np.floor((np.asarray(rounded, dtype=np.float64) - self.low) / self.step)
        return np.clip(codes, 0, 2**self.score_bits - 1).astype(np.int64)

    def function(self):
        """The function concrete-python traces: ``q_x (1, d)`` -> ``(1,)``."""
        weights, bias, lsbs, leaf = self.weights, self.bias, self.lsbs_to_remove, self.leaf
        n_classes, levels, shift = self.n_classes, tournament_levels(self.n_classes), index_bits(self.n_classes)

        def top1(q_x):
            acc = q_x @ weights + bias
            if lsbs > 0:
                acc = fhe.round_bit_pattern(acc, lsbs_to_remove=lsbs)
            v = fhe.univariate(leaf)(acc)
            if n_classes == 1:
                return fhe.univariate(lambda m: (m << shift) + 1)(v)[:, 0]
            wins = None
            for matrix, _ in levels:
                n, half = v.shape[1], v.shape[1] // 2
                x, y = v[:, 0 : 2 * half : 2], v[:, 1 : 2 * half : 2]
                d = y - x
                right = fhe.univariate(_right_wins)(d)
                best = fhe.univariate(_relu)(d) + x
                v = np.concatenate((best, v[:, n - 1 : n]), axis=1) if n % 2 else best
                wins = right @ matrix if wins is None else wins + right @ matrix
            onehot = fhe.univariate(_equals(len(levels)))(wins + _win_constant(levels))
            return onehot @ np.arange(1, n_classes + 1, dtype=np.int64) + fhe.univariate(_shifted(shift))(v)[:, 0]

        return top1

    def clear(self, q_X: np.ndarray) -> np.ndarray:
        """The circuit's outputs ``(n,)`` int64 computed in numpy for ``q_X (n, d)``, rounding
        exactly (ties up, as Concrete's exact ``round_bit_pattern``)."""
        acc = np.asarray(q_X, dtype=np.int64) @ self.weights + self.bias
        if self.lsbs_to_remove > 0:
            half = 1 << (self.lsbs_to_remove - 1)
            acc = ((acc + half) >> self.lsbs_to_remove) << self.lsbs_to_remove
        v = self.leaf(acc)
        shift, levels = index_bits(self.n_classes), tournament_levels(self.n_classes)
        if self.n_classes == 1:
            return (v[:, 0] << shift) + 1
        wins = np.zeros((len(v), self.n_classes), dtype=np.int64)
        for matrix, _ in levels:
            n, half = v.shape[1], v.shape[1] // 2
            x, y = v[:, 0 : 2 * half : 2], v[:, 1 : 2 * half : 2]
            d = y - x
            best = _relu(d) + x
            v = np.concatenate((best, v[:, n - 1 : n]), axis=1) if n % 2 else best
            wins += _right_wins(d) @ matrix
        onehot = _equals(len(levels))(wins + _win_constant(levels))
        return onehot @ np.arange(1, self.n_classes + 1, dtype=np.int64) + _shifted(shift)(v[:, 0])

    def to_json(self) -> dict:
        return {"weights": self.weights.tolist(), "bias": self.bias.tolist(), "lsbs_to_remove": self.lsbs_to_remove,
                "low": self.low, "step": self.step, "score_bits": self.score_bits, "offset": self.offset,
                "scale": self.scale}

    @classmethod
    def from_json(cls, data: dict) -> "Top1Spec":
        return cls(np.asarray(data["weights"], dtype=np.int64), np.asarray(data["bias"], dtype=np.int64),
                   int(data["lsbs_to_remove"]), float(data["low"]), float(data["step"]), int(data["score_bits"]),
                   int(data["offset"]), float(data["scale"]))


def _right_wins(d):
    return (d >= 0).astype(np.int64)


def _relu(d):
    return np.maximum(d, 0)


def _equals(target: int):
    def equals(count):
        return (count == target).astype(np.int64)

    return equals


def _shifted(shift: int):
    def shifted(m):
        return m << shift

    return shifted


def _win_constant(levels: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return sum(constant for _, constant in levels)


def tournament_levels(n_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pairings of the knockout tournament over ``n_classes`` tracks (pairs of neighbours,
    an odd one out carried up), one ``(matrix (n_pairs, n_classes) int64, constant (n_classes,)
    int64)`` per level: with ``right`` the level's ``(1, n_pairs)`` 0/1 "the right one won",
    ``right @ matrix + constant`` adds 1 for every track whose side won that level. The track
    that won all ``len(levels)`` levels is the champion: exactly one, ties included."""
    groups: list[list[int]] = [[j] for j in range(n_classes)]
    levels = []
    while len(groups) > 1:
        pairs = len(groups) // 2
        matrix = np.zeros((pairs, n_classes), dtype=np.int64)
        constant = np.zeros(n_classes, dtype=np.int64)
        merged = []
        for i in range(pairs):
            left, right = groups[2 * i], groups[2 * i + 1]
            matrix[i, left], constant[left] = -1, 1  # the left side wins when right == 0
            matrix[i, right] = 1
            merged.append(left + right)
        if len(groups) % 2:
            constant[groups[-1]] = 1  # carried up: wins the level by default
            merged.append(groups[-1])
        levels.append((matrix, constant))
        groups = merged
    return levels


def index_bits(n_classes: int) -> int:
    """Bits of the output's index field, which holds ``index + 1`` (0: no champion, an error)."""
    return int(n_classes).bit_length()


# ----------------------------------------------------------------------------------------------
# the client's codec


@dataclass(frozen=True)
class Top1Codec:
    """What the client needs besides the keys: input quantization and the output's decoding.

    ``quantize``: ``q = clip(rint(x / input_scale), -m, m)``, ``m = 2**(input_bits - 1) - 1``
    (symmetric, zero point 0). ``decode``: the output is ``(score code << index_bits) | (index + 1)``
    (an index field of 0 or above ``n_classes``: no single champion, a PBS error); a code ``c``
    stands for decision values in
    ``[score_low + c * score_step, score_low + (c + 1) * score_step)`` (``c = 0``: anything lower
    too), reported at the bin's middle, in the units of the model's ``decision_function``.
    """

    circuit_id: str
    n_classes: int
    input_dim: int
    input_scale: float
    input_zero_point: int
    input_bits: int
    max_input_norm: float
    index_bits: int
    score_bits: int
    score_low: float
    score_step: float

    @classmethod
    def load(cls, client_dir: Path) -> "Top1Codec":
        """The codec inside ``client_dir/client.zip``: an :class:`ArtifactError` when the zip is
        missing or holds none (a Concrete ML client folder), a
        :class:`~ppazam_core.errors.DamagedArtifactError` when it cannot be read."""
        path = Path(client_dir) / "client.zip"
        if not path.is_file():
            raise ArtifactError(f"client folder {client_dir} is missing client.zip")
        with reading(path), zipfile.ZipFile(path) as archive:
            if CODEC_FILE not in archive.namelist():
                raise ArtifactError(f"{path} holds no {CODEC_FILE}: not a top-1 head client")
            data = json.loads(archive.read(CODEC_FILE))
        with reading(path):
            return cls(**data)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Integers ``(1, input_dim)`` int64 of one float feature row ``x (1, input_dim)``.
        An :class:`FheError` on another shape, a non-finite value, or a row whose 2-norm exceeds
        the calibration's largest (``max_input_norm``, +1%): the circuit's bit widths were sized
        for those and a larger row could overflow the accumulator and name a wrong track."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (1, self.input_dim):
            raise FheError(f"input of shape {tuple(x.shape)} does not fit the top-1 head, which takes (1, {self.input_dim})")
        if not np.isfinite(x).all():
            raise FheError("input holds non-finite values")
        norm = float(np.linalg.norm(x))
        if norm > 1.01 * self.max_input_norm:
            raise FheError(f"input of 2-norm {norm:.4g} exceeds the calibrated {self.max_input_norm:.4g}")
        top = 2 ** (self.input_bits - 1) - 1
        return np.clip(np.rint(x / self.input_scale) + self.input_zero_point, -top, top).astype(np.int64)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """:meth:`quantize` of one input ``(1, input_dim)`` (the codec protocol of
        :mod:`ppazam_core.fhe.deployment`)."""
        return self.quantize(np.asarray(x, dtype=np.float64).reshape(1, -1))

    def logits(self, y: Any) -> np.ndarray:
        """"One-hot" logits ``(1, n_classes)`` float32 of a decrypted output: the decoded track
        gets its coarse score, every other :data:`LOW_SCORE`; a result naming no track (a
        bootstrapping error) is :data:`LOW_SCORE` throughout, with a warning."""
        try:
            index, score = self.decode(y)
        except FheError as e:
            logger.warning("circuit %s: %s", self.circuit_id, e)
            index, score = np.array([-1]), np.array([np.nan])
        return _one_hot_logits(index, score, self.n_classes)

    def decode(self, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(index, score)`` of a decrypted output (an int or an int array of one element):
        ``index`` ``(1,)`` int64 in ``[0, n_classes)``, ``score`` ``(1,)`` float64 (decision-value
        units, ``score_bits`` of precision). An :class:`FheError` when the path names no track
        (a corrupted result)."""
        value = np.asarray(y, dtype=np.int64).reshape(-1)
        if value.size != 1:
            raise FheError(f"a top-1 result is one integer, got {value.size}")
        value = int(value[0])
        field, code = value & ((1 << self.index_bits) - 1), value >> self.index_bits
        if not 1 <= field <= self.n_classes or not 0 <= code < 2**self.score_bits:
            raise FheError(f"top-1 result {value} decodes to no track (index field {field}, score code {code}); "
                           "a bootstrapping error in the argmax")
        return (np.array([field - 1], dtype=np.int64),
                np.array([self.score_low + (code + 0.5) * self.score_step], dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# compilation


def quantize_head(coef: np.ndarray, intercept: np.ndarray, calibration: np.ndarray, input_bits: int,
                  weight_bits: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Symmetric per-tensor quantization of a linear model ``x @ coef.T + intercept``:
    ``(input_scale, weight_scale, W (d, N) int64, b (N,) int64)`` with ``acc = q_x @ W + b``
    approximating the decision values divided by ``input_scale * weight_scale``."""
    coef = np.asarray(coef, dtype=np.float64)
    if coef.ndim != 2:
        raise FheError(f"coef of shape {coef.shape}: expected (n_classes, d)")
    input_scale = float(np.abs(calibration).max()) / (2 ** (input_bits - 1) - 1)
    weight_scale = float(np.abs(coef).max()) / (2 ** (weight_bits - 1) - 1)
    if not input_scale > 0 or not weight_scale > 0:
        raise FheError("calibration rows or weights are all zero; nothing to quantize")
    W = np.rint(coef.T / weight_scale).astype(np.int64)
    b = np.rint(np.asarray(intercept, dtype=np.float64) / (input_scale * weight_scale)).astype(np.int64)
    return input_scale, weight_scale, W, b.reshape(-1)


def linear_weights(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(coef (N, d), intercept (N,))`` of a fitted Concrete ML or scikit-learn linear
    classifier, with two classes spelled out as ``[0, w]`` (the decision value is the second
    class's logit, as :class:`~ppazam_core.families.linear_head.LinearHead` does)."""
    sk = getattr(model, "sklearn_model", model)
    coef, intercept = np.asarray(sk.coef_, dtype=np.float64), np.asarray(sk.intercept_, dtype=np.float64).reshape(-1)
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    return coef, intercept


def compile_top1_head(model: Any, calibration: np.ndarray, config: FheConfig, folder: Path, score_bits: int = 4,
                      input_bits: int = 5, weight_bits: int = 4, rounding_bits: int | None = 6,
                      global_p_error: float | None = 0.01) -> CircuitStats:
    """Compile the oblivious top-1 head of a fitted linear classifier into ``folder`` (empty or
    absent) and return its costs.

    ``model``: a fitted Concrete ML ``LogisticRegression`` (or any object with
    ``sklearn_model.coef_``/``intercept_`` or ``coef_``/``intercept_``), ``N`` classes over ``d``
    features. ``calibration`` ``(n, d)`` float rows (training features): input scale, bit widths
    and the score window come from them. ``score_bits``: score code bits carried through the
    argmax (more: fewer ties, wider PBS); ``input_bits``/``weight_bits``: the symmetric integer
    quantization (see the module docstring); ``rounding_bits``: the accumulator MSBs kept before
    the leaf table (``None``: no rounding); ``config.rounding_method`` chooses exact or
    approximate rounding; ``global_p_error``: the probability that a run has any PBS error
    (``None``: ``config.p_error`` per PBS, as the other circuits). Raises :class:`FheError` when
    the inputs do not fit or Concrete cannot compile, :class:`ArtifactError` when ``folder`` is
    not empty.

    Measured on the 64-track embedding head (tiny synthetic library, 320 clean queries; agreement
    = same top-1 as Concrete ML's 8-bit ``decision_function``), ``global_p_error`` 0.01:

    ==========  =============  ====  ==========  =========
    score_bits  rounding_bits  PBS   complexity  agreement
    ==========  =============  ====  ==========  =========
    2           6              255   3.2e10      0.969
    3           5              255   2.2e10      0.988
    3           6              255   3.0e10      0.988
    4           5              255   2.2e10      0.978
    4           6              255   3.6e10      0.994
    4           7              255   5.6e10      0.997
    5           6              255   5.2e10      0.997
    4 (exact)   6              511   4.5e10      0.994
    ==========  =============  ====  ==========  =========

    PBS: 23, 63, 255 at 6, 16, 64 tracks (``4 N - 1``; 1023 at 256, 3999 at 1000 compiled from
    synthetic weights). The answer: 16,392 bytes (``size_of_outputs``; 16,640 serialized) at every
    ``N``; the request 1,800 bytes (compressed input ciphertexts, 64 features); the evaluation
    keys 114-146 MB serialized (compressed) for 6-64 tracks. A true call on 2 cores: ~1 s at 6
    tracks, 4-11 s at 64, after a first call per key set that takes 6-15 s (key preparation).
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ArtifactError(f"{folder} is not empty")
    calibration = np.asarray(calibration, dtype=np.float64)
    coef, intercept = linear_weights(model)
    if calibration.ndim != 2 or calibration.shape[1] != coef.shape[1] or len(calibration) == 0:
        raise FheError(f"calibration of shape {calibration.shape} does not fit a model over {coef.shape[1]} features")
    if not 1 <= score_bits <= 8:
        raise FheError(f"score_bits = {score_bits}: expected 1 to 8")
    started = time.perf_counter()
    input_scale, weight_scale, W, b = quantize_head(coef, intercept, calibration, input_bits, weight_bits)
    codec_stub = Top1Codec("", coef.shape[0], coef.shape[1], input_scale, 0, input_bits,
                           float(np.linalg.norm(calibration, axis=1).max()), 0, score_bits, 0.0, 1.0)
    q_cal = np.concatenate([codec_stub.quantize(row[None]) for row in calibration])
    # the extreme rows of that norm (Cauchy-Schwarz): along the weight column that reaches the
    # highest accumulator, and against the one that reaches the lowest, so that the bit widths
    # Concrete measures hold every input the codec lets through, not only the calibration's
    norms, radius = np.linalg.norm(W, axis=0), codec_stub.max_input_norm / input_scale
    extremes = []
    for sign, k in ((1.0, np.argmax(norms * radius + b)), (-1.0, np.argmax(norms * radius - b))):
        direction = W[:, k] / max(norms[k], 1e-12) * codec_stub.max_input_norm * 0.999
        extremes.append(codec_stub.quantize(sign * direction[None]))
    extremes = np.concatenate(extremes)
    q_all = np.concatenate([q_cal, extremes])
    acc = q_all @ W + b
    offset = int(acc.min())
    b = b - offset  # acc >= 0: rounding up near the top cannot wrap into the sign
    acc = acc - offset
    width = max(int(acc.max()).bit_length(), 1)
    lsbs = max(width - rounding_bits, 0) if rounding_bits is not None else 0
    # the score window: from the lowest best score of a calibration row to the highest score
    row_best = (q_cal @ W + b).max(axis=1)
    low, high = float(row_best.min()), float(acc.max())
    step = max((high - low) / 2**score_bits, 2.0**lsbs)  # no finer than the rounding
    spec = Top1Spec(W, b, lsbs, low, step, score_bits, offset, input_scale * weight_scale)

    exact = config.rounding_method == "exact"
    options = dict(global_p_error=global_p_error, p_error=None) if global_p_error is not None else dict(p_error=config.p_error)
    configuration = fhe.Configuration(
        **options, compress_input_ciphertexts=True, compress_evaluation_keys=True,
        rounding_exactness=fhe.Exactness.EXACT if exact else fhe.Exactness.APPROXIMATE)
    inputset = [q[None] for q in q_all[np.linspace(0, len(q_all) - 1, min(len(q_all), 512)).astype(int)]]
    inputset += [q[None] for q in extremes]
    try:
        circuit = fhe.Compiler(spec.function(), {"q_x": "encrypted"}).compile(inputset, configuration)
    except (RuntimeError, ValueError) as e:
        raise FheError(f"the top-1 head cannot be compiled: {e}") from e
    compile_s = time.perf_counter() - started
    check = q_cal[: min(len(q_cal), 16)]
    graph = np.array([int(np.asarray(circuit.graph(q[None])).reshape(-1)[0]) for q in check])
    if not np.array_equal(graph, spec.clear(check)):
        raise FheError("the top-1 head's numpy evaluation differs from its traced graph; not saved")

    scale = input_scale * weight_scale
    layout = KeyLayout.of(circuit.client.specs)
    stats = CircuitStats.of(circuit, (coef.shape[1],), coef.shape[0], compile_s, layout.length)
    codec = Top1Codec(stats.circuit_id, stats.n_classes, int(coef.shape[1]), input_scale, 0, input_bits,
                      codec_stub.max_input_norm, index_bits(stats.n_classes), score_bits,
                      (low + offset) * scale, step * scale)
    _save(circuit, stats, layout, codec, spec, folder)
    return stats


def _save(circuit: fhe.Circuit, stats: CircuitStats, layout: KeyLayout, codec: Top1Codec, spec: Top1Spec,
          folder: Path) -> None:
    """Write the folder layout of the module docstring."""
    for side in ("client", "server"):
        (folder / side).mkdir(parents=True)
    versions = json.dumps({"concrete-python": version("concrete-python"),
                           "python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"})
    client_zip = folder / "client" / "client.zip"
    circuit.client.save(client_zip)
    with zipfile.ZipFile(client_zip, "a") as archive:
        archive.writestr(CODEC_FILE, json.dumps(asdict(codec)))
        archive.writestr("versions.json", versions)
    circuit.server.save(folder / "server" / "server.zip", via_mlir=False)
    with zipfile.ZipFile(folder / "server" / "server.zip", "a") as archive:
        archive.writestr("versions.json", versions)
    for side in ("client", "server"):
        stats.save(folder / side)
    layout.save(folder / "server")
    circuit.simulator.save(folder / "simulator.zip", via_mlir=False)
    (folder / CLEAR_FILE).write_text(json.dumps({"top1_spec": spec.to_json()}))
    stats.save(folder)


# ----------------------------------------------------------------------------------------------
# runners


def _one_hot_logits(indices: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
    logits = np.full((len(indices), n_classes), LOW_SCORE, dtype=np.float32)
    found = indices >= 0
    logits[np.flatnonzero(found), indices[found]] = scores[found]
    return logits


class _Runner:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.stats = CircuitStats.load(self.folder)
        self.codec = Top1Codec.load(self.folder / "client")

    def _outputs(self, q_X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    undecodable = 0  # results that named no track so far (PBS errors; simulation only)

    def top1(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (n,) int64, scores (n,) float64)`` of float feature rows ``X (n, d)``; a
        result that names no track (a PBS error in the argmax, probability ``global_p_error``
        per run) gives index -1 and score NaN and is counted in ``undecodable``."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise FheError(f"input of shape {tuple(X.shape)}: expected (n, {self.codec.input_dim})")
        if len(X) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        q_X = np.concatenate([self.codec.quantize(row[None]) for row in X])
        indices, scores = np.full(len(X), -1, np.int64), np.full(len(X), np.nan)
        for i, y in enumerate(self._outputs(q_X)):
            try:
                index, score = self.codec.decode(y)
            except FheError:
                self.undecodable += 1
                continue
            indices[i], scores[i] = index[0], score[0]
        return indices, scores

    def logits(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` float32 "one-hot" logits of feature rows ``X (n, d)``: the decoded
        track gets its coarse score, every other track ``LOW_SCORE`` (-1e9). Ranking by argmax
        gives the top-1; ranks beyond 1 are meaningless (ties at ``LOW_SCORE``), so top-3 and
        calibrated probabilities cannot be computed from them. An undecodable row is
        ``LOW_SCORE`` throughout (its argmax, track 0, is a guess)."""
        indices, scores = self.top1(X)
        return _one_hot_logits(indices, scores, self.codec.n_classes)


class Top1Simulated(_Runner):
    """The compiled top-1 head run in FHE simulation (``simulator.zip``): the circuit's
    integers, approximate rounding and PBS error model, without encryption. An
    :class:`ArtifactError` when a file is missing, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when one cannot be read."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        for part in ("client/client.zip", "simulator.zip"):
            if not (self.folder / part).is_file():
                raise ArtifactError(f"compiled top-1 head {self.folder} is missing {part}")
        with reading(self.folder / "client" / "client.zip") as path:
            self._client = fhe.Client.load(path, is_simulated=True)
        with reading(self.folder / "simulator.zip") as path:
            self._server = fhe.Server.load(path)

    def _outputs(self, q_X: np.ndarray) -> np.ndarray:
        return np.array([np.asarray(self._client.simulate_decrypt(self._server.run(self._client.simulate_encrypt(q[None]))))
                         .reshape(-1)[0] for q in q_X], dtype=np.int64)


class Top1Clear(_Runner):
    """The compiled top-1 head's integer function evaluated in numpy from ``clear.json`` (exact
    rounding, no PBS errors); :func:`compile_top1_head` checked it equal to Concrete's traced
    graph. An :class:`ArtifactError` when a file is missing, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when one cannot be read."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        path = self.folder / CLEAR_FILE
        if not path.is_file():
            raise ArtifactError(f"compiled top-1 head {self.folder} is missing {CLEAR_FILE}")
        data = read_json(path, "top1_spec")
        with reading(path):
            self.spec = Top1Spec.from_json(data["top1_spec"])
        if self.spec.n_classes != self.codec.n_classes:
            raise damaged(path, f"{self.spec.n_classes} classes, the codec says {self.codec.n_classes}")

    def _outputs(self, q_X: np.ndarray) -> np.ndarray:
        return self.spec.clear(q_X)

    def scores(self, X: np.ndarray) -> np.ndarray:
        """The integer accumulators ``(n, n_classes)`` int64 (before rounding, offset to be >= 0)
        of float rows ``X (n, d)``: their argmax is the exact quantized top-1."""
        q_X = np.concatenate([self.codec.quantize(row[None]) for row in np.asarray(X, dtype=np.float64)])
        return q_X @ self.spec.weights + self.spec.bias

    def decision_values(self, X: np.ndarray) -> np.ndarray:
        """The quantized decision values ``(n, n_classes)`` float64 of rows ``X`` (the model's
        ``decision_function`` with ``input_bits``/``weight_bits`` integers), before rounding."""
        return (self.scores(X) + self.spec.offset) * self.spec.scale
