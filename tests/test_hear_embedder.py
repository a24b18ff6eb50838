"""A HEAR module as the embedding families' client-side embedder (``[embedding] embedder``)."""

import sys
import textwrap
import tomllib

import numpy as np
import pytest
import torch

from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.models.embeddings import get_scene_embeddings, load_model
from ppazam_core.errors import ConfigError
from ppazam_core.families import family_eval_spec, train_family
from ppazam_core.queries.features import FrontEnd
from ppazam_core.models.hear import HearEmbedder
from ppazam_core.models.pipeline import noise_folder
from ppazam_core.recognition import predict
from conftest import TINY_TOML

TOY_HEAR = '''
"""A HEAR module at 8 kHz: log energies of 16 bands of the whole sound."""
import torch

SEEN = []


class Model(torch.nn.Module):
    sample_rate = 8000
    scene_embedding_size = 16


def load_model(model_file_path=""):
    return Model()


def get_scene_embeddings(audio, model):
    SEEN.append(tuple(audio.shape))
    spectrum = torch.fft.rfft(audio).abs() ** 2
    bands = torch.stack([b.sum(dim=1) for b in torch.tensor_split(spectrum, 16, dim=1)], dim=1)
    return torch.log10(bands + 1e-9)
'''


def config_with(embedding: str) -> ExperimentConfig:
    return ExperimentConfig.from_dict(tomllib.loads(TINY_TOML.replace("[embedding]\n", f"[embedding]\n{embedding}\n")))


def clean_top1(model, library, config, session_cache, mode: str) -> float:
    spec = family_eval_spec(model.family, config, "clean")
    queries = build_dataset(library, spec, session_cache, noise_folder(library, config.data, session_cache), workers=1)
    return float(predict(model, queries, mode).hits(1).mean())


def test_ppazam_s_own_hear_module_embeds_the_waveform_for_the_encrypted_head(tiny_library, session_cache):
    config = config_with('embedder = "ppazam_core.models.embeddings"\nembedder_weights = "trained"')
    model = train_family("embedding-head", tiny_library, config, session_cache, workers=1)
    assert isinstance(model.embedder, HearEmbedder) and model.features.kind == "waveform"
    clip = tiny_library.load(tiny_library.tracks[2], 16_000)[16_000:64_000]
    patch = FrontEnd(model.features)(clip)
    assert patch.shape == (1, 1, 1, 48_000)
    ours = get_scene_embeddings(torch.from_numpy(patch[:, 0, 0]), load_model(model.folder / "embedding"))
    np.testing.assert_allclose(model.embedder.embed_patches(patch), ours.numpy(), atol=1e-5)
    for mode in ("fp32", "fhe-sim"):
        assert clean_top1(model, tiny_library, config, session_cache, mode) >= 0.5  # chance: 1/6


def test_a_third_party_hear_module_at_another_rate_needs_no_contrastive_training(tiny_library, session_cache,
                                                                               tmp_path, monkeypatch):
    (tmp_path / "toy_hear.py").write_text(TOY_HEAR)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = config_with('embedder = "toy_hear"')
    for family in ("embedding-knn", "embedding-prototypes"):
        model = train_family(family, tiny_library, config, session_cache, workers=1)
        assert not (model.folder / "embedding").exists()
        assert sys.modules["toy_hear"].SEEN[-1][1] == 24_000  # 3-s segments resampled from 16 to 8 kHz
        assert clean_top1(model, tiny_library, config, session_cache, "fp32") > 1 / 6


def test_what_is_not_a_hear_module_is_refused_with_a_clear_error(tiny_library, session_cache, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="embedding.embedder"):
        config_with('embedder = "not a module"')
    with pytest.raises(ConfigError, match="cannot be imported"):
        train_family("embedding-knn", tiny_library, config_with('embedder = "no_such_hear_module"'), session_cache)
    with pytest.raises(ConfigError, match="not a HEAR module: it has no load_model, get_scene_embeddings"):
        train_family("embedding-knn", tiny_library, config_with('embedder = "json"'), session_cache)
    with pytest.raises(ConfigError, match="could not load its model from /no/such/weights"):
        train_family("embedding-knn", tiny_library,
                     config_with('embedder = "ppazam_core.models.embeddings"\nembedder_weights = "/no/such/weights"'),
                     session_cache)
    (tmp_path / "wrong_shape.py").write_text(textwrap.dedent(TOY_HEAR).replace(
        "return torch.log10(bands + 1e-9)", "return torch.log10(bands + 1e-9)[:, :8]"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"returned shape \(\d+, 8\), expected \(\d+, 16\)"):
        train_family("embedding-knn", tiny_library, config_with('embedder = "wrong_shape"'),
                     session_cache)
