import numpy as np
import pytest

from ppazam_core.models.clustering import ClusterConfig, cluster_tracks
from ppazam_core.errors import ConfigError


def _embeddings(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, 8)).astype(np.float32)
    e[: n * 2 // 3, 0] += 4.0  # one dense region that plain k-means over-fills
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_default_cluster_count_follows_library_size():
    assert ClusterConfig().resolve(64) == 5
    assert ClusterConfig().resolve(10_000) == 100
    assert ClusterConfig(n_clusters=1).resolve(64) == 1
    with pytest.raises(ConfigError, match="at most"):
        ClusterConfig(n_clusters=10).resolve(4)


def test_balanced_clusters_stay_under_twice_the_mean():
    clustering = cluster_tracks(_embeddings(), ClusterConfig(n_clusters=6, balanced=True))
    sizes = clustering.sizes()
    assert sum(sizes) == 60 and min(sizes) >= 1
    assert max(sizes) <= 2 * 60 / clustering.n_clusters
    assert sorted(np.concatenate([clustering.members(c) for c in range(clustering.n_clusters)])) == list(range(60))


def test_clustering_is_deterministic_and_single_stage_is_one_cluster():
    first = cluster_tracks(_embeddings(), ClusterConfig(n_clusters=4))
    again = cluster_tracks(_embeddings(), ClusterConfig(n_clusters=4))
    np.testing.assert_array_equal(first.assignment, again.assignment)
    single = cluster_tracks(_embeddings(), ClusterConfig(n_clusters=1))
    assert single.n_clusters == 1 and single.sizes() == [60]
