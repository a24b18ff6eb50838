"""``embedding-prototypes``: enroll a song without training (prototypical networks, Snell et al.
2017). The client embeds its query in the clear with the shared contrastive model, as in
``embedding-head``; the server holds one prototype per track, the normalized mean embedding of
``shots`` clean enrollment segments of it, and scores the encrypted query against every
prototype: a linear layer whose weights are the prototypes (cosine similarities), compiled with
Concrete ML (``LogisticRegression.from_sklearn_model``: nothing is fitted), in every mode.

Adding a track (:func:`enroll`) embeds its segments and recompiles the layer; removing one drops
its row. Enrollment segments are ``segment_s`` clips at ``shots`` evenly spaced offsets of the
track's audible part (silent stretches left out), clean (the track as it is); :func:`enroll`
refuses a song with less than one segment of audio above the silence level. Scores are
``log_softmax(cos / temperature)`` with the embedding's contrastive temperature; the confidence
is the best track's probability.

Artifacts: ``embedding/`` (the contrastive model; absent when a HEAR embedder brings its own
weights), ``prototypes.npz`` (``prototypes (T, d)``
float32, ``enroll_s (T,)``: seconds each track's enrollment took, ``segments (n, d)``: the
enrollment segments' embeddings, whose range the layer's input quantizer covers), the head of
:mod:`.linear_head` and ``model.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from concrete.ml.sklearn import LogisticRegression as ConcreteLogisticRegression
from sklearn.linear_model import LogisticRegression

from ppazam_core.artifacts import read_arrays
from ppazam_core.audio.decode import audible_starts, require_audible, crop_or_pad
from ppazam_core.config import ExperimentConfig, FheConfig, require
from ppazam_core.errors import require_in_range
from ppazam_core.families.embedding_head import EmbeddingHead
from ppazam_core.families.linear_head import HEAD, HEAD_FILE, circuits_of
from ppazam_core.families.registry import FamilyTable
from ppazam_core.families.enrollment import enrolled_folder, enrolled_manifest, kept_tracks
from ppazam_core.families.store import single_model_family, write_family
from ppazam_core.manifest import write_manifest
from ppazam_core.queries.features import FrontEnd
from ppazam_core.fhe.concrete import CircuitStats, compile_linear
from ppazam_core.audio.library import Library
from ppazam_core.models.embedding_memo import embed
from ppazam_core.models.hear import Embedder, embedding_front_end, embedding_settings, trained_embedder
from ppazam_core.recognition import Mode, Scores, log_softmax

FAMILY = "embedding-prototypes"
PROTOTYPES_FILE = "prototypes.npz"


MAX_SHOTS = 10_000  # enrollment segments of one track (a 1-h song holds 1,200 of 3 s)


@dataclass(frozen=True)
class PrototypeConfig:
    """The ``[prototypes]`` table: enrollment segments per track (the k of k-shot) and the bit
    width of the encrypted layer."""

    shots: int = 5
    n_bits: int = 8

    def __post_init__(self) -> None:
        require_in_range("prototypes.shots", self.shots, 1, MAX_SHOTS, integer=True)
        require(isinstance(self.n_bits, int) and 2 <= self.n_bits <= 16, "prototypes.n_bits", self.n_bits, "2 to 16")


TABLE = FamilyTable("prototypes", PrototypeConfig)


def settings(config: ExperimentConfig) -> dict:
    """What the model depends on: the embedding's training, the enrollment and the compilation."""
    return {"data": config.data.train_spec(), **embedding_settings(config),
            "prototypes": config.table(TABLE.name), "p_error": config.fhe.p_error, "seed": config.fhe.seed}


def enrollment_segments(audio: np.ndarray, sample_rate: int, segment_s: float, shots: int) -> np.ndarray:
    """``shots`` clips ``(shots, samples)`` float32 of ``segment_s`` from a mono track, the i-th
    starting at ``(i + 1/2) / shots`` of the offsets whose clip is not silent
    (:func:`~ppazam_core.audio.decode.audible_starts`; one shot: the middle, not the intro),
    zero-padded when the track is shorter."""
    window = int(round(segment_s * sample_rate))
    starts = audible_starts(audio, sample_rate, window, shots)
    return np.stack([crop_or_pad(audio, window, int(s)) for s in starts])


