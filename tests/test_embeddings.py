import numpy as np
import pytest
import torch

from ppazam_core.embeddings import (
    EmbeddingConfig,
    get_scene_embeddings,
    get_timestamp_embeddings,
    load_model,
    nt_xent,
    track_embeddings,
    train_embedding_model,
)
from ppazam_core.errors import ArtifactError
from ppazam_core.features import FrontEndConfig, Normalizer
from ppazam_core.models import ConvBlock

TINY = EmbeddingConfig(dimension=8, blocks=(ConvBlock(4, 4, 4),), epochs=2, batch_tracks=3)


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 6)
    X = (rng.standard_normal((24, 1, 32, 32)) + y[:, None, None, None]).astype(np.float32)
    return X, y


def test_nt_xent_prefers_matching_pairs():
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    aligned = nt_xent(torch.cat([a, a]), 0.1)
    shuffled = nt_xent(torch.cat([a, a[[1, 2, 3, 0]]]), 0.1)
    assert aligned < shuffled


def test_training_gives_unit_track_embeddings_and_saves(tmp_path):
    X, y = _data()
    model, losses = train_embedding_model(X, y, Normalizer.fit(X), FrontEndConfig(), 3.0, TINY)
    assert len(losses) == 2 and all(np.isfinite(losses))
    tracks = track_embeddings(model, X, y, 4)
    assert tracks.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(tracks, axis=1), 1.0, rtol=1e-5)
    model.save(tmp_path / "emb")
    reloaded = load_model(tmp_path / "emb")
    np.testing.assert_allclose(reloaded.embed_patches(X), model.embed_patches(X), atol=1e-6)
    with pytest.raises(ArtifactError, match="embedding.json"):
        load_model(tmp_path / "nothing")


def test_hear_interface_shapes(tmp_path):
    X, y = _data()
    model, _ = train_embedding_model(X, y, Normalizer.fit(X), FrontEndConfig(), 3.0, TINY)
    assert (model.sample_rate, model.scene_embedding_size, model.timestamp_embedding_size) == (16_000, 8, 8)
    audio = torch.randn(2, 16_000 * 5) * 0.1
    embeddings, timestamps = get_timestamp_embeddings(audio, model)
    assert embeddings.shape == (2, 5, 8) and timestamps.shape == (2, 5)
    assert timestamps[0, 0] == pytest.approx(1500.0) and timestamps[0, 1] == pytest.approx(2000.0)
    scene = get_scene_embeddings(audio, model)
    assert scene.shape == (2, 8)
    np.testing.assert_allclose(scene.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="n_sounds"):
        get_scene_embeddings(torch.zeros(16_000), model)
    short, _ = get_timestamp_embeddings(torch.randn(1, 16_000) * 0.1, model)  # padded to one window
    assert short.shape == (1, 1, 8)
