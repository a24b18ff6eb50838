import contextlib
import functools
import importlib
import os
import sys
import types
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from ppazam_core.models import embeddings
from ppazam_core.models import pipeline
from ppazam_core.models.embeddings import (
    EmbeddingConfig,
    get_scene_embeddings,
    get_timestamp_embeddings,
    load_model,
    nt_xent,
    track_embeddings,
    train_embedding_model,
)
from ppazam_core.errors import ArtifactError, ConfigError
from ppazam_core.queries.features import FrontEnd, FrontEndConfig, Normalizer
from ppazam_core.models.cnn import ConvBlock

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
    assert embeddings.shape == (2, 101, 8) and timestamps.shape == (2, 101)  # 0 to 5 s every 50 ms
    assert timestamps[0, 0] == 0.0 and timestamps[0, 1] == pytest.approx(50.0) and timestamps[1, -1] == 5000.0
    # the embedding at 2.5 s is that of the 3-s window centred there, the one at 0 s of a padded window
    window = FrontEnd(model.features)(audio[:1, 16_000:64_000].numpy())
    np.testing.assert_allclose(embeddings[0, 50].numpy(), model.embed_patches(window)[0], atol=1e-5)
    model.timestamp_hop_s = 0.5
    assert get_timestamp_embeddings(audio, model)[1][0, :3].tolist() == [0.0, 500.0, 1000.0]
    scene = get_scene_embeddings(audio, model)
    assert scene.shape == (2, 8)
    np.testing.assert_allclose(scene.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="n_sounds"):
        get_scene_embeddings(torch.zeros(16_000), model)
    short, _ = get_timestamp_embeddings(torch.randn(1, 1_000) * 0.1, model)  # one padded window, at 0 ms
    assert short.shape == (1, 1, 8)
    model.save(tmp_path / "emb")
    with pytest.raises(ConfigError, match="timestamp_hop_s = 0"):
        load_model(tmp_path / "emb", timestamp_hop_s=0)


def test_the_hear_wrapper_passes_the_hear_2021_validator(tmp_path, monkeypatch):
    """The ``hearvalidator`` package's own checks on ``ppazam_core.models.embeddings`` and a saved model:
    load_model, sample rate, embedding sizes, timestamp and scene embeddings on 16 sounds of white
    noise, timestamps at regular intervals of at most 50 ms (a warning otherwise, made an error
    here). The validator imports TensorFlow only to tell a TensorFlow model from a torch one:
    a stand-in module answers that (tox installs the validator without its TensorFlow dependency)."""
    tensorflow = types.ModuleType("tensorflow")
    tensorflow.Module = type("Module", (), {})
    tensorflow.device = contextlib.nullcontext
    monkeypatch.setitem(sys.modules, "tensorflow", tensorflow)
    if os.environ.get("CI"):  # tox installs it: CI must not skip
        validate = importlib.import_module("hearvalidator.validate")
    else:
        validate = pytest.importorskip("hearvalidator.validate",
                                       reason="pip install --no-deps hearvalidator==2021.0.2 (tox installs it)")
    X, y = _data()
    model, _ = train_embedding_model(X, y, Normalizer.fit(X), FrontEndConfig(), 3.0, TINY)
    model.save(tmp_path / "emb")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*interval between timestamps")
        validate.ValidateModel("ppazam_core.models.embeddings", str(tmp_path / "emb"), device="cpu")()
    with pytest.raises(UserWarning, match="interval between timestamps"), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*interval between timestamps")
        monkeypatch.setattr(embeddings, "load_model", functools.partial(load_model, timestamp_hop_s=0.5))  # the old hop
        validate.ValidateModel("ppazam_core.models.embeddings", str(tmp_path / "emb"), device="cpu")()


def test_background_tracks_join_the_contrastive_training_as_classes_of_their_own(tiny_library, tiny_config,
                                                                               session_cache, monkeypatch):
    config, _ = tiny_config
    more = replace(config, embedding=replace(config.embedding, background_tracks=2))
    seen = {}

    def recording(patches, labels, *args):
        seen["labels"] = np.unique(labels)
        return train_embedding_model(patches, labels, *args)

    monkeypatch.setattr(pipeline, "train_embedding_model", recording)
    folder = pipeline.train_embedding(tiny_library, more, session_cache, workers=1)
    assert folder != pipeline.embedding_folder(tiny_library, config, session_cache)
    assert list(seen["labels"]) == list(range(len(tiny_library) + 2))  # the library's labels, then two more
    assert load_model(folder).config.background_tracks == 2
    with pytest.raises(ConfigError, match="background_tracks"):
        replace(config.embedding, background_tracks=-1)
