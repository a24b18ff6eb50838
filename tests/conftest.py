"""Shared fixtures: a private cache per test, a tiny synthetic library and a tiny identifier
trained on it, audio file writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.models.identifier import Identifier
from ppazam_core.audio.library import Library, SyntheticSpec, synthetic_library
from ppazam_core.models.pipeline import noise_folder, train_identifier

TINY_SPEC = SyntheticSpec(seed=7, n_tracks=6, duration_s=8.0)

TINY_TOML = f"""
[synthetic]
seed = {TINY_SPEC.seed}
n_tracks = {TINY_SPEC.n_tracks}
duration_s = {TINY_SPEC.duration_s}
[data]
train_augmentations = 60
eval_queries = 5
eval_levels = ["clean"]
[embedding]
# the per-library contrastive recipe with the earlier, smaller encoder (ppazam_core/models/embeddings.py):
# the tiny models' expected answers and circuit widths in the tests were set with its clusters
encoder = "train"
epochs = 3
batch_tracks = 6
blocks = [{{ channels = 32, kernel = 3, stride = 2 }}, {{ channels = 64, kernel = 3, stride = 2 }}, {{ channels = 64, kernel = 3, stride = 2 }}]
[clusters]
n_clusters = 2
[training]
epochs = 30
[qat]
epochs = 3
[identify]
cluster_top_k = 2
"""


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> tuple[ExperimentConfig, Path]:
    path = tmp_path_factory.mktemp("config") / "tiny.toml"
    path.write_text(TINY_TOML)
    return ExperimentConfig.from_toml(path), path


@pytest.fixture(scope="session")
def trained(tiny_library, tiny_config, session_cache) -> Identifier:
    config, _ = tiny_config
    return Identifier(train_identifier(tiny_library, config, session_cache, workers=1))


@pytest.fixture(scope="session")
def clean_queries(tiny_library, tiny_config, session_cache):
    config, _ = tiny_config
    noise = noise_folder(tiny_library, config.data, session_cache)
    return build_dataset(tiny_library, config.data.eval_spec("clean"), session_cache, noise, workers=1)


def tone(freq: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    """A sine tone, ``(frames, channels)`` float32."""
    t = np.arange(int(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1)


def write_audio(path: Path, data: np.ndarray, rate: int, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data, rate, **kwargs)
    return path


def dominant_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.shape[0])))
    return float(np.fft.rfftfreq(audio.shape[0], 1.0 / rate)[np.argmax(spectrum)])


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session-cache")


@pytest.fixture(scope="session")
def tiny_library(session_cache: Path) -> Library:
    """Six synthetic tracks of 8 s, rendered once per test session."""
    return synthetic_library(TINY_SPEC, session_cache, workers=1)


def recording(transport: type, received: list[bytes]) -> type:
    """A subclass of the ``transport`` class that appends every message it sends to the server
    (framed evaluation keys, then queries) to ``received``: all the bytes a server gets."""

    class Recording(transport):
        def upload_keys(self, name: str, message: bytes) -> None:
            received.append(message)
            super().upload_keys(name, message)

        def run(self, name: str, message: bytes) -> tuple[bytes, float]:
            received.append(message)
            return super().run(name, message)

    return Recording
