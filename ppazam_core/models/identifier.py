"""The identifier: audio clip -> features -> cluster top-k -> intra-cluster scores -> ranking.

A track's score is ``log p(cluster) + log p(track | cluster)`` for tracks of the ``k`` most
likely clusters; tracks of other clusters rank below all of them. A query longer than one
segment is cut into consecutive segments whose scores are combined by the mean of
log-probabilities, or by majority vote over the segments' top-1 with ties broken by that mean.

Under FHE the client decrypts the cluster scores and then calls the intra-cluster classifiers of
the clusters it picked: the server sees which, so it learns the song's cluster
(:mod:`ppazam_core.results.privacy`). The oblivious variant (family ``two-stage-cnn-oblivious``, same
trained model and circuits) searches every cluster for every query: each query calls every
circuit in the same order, the server learns nothing from the calls, and a query costs
``1 + K`` classifier calls instead of ``1 + k``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ppazam_core.artifacts import load_weights, read_arrays
from ppazam_core.config import COMBINE_RULES
from ppazam_core.fhe.deployment import EncryptedChannel, client_key_dir
from ppazam_core.errors import ArtifactError, ConfigError
from ppazam_core.queries.features import FrontEnd, Normalizer
from ppazam_core.fhe.concrete import ClearCircuit, SimulatedClassifier
from ppazam_core.manifest import read_manifest
from ppazam_core.models.cnn import build_model
from ppazam_core.results.privacy import CallPlan, cluster_entropy_bits
from ppazam_core.recognition import Match, Mode, Scores, combine_segments, log_softmax, query_patches, rank_segments
from ppazam_core.store import is_complete
from ppazam_core.models.training import predict_logits

FAMILY = "two-stage-cnn"
OBLIVIOUS_FAMILY = "two-stage-cnn-oblivious"

class Identifier:
    """The ``two-stage-cnn`` family: a trained identifier loaded from its artifact folder.
    ``circuits`` (a folder made by :func:`~ppazam_core.models.pipeline.compile_identifier`) enables the
    ``fhe-sim`` and ``fhe`` modes, the client's secret keys living in
    :func:`~ppazam_core.fhe.deployment.client_key_dir`, outside the model folder. In ``fhe`` mode
    every classifier call is a client/server exchange of encrypted bytes whose costs land in
    :attr:`channel`. A missing or
    unfinished folder is an :class:`ArtifactError`, a damaged file in it (now or when a mode
    first loads its weights or circuits) a :class:`~ppazam_core.errors.DamagedArtifactError`."""

    def __init__(self, folder: Path, circuits: Path | None = None, oblivious: bool = False) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise ArtifactError(f"model folder {folder} does not exist; run `ppazam train` first")
        if not is_complete(folder):
            raise ArtifactError(f"model folder {folder} is incomplete (interrupted training?); train again")
        self.family = OBLIVIOUS_FAMILY if oblivious else FAMILY
        self.oblivious = oblivious
        self.folder = folder
        self.manifest, self.config, self.track_ids = read_manifest(folder, FAMILY, "quant", "cluster_sizes")
        self.assignment = read_arrays(folder / "clusters.npz", "assignment")[0]
        self.n_clusters = int(self.assignment.max()) + 1
        self.members = [np.flatnonzero(self.assignment == c) for c in range(self.n_clusters)]
        self.normalizer = Normalizer.load(folder / "normalizer.npz")
        self.features = self.config.data.features
        self.front_end = FrontEnd(self.features)
        self.cluster_top_k = self.n_clusters if oblivious else min(self.config.cluster_top_k, self.n_clusters)
        self.modes = tuple(Mode)
        self._models: dict[tuple[Mode, str], torch.nn.Module] = {}
        self.circuits = None if circuits is None else Path(circuits)
        if self.circuits is not None and not is_complete(self.circuits):
            raise ArtifactError(f"circuits folder {self.circuits} is missing or incomplete; run `ppazam compile`")
        self._compiled: dict[tuple[Mode, str], SimulatedClassifier | ClearCircuit] = {}
        self.channel = None if self.circuits is None else EncryptedChannel(self.circuits, client_key_dir(folder))

    @property
    def segment_samples(self) -> int:
        return int(round(self.config.data.segment_s * self.config.data.features.sample_rate))

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32, cluster_top_k: int | None = None) -> Scores:
        """Scores of raw (unnormalized) patches ``(n, 1, H, W)``, searching the ``cluster_top_k``
        best clusters (default: the model's; every cluster when oblivious)."""
        mode = Mode(mode)
        k = self.n_clusters if self.oblivious else min(cluster_top_k or self.cluster_top_k, self.n_clusters)
        X = self.normalizer(np.asarray(patches))
        n = X.shape[0]
        if self.n_clusters > 1:
            cluster_log_probs = log_softmax(self.classifier_logits(mode, "cluster", X))
        else:
            cluster_log_probs = np.zeros((n, 1), dtype=np.float32)
        searched = np.argsort(-cluster_log_probs, axis=1, kind="stable")[:, :k]
        track_scores = np.full((n, len(self.track_ids)), -np.inf, dtype=np.float64)
        for cluster, members in enumerate(self.members):
            rows = np.flatnonzero((searched == cluster).any(axis=1))
            if rows.size == 0:
                continue
            if members.size > 1:
                intra = log_softmax(self.classifier_logits(mode, f"intra_{cluster:03d}", X[rows]))
            else:
                intra = np.zeros((rows.size, 1))
            track_scores[np.ix_(rows, members)] = cluster_log_probs[rows, cluster : cluster + 1] + intra
        return Scores(track_scores, np.exp(track_scores.max(axis=1)), cluster_log_probs)

    def patches(self, audio: np.ndarray) -> np.ndarray:
        """Raw patches ``(segments, 1, H, W)`` of a mono clip at the front-end's rate
        (:func:`~ppazam_core.recognition.query_patches`)."""
        return query_patches(audio, self.features, self.config.data.segment_s)

    def identify(self, audio: np.ndarray, mode: Mode | str = Mode.FP32, top: int = 3) -> list[Match]:
        """Rank tracks for a mono clip at the front-end's sample rate."""
        return self.combine(self.scores(self.patches(audio), mode).track_scores, top)

    def combine(self, segment_scores: np.ndarray, top: int = 3, rule: str | None = None) -> list[Match]:
        """Combine the track scores of one query's segments into a ranking, by ``rule``
        (``mean-log-prob`` or ``majority-vote``; default: the config's ``combine``)."""
        rule = rule or self.config.combine
        if rule not in COMBINE_RULES:
            raise ConfigError.bad_value("identify.combine", rule, COMBINE_RULES)
        if rule == "mean-log-prob":
            return rank_segments(self, segment_scores, top)
        mean = combine_segments(segment_scores, len(segment_scores))[0]
        votes = np.bincount(segment_scores.argmax(axis=1), minlength=segment_scores.shape[1])
        order = np.lexsort((-mean, -votes))[:top]
        return [Match(self.track_ids[i], float(mean[i]), int(votes[i])) for i in order]

    def call_plan(self) -> CallPlan:
        """The encrypted calls of one query segment and what they reveal (:mod:`ppazam_core.results.privacy`):
        the cluster classifier, then each searched cluster's classifier -- every one when all
        are searched, else a cluster of ``n`` tracks ``k n / N`` times on average (clusters
        picked in proportion to their size: ``k`` calls in all)."""
        sizes = np.asarray([m.size for m in self.members])
        k = self.cluster_top_k
        calls = {"cluster": 1.0} if self.n_clusters > 1 else {}
        for cluster, size in enumerate(sizes):
            if size > 1:  # a one-track cluster has no classifier to call
                calls[f"intra_{cluster:03d}"] = 1.0 if k == self.n_clusters else k * size / sizes.sum()
        scores = (self.n_clusters if self.n_clusters > 1 else 0) + sum(
            calls[f"intra_{c:03d}"] * size for c, size in enumerate(sizes) if size > 1)
        return CallPlan(calls, cluster_entropy_bits(sizes, k), float(scores))

    def circuit_names(self) -> list[str]:
        """Names of the compiled classifiers (none without circuits)."""
        return [] if self.channel is None else self.channel.names()

    def stage_calls(self, patch: np.ndarray, mode: Mode | str) -> dict[str, tuple[Callable[[], np.ndarray], str]]:
        """The stages of one raw patch ``(1, 1, H, W)`` timed on their own: ``first-stage``
        (the cluster classifier) and ``second-stage`` (the classifier of the patch's most likely
        cluster, by the quantized model), each with the classifier it runs; a single-stage
        model or a one-track cluster has no such stage."""
        normalized = self.normalizer(patch)
        cluster = int(self.scores(patch, Mode.QUANT).cluster_log_probs.argmax())
        calls = {}
        if self.n_clusters > 1:
            calls["first-stage"] = (lambda: self.classifier_logits(mode, "cluster", normalized), "cluster")
        if self.members[cluster].size > 1:
            intra = f"intra_{cluster:03d}"
            calls["second-stage"] = (lambda: self.classifier_logits(mode, intra, normalized), intra)
        return calls

    def rejects(self, confidence: np.ndarray) -> np.ndarray | None:
        """No rule of its own for songs outside the library (see :mod:`ppazam_core.results.open_set`)."""
        return None

    def classifier_logits(self, mode: Mode | str, name: str, X: np.ndarray) -> np.ndarray:
        """Logits of classifier ``name`` (``cluster`` or ``intra_NNN``) for normalized patches."""
        mode = Mode(mode)
        if not mode.needs_circuits:
            return predict_logits(self._model(mode, name), X)
        if self.channel is None:
            raise ArtifactError(f"mode {mode} needs compiled circuits; run `ppazam compile` and load them")
        if mode is Mode.FHE:
            return self.channel.logits(name, X)
        if (mode, name) not in self._compiled:
            runner = SimulatedClassifier if mode is Mode.FHE_SIM else ClearCircuit
            self._compiled[(mode, name)] = runner(self.circuits / name)
        return self._compiled[(mode, name)].logits(X)

    def _model(self, mode: Mode, name: str) -> torch.nn.Module:
        key = (mode, name)
        if key not in self._models:
            n_classes = self.n_clusters if name == "cluster" else int(self.members[int(name[-3:])].size)
            cnn = self.config.model.cnn(n_classes, self.config.data.features.shape)
            subfolder = "fp32" if mode is Mode.FP32 else self.manifest["quant"]
            model = build_model(cnn, quantized=mode is Mode.QUANT)
            self._models[key] = load_weights(model, self.folder / subfolder / f"{name}.pt").eval()
        return self._models[key]
