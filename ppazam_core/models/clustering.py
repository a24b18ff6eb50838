"""Grouping tracks into clusters for the two-stage identifier: faiss k-means on embeddings.

With ``balanced=True`` no cluster holds more than twice the mean size: after k-means, tracks
are assigned nearest-centroid-first to clusters that still have room, since one giant cluster
would defeat the two-stage design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

from ppazam_core.errors import ConfigError, require_in_range

SMALL_LIBRARY_CLUSTER_SIZE = 12
LARGE_LIBRARY_CLUSTER_SIZE = 100
LARGE_LIBRARY_TRACKS = 1000
MAX_KMEANS_ITERATIONS = 1_000_000
MAX_TRACKS_PER_CLUSTER = 100_000


@dataclass(frozen=True)
class ClusterConfig:
    """``n_clusters=None`` picks ``tracks_per_cluster`` tracks a cluster when that is set (the
    seed's Ppazam: ~100, 80 clusters for 8,000 tracks), else ~12 below 1,000 tracks and ~100
    above; ``n_clusters=1`` is the single-stage identifier."""

    n_clusters: int | None = None
    tracks_per_cluster: int | None = None
    balanced: bool = True
    iterations: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ConfigError.bad_value("clusters.n_clusters", self.n_clusters, "an integer >= 1, or omit it")
        if self.tracks_per_cluster is not None:
            require_in_range("clusters.tracks_per_cluster", self.tracks_per_cluster, 1, MAX_TRACKS_PER_CLUSTER,
                             integer=True)
            if self.n_clusters is not None:
                raise ConfigError.bad_value("clusters.tracks_per_cluster", self.tracks_per_cluster,
                                            "no value beside n_clusters (give one of the two)")
        require_in_range("clusters.iterations", self.iterations, 1, MAX_KMEANS_ITERATIONS, integer=True)

    def resolve(self, n_tracks: int) -> int:
        """The number of clusters for a library of ``n_tracks``."""
        if self.n_clusters is not None:
            if self.n_clusters > n_tracks:
                raise ConfigError.bad_value("clusters.n_clusters", self.n_clusters, f"at most the {n_tracks} tracks")
            return self.n_clusters
        size = self.tracks_per_cluster or (
            SMALL_LIBRARY_CLUSTER_SIZE if n_tracks < LARGE_LIBRARY_TRACKS else LARGE_LIBRARY_CLUSTER_SIZE)
        return max(1, round(n_tracks / size))


@dataclass(frozen=True, eq=False)
class Clustering:
    """``assignment[i]`` is the cluster of track ``i``; clusters are numbered 0..K-1, none empty."""

    assignment: np.ndarray
    centroids: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def sizes(self) -> list[int]:
        return np.bincount(self.assignment, minlength=self.n_clusters).tolist()

    def members(self, cluster: int) -> np.ndarray:
        """Track indices of ``cluster``, ascending (their order is the intra-cluster label)."""
        return np.flatnonzero(self.assignment == cluster)


def cluster_tracks(embeddings: np.ndarray, config: ClusterConfig) -> Clustering:
    """Cluster unit-length track embeddings into ``config.resolve(n)`` groups."""
    n, dimension = embeddings.shape
    k = config.resolve(n)
    data = np.ascontiguousarray(embeddings, dtype=np.float32)
    if k == 1:
        return Clustering(np.zeros(n, dtype=np.int64), data.mean(axis=0, keepdims=True))
    kmeans = faiss.Kmeans(dimension, k, niter=config.iterations, seed=config.seed, verbose=False,
                          min_points_per_centroid=1, spherical=True)
    kmeans.train(data)
    distances = ((data[:, None, :] - kmeans.centroids[None, :, :]) ** 2).sum(axis=2)
    if config.balanced:
        assignment = _balanced_assignment(distances, capacity=math.floor(2 * n / k))
    else:
        assignment = distances.argmin(axis=1)
    used = np.unique(assignment)
    renumber = np.full(k, -1)
    renumber[used] = np.arange(len(used))
    centroids = np.stack([data[assignment == c].mean(axis=0) for c in used])
    return Clustering(renumber[assignment].astype(np.int64), centroids.astype(np.float32))


def _balanced_assignment(distances: np.ndarray, capacity: int) -> np.ndarray:
    """Closest (track, cluster) pairs first, skipping full clusters and placed tracks."""
    n, k = distances.shape
    capacity = max(capacity, math.ceil(n / k))
    assignment = np.full(n, -1, dtype=np.int64)
    room = np.full(k, capacity)
    for flat in np.argsort(distances, axis=None, kind="stable"):
        track, cluster = divmod(int(flat), k)
        if assignment[track] < 0 and room[cluster] > 0:
            assignment[track] = cluster
            room[cluster] -= 1
    return assignment