def prototypes(embedder: Embedder, library: Library, segment_s: float, shots: int,
               strict: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prototypes ``(T, d)`` float32 of every track of ``library`` (unit length), the seconds each
    took to enroll ``(T,)`` (decoding, front-end, embedding) and the segments' own embeddings
    ``(T * shots, d)`` float32 (they calibrate the layer's input range).

    Raises:
        AudioError: a track cannot be decoded or, when ``strict`` (a song to enroll, not a
            library track, where silent tracks are kept), holds less than ``segment_s`` seconds
            of audio above the silence level.
    """
    front_end = FrontEnd(embedder.features)
    rate = embedder.features.sample_rate
    rows, seconds, segments = [], [], []
    for track in library:
        started = time.perf_counter()
        audio = library.load(track, rate)
        if strict:
            require_audible(audio, rate, segment_s, track.source)
        clips = enrollment_segments(audio, rate, segment_s, shots)
        embedded = embedder.embed_patches(front_end(clips))
        mean = embedded.mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        seconds.append(time.perf_counter() - started)
        segments.append(embedded)
    d = embedder.scene_embedding_size
    return (np.asarray(rows, dtype=np.float32).reshape(-1, d), np.asarray(seconds),
            np.concatenate(segments).astype(np.float32) if segments else np.zeros((0, d), np.float32))


def compile_prototypes(weights: np.ndarray, calibration: np.ndarray, n_bits: int, fhe: FheConfig,
                       folder: Path) -> CircuitStats:
    """Compile the layer ``x -> weights @ x`` (``weights (T, d)``, T >= 2) into ``folder`` as a
    Concrete ML ``LogisticRegression`` built from an sklearn one whose coefficients are
    ``weights`` (no fitting). Its inputs are quantized over the range of ``calibration``
    (enrollment-segment embeddings, rows of ``d``), their negations and the prototypes': a
    query's embedding outside it is clipped."""
    if len(weights) < 2:
        raise ValueError("a prototype layer needs at least two tracks")
    layer = LogisticRegression()
    two = len(weights) == 2
    layer.coef_ = (weights[1:] - weights[:1]) if two else weights.astype(np.float64)
    layer.intercept_ = np.zeros(1 if two else len(weights))
    layer.classes_ = np.arange(len(weights))
    calibration = np.concatenate([calibration, -calibration, weights]).astype(np.float32)
    model = ConcreteLogisticRegression.from_sklearn_model(layer, X=calibration, n_bits=n_bits)
    circuit = circuits_of(folder) / HEAD
    circuit.mkdir(parents=True)
    stats = compile_linear(model, calibration, len(weights), fhe, circuit)
    (folder / HEAD_FILE).write_text(model.dumps())
    return stats


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Train (or load) the shared embedding on ``library``, enroll every track and compile."""
    started = time.perf_counter()
    embedding, embedder = trained_embedder(library, config, cache_dir, workers, refresh)
    timings = {"embedding_s": time.perf_counter() - started}
    table = config.table(TABLE.name)
    with write_family(folder, FAMILY, library, config, timings, embedding=embedding) as tmp:
        weights, enroll_s, segments = prototypes(embedder, library, config.data.segment_s, table.shots)
        timings["enroll_s"] = float(enroll_s.sum())
        started = time.perf_counter()
        np.savez(tmp / PROTOTYPES_FILE, prototypes=weights, enroll_s=enroll_s, segments=segments)
        compile_prototypes(weights, segments, table.n_bits, config.fhe, tmp)
        timings["compile_s"] = time.perf_counter() - started


def enroll(model: "EmbeddingPrototypes", tracks: Library, dest: Path, remove: Sequence[str] = (),
           shots: int | None = None) -> "EmbeddingPrototypes":
    """Write into ``dest`` (a new folder, or an enrolled model's to replace, atomically) the model
    of ``model`` with every track of ``tracks`` added (its prototype from ``shots`` clean
    segments, default the config's: no training) and the tracks ``remove`` (ids) dropped; the
    layer is recompiled.
    Its manifest (:mod:`ppazam_core.manifest`) lists every track's title and audio SHA-256,
    the tracks added (id, title, source, SHA-256, enrollment seconds) and removed, and the
    seconds each step took. The enrollment segments' embeddings of every song ever enrolled,
    removed ones included, stay in ``prototypes.npz``: they set the encrypted layer's input range,
    which is recompiled over them. Returns the new model.

    Raises:
        ConfigError: a track id to add is already known or given twice, a track to add is
            silent or the same file content as a song of the model (trained or enrolled) or as
            another one added, an id to remove is not in the model, or fewer than two tracks
            would remain.
        AudioError: a track to add cannot be decoded or holds less than one segment of audio
            above the silence level (:func:`prototypes`).
    """
    keep = kept_tracks(model, tracks, remove)
    shots = model.config.table(TABLE.name).shots if shots is None else shots
    require(isinstance(shots, int) and shots >= 1, "shots", shots, "an integer >= 1")
    started = time.perf_counter()
    added, enroll_s, segments = prototypes(model.embedder, tracks, model.config.data.segment_s, shots, strict=True)
    embed_s = time.perf_counter() - started
    weights = np.concatenate([model.prototypes[keep], added])
    seconds = np.concatenate([model.enroll_s[keep], enroll_s])
    calibration = np.concatenate([model.segments, segments])  # the range every enrollment has seen
    with enrolled_folder(model, dest) as tmp:
        np.savez(tmp / PROTOTYPES_FILE, prototypes=weights, enroll_s=seconds, segments=calibration)
        started = time.perf_counter()
        compile_prototypes(weights, calibration, model.config.table(TABLE.name).n_bits, model.config.fhe, tmp)
        compile_s = time.perf_counter() - started
        write_manifest(tmp, enrolled_manifest(model, tracks, remove, enroll_s, {"shots": shots},
                                              {"last_enroll_s": round(embed_s, 3), "last_compile_s": round(compile_s, 3)}))
    return EmbeddingPrototypes(Path(dest))


class EmbeddingPrototypes(EmbeddingHead):
    """A model of ``embedding-prototypes`` (the client side of ``embedding-head``, prototypes for
    the head): every track's score per patch in every mode."""

    family = FAMILY

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.prototypes, self.enroll_s, self.segments = read_arrays(self.folder / PROTOTYPES_FILE, "prototypes",
                                                                    "enroll_s", "segments")

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        similarity = self.head.logits(embed(self.embedder, patches), mode)
        log_probs = log_softmax(similarity / self.config.embedding.temperature)
        return Scores(log_probs, np.exp(log_probs.max(axis=1)))


SPEC = single_model_family(FAMILY, settings, train, EmbeddingPrototypes, table=TABLE, front_end=embedding_front_end,
                           bits=lambda config: config.table(TABLE.name).n_bits, enroll=enroll)
