"""Shared fixtures: a private cache per test, a tiny synthetic library, audio file writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from ppazam_core.library import Library, SyntheticSpec, synthetic_library

TINY_SPEC = SyntheticSpec(seed=7, n_tracks=6, duration_s=8.0)


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
