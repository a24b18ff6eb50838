"""``mfcc-logreg``: the winning Concrete ML "encrypted Shazam" recipe as a baseline.

Each query is cut into ``window_s`` windows; a window's descriptor is its ``n_mfcc`` MFCCs
summed over its frames, standardized on the client. The server's encrypted
``LogisticRegression(n_bits)`` classifies every window; the client decrypts, and the windows
vote. A track's score is its vote count plus its mean probability over the windows (below one
vote, so it only breaks ties); the confidence is the best score over ``windows + 1``, and the
answer is "unknown" when the best track holds fewer than ``vote_threshold`` of the votes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ppazam_core.artifacts import read_arrays
from dataclasses import dataclass

from ppazam_core.config import ExperimentConfig, require
from ppazam_core.queries.dataset import DatasetSpec, build_dataset
from ppazam_core.families.linear_head import LinearHeadModel, fit_linear_head
from ppazam_core.families import embedding_head
from ppazam_core.families.registry import FamilyTable
from ppazam_core.families.store import single_model_family, write_family
from ppazam_core.queries.features import FrontEndConfig
from ppazam_core.audio.library import Library
from ppazam_core.models.pipeline import noise_folder
from ppazam_core.recognition import Mode, Scores, log_softmax
from ppazam_core.seeding import Split

FAMILY = "mfcc-logreg"
SCALER_FILE = "scaler.npz"


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
    # a fixed count, long tracks included: on 3-minute Debian songs 146 clips a song (50 a minute)
    # gave fhe-sim top-1 0.41 / 0.38 / 0.29 / 0.23 / 0.20 (clean to phone-in-room) against
    # 0.47 / 0.46 / 0.35 / 0.29 / 0.19 with 50
    train_augmentations: int = 50
    vote_threshold: float = 1 / 6

    def __post_init__(self) -> None:
        require(1 <= self.n_mfcc <= self.n_mels, "mfcc.n_mfcc", self.n_mfcc, f"1 to n_mels ({self.n_mels})")
        require(isinstance(self.n_bits, int) and 2 <= self.n_bits <= 16, "mfcc.n_bits", self.n_bits, "2 to 16")
        require(self.window_s > 0, "mfcc.window_s", self.window_s, "seconds > 0")
        require(self.hop_length >= 1, "mfcc.hop_length", self.hop_length, "an integer >= 1")
        require(self.train_augmentations >= 1, "mfcc.train_augmentations", self.train_augmentations, "an integer >= 1")
        require(0.0 <= self.vote_threshold <= 1.0, "mfcc.vote_threshold", self.vote_threshold, "0 to 1")

    def front_end(self, sample_rate: int, segment_s: float) -> FrontEndConfig:
        """MFCC rows ``(1, n_mfcc, frames)`` over whole windows of a ``segment_s`` clip."""
        frames = self.window_frames(sample_rate) * self.windows(segment_s)
        return FrontEndConfig(kind="mfcc", sample_rate=sample_rate, n_fft=2 * self.hop_length,
                              hop_length=self.hop_length, n_mels=self.n_mels, n_mfcc=self.n_mfcc,
                              patch_height=self.n_mfcc, patch_width=frames, patch_select="start")

    def window_frames(self, sample_rate: int) -> int:
        return max(1, int(round(self.window_s * sample_rate / self.hop_length)))

    def windows(self, segment_s: float) -> int:
        require(segment_s >= self.window_s, "mfcc.window_s", self.window_s, f"at most the query length ({segment_s:g} s)")
        return int(segment_s // self.window_s)


TABLE = FamilyTable("mfcc", MfccConfig)


def training_spec(config: ExperimentConfig) -> DatasetSpec:
    data, mfcc = config.data, config.table(TABLE.name)
    front_end = mfcc.front_end(data.features.sample_rate, data.segment_s)
    return DatasetSpec(data.policy(data.train_policy), mfcc.train_augmentations, data.segment_s, front_end,
                       data.train_seed, Split.TRAIN.value)


def settings(config: ExperimentConfig) -> dict:
    return {"data": training_spec(config), "mfcc": config.table(TABLE.name), "p_error": config.fhe.p_error,
            "seed": config.fhe.seed, "calibration_rows": config.table(embedding_head.TABLE.name).calibration_rows}


def window_descriptors(patches: np.ndarray, window_frames: int) -> np.ndarray:
    """``(n, 1, n_mfcc, W * window_frames)`` MFCC patches to ``(n, W, n_mfcc)`` window sums."""
    n, _, height, width = patches.shape
    windows = width // window_frames
    cut = np.asarray(patches, dtype=np.float64)[:, 0, :, : windows * window_frames]
    return cut.reshape(n, height, windows, window_frames).sum(axis=3).transpose(0, 2, 1)


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Fit the window classifier on augmented training clips into ``folder``."""
    started = time.perf_counter()
    spec = training_spec(config)
    dataset = build_dataset(library, spec, cache_dir, noise_folder(library, config.data, cache_dir), workers)
    descriptors = window_descriptors(dataset.X, config.table(TABLE.name).window_frames(spec.features.sample_rate))
    windows = descriptors.shape[1]
    X = descriptors.reshape(-1, descriptors.shape[2])
    mean, std = X.mean(axis=0), np.maximum(X.std(axis=0), 1e-6)
    timings = {"dataset_s": time.perf_counter() - started}
    with write_family(folder, FAMILY, library, config, timings) as tmp:
        started = time.perf_counter()
        np.savez(tmp / SCALER_FILE, mean=mean, std=std)
        mfcc = config.table(TABLE.name)
        fit_linear_head(((X - mean) / std).astype(np.float32), np.repeat(dataset.y, windows), len(library),
                        mfcc.n_bits, mfcc.C, mfcc.max_iter, config.table(embedding_head.TABLE.name).calibration_rows,
                        config.fhe, tmp)
        timings["head_s"] = time.perf_counter() - started


class MfccLogReg(LinearHeadModel):
    """A trained ``mfcc-logreg`` model."""

    family = FAMILY

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        data, self.mfcc = self.config.data, self.config.table(TABLE.name)
        self.features = self.mfcc.front_end(data.features.sample_rate, data.segment_s)
        self.window_frames = self.mfcc.window_frames(self.features.sample_rate)
        self.calls_per_query = self.features.patch_width // self.window_frames
        self.mean, self.std = read_arrays(self.folder / SCALER_FILE, "mean", "std")

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        descriptors = window_descriptors(np.asarray(patches), self.window_frames)
        n, windows, dims = descriptors.shape
        rows = ((descriptors.reshape(-1, dims) - self.mean) / self.std).astype(np.float32)
        log_probs = log_softmax(self.head.logits(rows, mode)).reshape(n, windows, -1)
        votes = np.stack([np.bincount(q.argmax(axis=1), minlength=q.shape[1]) for q in log_probs])
        track_scores = votes + np.exp(log_probs).mean(axis=1)
        return Scores(track_scores, track_scores.max(axis=1) / (windows + 1))

    def rejects(self, confidence: np.ndarray) -> np.ndarray:
        """Per query, from its confidence: whether the answer is "unknown" because the best track
        holds fewer than ``vote_threshold`` of the window votes."""
        votes = np.floor(np.asarray(confidence) * (self.calls_per_query + 1))
        return votes < self.mfcc.vote_threshold * self.calls_per_query


SPEC = single_model_family(FAMILY, settings, train, MfccLogReg, table=TABLE,
                           front_end=lambda config: config.table(TABLE.name).front_end(
                               config.data.features.sample_rate, config.data.segment_s),
                           bits=lambda config: config.table(TABLE.name).n_bits)
