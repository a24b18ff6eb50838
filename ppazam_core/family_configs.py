"""Settings of the model families beside the two-stage CNN (TOML tables ``[head]``, ``[mfcc]``,
``[landmark]`` and ``[knn]`` of an experiment config)."""

from __future__ import annotations

from dataclasses import dataclass

from ppazam_core.errors import ConfigError
from ppazam_core.features import FrontEndConfig


def _check(ok: bool, key: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError.bad_value(key, value, allowed)


@dataclass(frozen=True)
class HeadConfig:
    """``embedding-head``: a Concrete ML ``LogisticRegression`` over the client's clear-text
    embedding of each segment, evaluated encrypted on the server."""

    n_bits: int = 8
    C: float = 10.0
    max_iter: int = 500
    calibration_rows: int = 2048

    def __post_init__(self) -> None:
        _check(isinstance(self.n_bits, int) and 2 <= self.n_bits <= 16, "head.n_bits", self.n_bits, "2 to 16")
        _check(self.C > 0, "head.C", self.C, "a number > 0")
        _check(self.max_iter >= 1 and self.calibration_rows >= 1, "head.max_iter/calibration_rows",
               (self.max_iter, self.calibration_rows), "integers >= 1")


@dataclass(frozen=True)
class MfccConfig:
    """``mfcc-logreg``, the winning Concrete ML recipe: ``n_mfcc`` MFCCs summed over each
    ``window_s`` window, ``LogisticRegression(n_bits)`` per window, majority vote over the windows
    of a query, "unknown" when the best track holds fewer than ``vote_threshold`` of the votes."""

    n_mfcc: int = 20
    n_mels: int = 40
    hop_length: int = 400
    window_s: float = 0.5
    n_bits: int = 8
    C: float = 10.0
    max_iter: int = 500
    train_augmentations: int = 50
    vote_threshold: float = 1 / 6

    def __post_init__(self) -> None:
        _check(1 <= self.n_mfcc <= self.n_mels, "mfcc.n_mfcc", self.n_mfcc, f"1 to n_mels ({self.n_mels})")
        _check(isinstance(self.n_bits, int) and 2 <= self.n_bits <= 16, "mfcc.n_bits", self.n_bits, "2 to 16")
        _check(self.window_s > 0 and self.hop_length >= 1, "mfcc.window_s/hop_length",
               (self.window_s, self.hop_length), "window_s > 0, hop_length >= 1")
        _check(self.train_augmentations >= 1, "mfcc.train_augmentations", self.train_augmentations, "an integer >= 1")
        _check(0.0 <= self.vote_threshold <= 1.0, "mfcc.vote_threshold", self.vote_threshold, "0 to 1")

    def front_end(self, sample_rate: int, segment_s: float) -> FrontEndConfig:
        """MFCC rows ``(1, n_mfcc, frames)`` over whole windows of a ``segment_s`` clip."""
        frames = self.window_frames(sample_rate) * self.windows(segment_s)
        return FrontEndConfig(kind="mfcc", sample_rate=sample_rate, n_fft=2 * self.hop_length,
                              hop_length=self.hop_length, n_mels=self.n_mels, n_mfcc=self.n_mfcc,
                              patch_height=self.n_mfcc, patch_width=frames, patch_select="start")

    def window_frames(self, sample_rate: int) -> int:
        return max(1, int(round(self.window_s * sample_rate / self.hop_length)))

    def windows(self, segment_s: float) -> int:
        _check(segment_s >= self.window_s, "mfcc.window_s", self.window_s, f"at most the query length ({segment_s:g} s)")
        return int(segment_s // self.window_s)


@dataclass(frozen=True)
class LandmarkConfig:
    """``landmark-fp``: Wang-2003 style peak pairs on a fine log-mel spectrogram, matched with
    offset-consistent voting (clear text, no privacy)."""

    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    neighbourhood: int = 9
    peaks_per_s: float = 30.0
    fan_out: int = 8
    max_dt: int = 48
    max_df: int = 32

    def __post_init__(self) -> None:
        _check(self.neighbourhood >= 3 and self.fan_out >= 1 and self.max_dt >= 2 and self.max_df >= 1,
               "landmark", (self.neighbourhood, self.fan_out, self.max_dt, self.max_df),
               "neighbourhood >= 3, fan_out >= 1, max_dt >= 2, max_df >= 1")
        _check(self.peaks_per_s > 0, "landmark.peaks_per_s", self.peaks_per_s, "a number > 0")

    def front_end(self, sample_rate: int, segment_s: float) -> FrontEndConfig:
        """The whole spectrogram of a ``segment_s`` clip, ``(1, n_mels, frames)``."""
        frames = int(round(segment_s * sample_rate)) // self.hop_length + 1
        return FrontEndConfig(kind="logmel", sample_rate=sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                              n_mels=self.n_mels, patch_height=self.n_mels, patch_width=frames,
                              patch_select="start")


@dataclass(frozen=True)
class KnnConfig:
    """``embedding-knn``: exact nearest neighbours (faiss) among the embeddings of clean
    reference segments taken every ``hop_s`` of every track (clear text)."""

    hop_s: float = 0.5
    neighbours: int = 10

    def __post_init__(self) -> None:
        _check(self.hop_s > 0 and self.neighbours >= 1, "knn", (self.hop_s, self.neighbours),
               "hop_s > 0, neighbours >= 1")
