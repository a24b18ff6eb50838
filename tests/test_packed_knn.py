"""embedding-knn-packed: private kNN over reference segments on the packed CKKS backend. Its
references are embedding-knn's (same embedder, same hop), its clear and simulated track scores
rank as the clear kNN's, the encrypted scores agree with the simulation's, references past one
ciphertext make whole extra ciphertexts in the answer and nothing else, the ledger says what
each side learns, and the model is served over HTTP like the other packed family."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import TINY_TOML
from ppazam_core.artifacts import read_arrays
from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.fhe.deployment import EncryptedChannel, ServerBundle, export_server
from ppazam_core.errors import ConfigError, DamagedArtifactError
from ppazam_core.families import family_eval_spec, family_features, family_segment_s, get_family, train_family
from ppazam_core.families.embedding_knn_packed import (REFERENCES_FILE, EmbeddingKnnPacked, KnnPackedConfig,
                                                        margin_confidence, settings)
from ppazam_core.families.packed_head import PACKED
from ppazam_core.fhe.concrete import CircuitStats
from ppazam_core.fhe.packed import best_per_group, check_groups
from ppazam_core.models.pipeline import noise_folder
from ppazam_core.results.privacy import ledger
from ppazam_core.recognition import Mode, predict, sample_queries
from ppazam_core.fhe.serving import HttpTransport, serve_in_background

FAMILY = "embedding-knn-packed"
# the clear kNN with the packed family's hop, searching every reference (so its track scores are
# each track's best reference, as the packed family's)
SAME_REFERENCES = "\n[knn]\nhop_s = 1.0\nneighbours = 1000\n[knnpacked]\nhop_s = 1.0\n"
# 6 tracks of 8 s, 3-s segments every 7 ms: 715 references a track, 4,290 rows: two ciphertexts
MANY_REFERENCES = "\n[knnpacked]\nhop_s = 0.007\n"


def config_with(tmp_path_factory, extra: str) -> ExperimentConfig:
    path = tmp_path_factory.mktemp("config") / "knn-packed.toml"
    path.write_text(TINY_TOML + extra)
    return ExperimentConfig.from_toml(path)


@pytest.fixture(scope="module")
def knn_config(tmp_path_factory):
    return config_with(tmp_path_factory, SAME_REFERENCES)


@pytest.fixture(scope="module")
def knn_packed(tiny_library, knn_config, session_cache):
    return train_family(FAMILY, tiny_library, knn_config, session_cache, workers=1)


@pytest.fixture(scope="module")
def knn_clear(tiny_library, knn_config, session_cache):
    return train_family("embedding-knn", tiny_library, knn_config, session_cache, workers=1)


@pytest.fixture(scope="module")
def queries(tiny_library, knn_config, session_cache):
    spec = replace(knn_config.data.eval_spec("clean"), features=family_features(FAMILY, knn_config))
    return build_dataset(tiny_library, spec, session_cache, noise_folder(tiny_library, knn_config.data, session_cache),
                         workers=1)


def test_best_per_group_takes_each_group_s_best_row():
    scores = np.array([[0.1, 0.5, 0.2, -0.3, 0.9, 0.0], [1.0, 0.0, 0.0, 0.4, -1.0, 0.2]])
    groups = np.array([0, 0, 0, 1, 2, 2])
    assert check_groups(groups, 6, 3) is None
    np.testing.assert_array_equal(best_per_group(scores, groups), [[0.5, -0.3, 0.9], [1.0, 0.4, 0.2]])
    assert check_groups(groups, 6, 4) is not None  # a track without references
    assert check_groups(np.array([0, 0, 2, 2, 3, 3]), 6) is not None  # a gap
    assert check_groups(np.array([0, 1, 0, 1, 2, 2]), 6) is not None  # not contiguous
    assert check_groups(groups, 5) is not None


def test_the_hop_is_its_own_setting(knn_config):
    assert KnnPackedConfig().hop_s == 0.5
    with pytest.raises(ConfigError, match="knnpacked.hop_s"):
        KnnPackedConfig(hop_s=0)
    assert get_family(FAMILY).table.name == "knnpacked"
    assert get_family(FAMILY).bit_width(knn_config) == knn_config.table("packed").query_scale_bits
    other = replace(knn_config, tables={**knn_config.tables, "knnpacked": KnnPackedConfig(hop_s=0.5)})
    assert settings(other) != settings(knn_config)  # another hop: other references, another model


def test_with_the_fingerprint_encoder_the_knn_families_search_1_s_windows():
    shipped = ExperimentConfig()  # encoder = "shipped"
    for family in (FAMILY, "embedding-knn"):
        assert family_segment_s(family, shipped) == 1.0
        spec = family_eval_spec(family, shipped, "phone-in-room")
        assert (spec.segment_s, spec.clip_s, spec.segments) == (1.0, 3.0, 5)  # the same 3-s clips, 5 windows
        assert family_eval_spec(family, shipped, "phone-in-room@1s").segments == 1
    head = family_eval_spec("embedding-head-packed", shipped, "phone-in-room")
    assert (head.segment_s, head.clip_s, head.segments) == (3.0, 3.0, 1)  # one vector per track: whole segments
    pinned = replace(shipped, tables={**shipped.tables, "knnpacked": KnnPackedConfig(segment_s=3.0)})
    assert family_segment_s(FAMILY, pinned) == 3.0
    with pytest.raises(ConfigError, match="knnpacked.segment_s"):
        KnnPackedConfig(segment_s=0)


def test_the_tiny_configs_per_library_embedding_keeps_the_data_segment(knn_config):
    assert family_segment_s(FAMILY, knn_config) == knn_config.data.segment_s


def test_the_confidence_is_the_best_score_plus_its_margin():
    scores = np.array([[0.9, 0.2, 0.1], [0.5, 0.45, 0.4]])
    np.testing.assert_allclose(margin_confidence(scores), [1.6, 0.55])
    np.testing.assert_allclose(margin_confidence(np.array([[0.3], [0.7]])), [0.3, 0.7])


def test_the_server_holds_embedding_knn_s_references(knn_packed, knn_clear):
    vectors, tracks = read_arrays(knn_clear.folder / "references.npz", "vectors", "tracks")
    np.testing.assert_allclose(knn_packed.head.W, vectors, atol=1e-6)
    assert not knn_packed.head.b.any()
    np.testing.assert_array_equal(knn_packed.reference_tracks, tracks)
    rows = knn_packed.head.rows
    assert rows == len(tracks) == 6 * 6  # 8-s tracks, 3-s segments every second
    assert knn_packed.head.params.shards == 1 and knn_packed.track_ids == knn_clear.track_ids


def test_clear_and_simulated_scores_rank_as_the_clear_knn(knn_packed, knn_clear, queries):
    patches = np.asarray(queries.X)
    clear = knn_clear.scores(patches, Mode.FP32)
    assert (clear.track_scores > -2).all()  # every reference searched: every track scored
    order = np.argsort(-clear.track_scores, axis=1, kind="stable")
    for mode in (Mode.FP32, Mode.QUANT, Mode.FHE_DISABLE, Mode.FHE_SIM):
        packed = knn_packed.scores(patches, mode)
        assert packed.track_scores.shape == clear.track_scores.shape
        np.testing.assert_allclose(packed.track_scores, clear.track_scores, atol=1e-5 if mode is Mode.FP32 else 1e-3)
        np.testing.assert_allclose(packed.confidence, margin_confidence(clear.track_scores), atol=2e-3)
        got = np.argsort(-packed.track_scores, axis=1, kind="stable")
        if mode is Mode.FP32:
            assert np.array_equal(got, order)
        else:  # the same ranking but for tracks whose clear scores are within the CKKS error of each other
            assert np.array_equal(got[:, 0], order[:, 0])
            ranked = np.take_along_axis(clear.track_scores, got, axis=1)
            assert (np.diff(ranked, axis=1) <= 1e-3).all()
    fp32, clear_hits = predict(knn_packed, queries, Mode.FP32), predict(knn_clear, queries, Mode.FP32)
    assert np.array_equal(fp32.ranking, clear_hits.ranking)
    assert fp32.hits(1).mean() >= 0.6  # chance is 1/6


def test_encrypted_scores_agree_with_the_simulation(knn_packed, queries):
    rows = sample_queries(queries, seed=0, count=3)
    simulated = predict(knn_packed, queries, Mode.FHE_SIM)
    encrypted = predict(knn_packed, queries, Mode.FHE, rows)
    assert np.array_equal(encrypted.ranking[:, 0], simulated.ranking[encrypted.rows, 0])
    X = knn_packed.embedder.embed_patches(np.asarray(queries.X[rows[:2]]))
    real, sim = knn_packed.head.logits(X, Mode.FHE), knn_packed.head.logits(X, Mode.FHE_SIM)
    sigma = knn_packed.head.error["error_std"]
    assert real.shape == (2, knn_packed.head.rows)
    assert 0 < sigma < 1e-3 and np.abs(sim - real).max() < 12 * sigma
    np.testing.assert_allclose(real, knn_packed.head.logits(X, Mode.FP32), atol=1e-3)
    costs = knn_packed.channel.costs
    assert costs and all(c.pbs_count == 0 and c.request_bytes <= 64 * 1024 and c.response_bytes <= 64 * 1024
                         for c in costs)


def test_the_ledger_states_the_private_knn(knn_packed, queries):
    predict(knn_packed, queries, Mode.FHE, sample_queries(queries, seed=1, count=1))
    plan = knn_packed.call_plan()
    assert plan.calls == {PACKED: 1.0} and plan.server_learns_bits == 0.0
    assert plan.client_scores == knn_packed.head.rows == len(knn_packed.reference_tracks)
    row = ledger(knn_packed, Mode.FHE, knn_packed.channel)
    assert row.server_learns_bits == 0 and row.server_calls == 1 and row.client_scores == knn_packed.head.rows
    assert row.client_scores > len(knn_packed.track_ids)  # every reference's score, not one a track
    assert row.security_bits == 128 and row.sizes_measured == 1 and 0 <= row.p_error_per_query < 0.05
    assert 0 < row.bytes_up <= 64 * 1024 and 0 < row.bytes_down <= 64 * 1024
    clear = ledger(knn_packed, Mode.FP32, knn_packed.channel)
    assert clear.server_learns_bits == math.log2(len(knn_packed.track_ids))


def test_damaged_references_are_refused(knn_packed, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(knn_packed.folder, copy)
    tracks, offsets = read_arrays(copy / REFERENCES_FILE, "tracks", "offsets_s")
    np.savez(copy / REFERENCES_FILE, tracks=tracks[:-1], offsets_s=offsets[:-1])
    with pytest.raises(DamagedArtifactError, match="reference tracks"):
        EmbeddingKnnPacked(copy)
    np.savez(copy / REFERENCES_FILE, tracks=np.minimum(tracks, 4), offsets_s=offsets)  # the last track lost
    with pytest.raises(DamagedArtifactError, match="reference tracks"):
        EmbeddingKnnPacked(copy)


def test_references_past_one_ciphertext_add_whole_ciphertexts(tiny_library, tmp_path_factory, session_cache,
                                                              knn_packed, queries):
    config = config_with(tmp_path_factory, MANY_REFERENCES)
    model = train_family(FAMILY, tiny_library, config, session_cache, workers=1)
    rows = model.head.rows
    assert rows == 6 * 715 and model.head.params.shards == 2  # past the 4,096 rows of one ciphertext
    one = CircuitStats.load(knn_packed.channel.circuits / PACKED)
    two = CircuitStats.load(model.channel.circuits / PACKED)
    assert 1.9 < two.output_ciphertext_bytes / one.output_ciphertext_bytes < 2.1  # one more ciphertext
    assert abs(two.input_ciphertext_bytes - one.input_ciphertext_bytes) < 0.05 * one.input_ciphertext_bytes
    X = model.embedder.embed_patches(np.asarray(queries.X[:2]))
    encrypted, clear = model.head.logits(X, Mode.FHE), model.head.logits(X, Mode.FP32)
    assert encrypted.shape == (2, rows)
    np.testing.assert_allclose(encrypted, clear, atol=1e-3)  # every row of both shards, in order
    np.testing.assert_allclose(best_per_group(encrypted, model.reference_tracks),
                               best_per_group(clear, model.reference_tracks), atol=1e-3)
    answer = model.channel.costs[-1].response_bytes
    knn_packed.head.logits(knn_packed.embedder.embed_patches(np.asarray(queries.X[:1])), Mode.FHE)
    single = knn_packed.channel.costs[-1].response_bytes
    assert 1.9 < answer / single < 2.1  # the answer as sent: one more ciphertext, nothing else
    assert model.call_plan().client_scores == rows
    sim = model.scores(np.asarray(queries.X[:2]), Mode.FHE_SIM)
    assert np.array_equal(sim.track_scores.argmax(axis=1), best_per_group(encrypted, model.reference_tracks).argmax(1))


def test_exported_and_served_over_http(knn_packed, queries, tmp_path):
    bundle = ServerBundle.load(export_server(knn_packed.channel.circuits, tmp_path / "bundle", {"family": FAMILY}))
    assert sorted(p.name for p in (tmp_path / "bundle" / PACKED).iterdir()) == \
        ["circuit.json", "key-layout.json", "server.zip"]
    X = knn_packed.embedder.embed_patches(np.asarray(queries.X[:2]))
    with serve_in_background(bundle) as url:
        transport = HttpTransport(url)
        try:
            channel = EncryptedChannel(knn_packed.channel.circuits, knn_packed.channel.key_dir, transport)
            remote = channel.logits(PACKED, X)
        finally:
            transport.close()
    np.testing.assert_allclose(remote, knn_packed.head.logits(X, Mode.FP32), atol=1e-3)
    assert np.array_equal(best_per_group(remote, knn_packed.reference_tracks).argmax(axis=1),
                          knn_packed.scores(np.asarray(queries.X[:2]), Mode.FP32).track_scores.argmax(axis=1))
