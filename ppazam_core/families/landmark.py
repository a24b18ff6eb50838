"""``landmark-fp``: clear-text landmark fingerprinting in the style of Wang (2003), our own
implementation (no privacy; the accuracy and speed a user would get without FHE).

Peaks are the strongest local maxima of a fine log-mel spectrogram (``peaks_per_s`` of them);
each peak is paired with up to ``fan_out`` later peaks within ``max_dt`` frames and ``max_df``
mel bins, and a pair hashes to ``(f1, f2, dt)``. A query's pairs are looked up in the index of
every track's pairs; a match votes for ``(track, reference time - query time)``, and a track
scores the votes of its most popular offset: a true match lines up at one offset, chance
matches scatter. The confidence is the best track's score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter

from ppazam_core.artifacts import read_arrays
from ppazam_core.config import ExperimentConfig, require
from ppazam_core.families.registry import FamilyTable
from ppazam_core.families.store import FamilyModel, single_model_family, write_family
from ppazam_core.queries.features import FrontEnd, FrontEndConfig
from ppazam_core.audio.library import Library
from ppazam_core.parallel import progress_bar
from ppazam_core.recognition import Mode, Scores

FAMILY = "landmark-fp"
INDEX_FILE = "landmarks.npz"


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
        for key, least in (("neighbourhood", 3), ("fan_out", 1), ("max_dt", 2), ("max_df", 1)):
            require(getattr(self, key) >= least, f"landmark.{key}", getattr(self, key), f"an integer >= {least}")
        require(self.peaks_per_s > 0, "landmark.peaks_per_s", self.peaks_per_s, "a number > 0")

    def front_end(self, sample_rate: int, segment_s: float) -> FrontEndConfig:
        """The whole spectrogram of a ``segment_s`` clip, ``(1, n_mels, frames)``."""
        frames = int(round(segment_s * sample_rate)) // self.hop_length + 1
        return FrontEndConfig(kind="logmel", sample_rate=sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                              n_mels=self.n_mels, patch_height=self.n_mels, patch_width=frames,
                              patch_select="start")


TABLE = FamilyTable("landmark", LandmarkConfig)


def settings(config: ExperimentConfig) -> dict:
    return {"landmark": config.table(TABLE.name), "sample_rate": config.data.features.sample_rate}


def landmarks(spectrogram: np.ndarray, config: LandmarkConfig, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair hashes and anchor frames of a ``(H, T)`` log spectrogram."""
    is_peak = maximum_filter(spectrogram, size=config.neighbourhood, mode="nearest") == spectrogram
    freqs, times = np.nonzero(is_peak)
    keep = int(np.ceil(config.peaks_per_s * spectrogram.shape[1] * config.hop_length / sample_rate))
    strongest = np.argsort(-spectrogram[freqs, times], kind="stable")[:keep]
    order = strongest[np.lexsort((freqs[strongest], times[strongest]))]
    freqs, times = freqs[order], times[order]
    hashes, anchors = [], []
    horizon = np.searchsorted(times, times + config.max_dt, side="right")
    for i in range(len(times)):
        later = np.arange(i + 1, horizon[i])
        later = later[(times[later] > times[i]) & (np.abs(freqs[later] - freqs[i]) <= config.max_df)][: config.fan_out]
        hashes.append((freqs[i] * 1024 + freqs[later]) * 1024 + (times[later] - times[i]))
        anchors.append(np.full(later.size, times[i]))
    if not hashes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(hashes).astype(np.int64), np.concatenate(anchors).astype(np.int64)


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Index the landmarks of every track into ``folder``."""
    rate = config.data.features.sample_rate
    landmark = config.table(TABLE.name)
    front_end = FrontEnd(landmark.front_end(rate, config.data.segment_s))
    timings: dict[str, float] = {}
    hashes, tracks, times = [], [], []
    with write_family(folder, FAMILY, library, config, timings) as tmp, progress_bar() as progress:
        started = time.perf_counter()
        bar = progress.add_task("indexing landmarks", total=len(library))
        for label, track in enumerate(library):
            track_hashes, anchors = landmarks(front_end.spectrogram(library.load(track, rate))[0], landmark, rate)
            hashes.append(track_hashes)
            tracks.append(np.full(track_hashes.size, label, np.int32))
            times.append(anchors)
            progress.advance(bar)
        hashes_all = np.concatenate(hashes)
        order = np.argsort(hashes_all, kind="stable")
        np.savez(tmp / INDEX_FILE, hashes=hashes_all[order], tracks=np.concatenate(tracks)[order],
                 times=np.concatenate(times)[order])
        timings["index_s"] = time.perf_counter() - started


@dataclass(frozen=True)
class Location:
    """Where a query was found: the track's index, the query's start in it, and the votes."""

    track: int
    offset_s: float
    votes: int


class LandmarkIndex(FamilyModel):
    """A built ``landmark-fp`` index."""

    family = FAMILY
    modes = (Mode.FP32,)

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.landmark = self.config.table(TABLE.name)
        self.features = self.landmark.front_end(self.config.data.features.sample_rate, self.config.data.segment_s)
        self.hashes, self.tracks, self.times = read_arrays(self.folder / INDEX_FILE, "hashes", "tracks", "times")

    def votes(self, spectrogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per track: the votes of its most popular offset, and that offset (frames)."""
        query, anchors = landmarks(spectrogram, self.landmark, self.features.sample_rate)
        best = np.zeros(len(self.track_ids), np.int64)
        offsets = np.zeros(len(self.track_ids), np.int64)
        starts = np.searchsorted(self.hashes, query, side="left")
        counts = np.searchsorted(self.hashes, query, side="right") - starts
        if counts.sum() == 0:
            return best, offsets
        which = np.repeat(np.arange(query.size), counts)
        matched = np.repeat(starts, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        shift = self.times[matched] - anchors[which]
        pairs, votes = np.unique(np.stack([self.tracks[matched], shift], axis=1), axis=0, return_counts=True)
        order = np.lexsort((-votes, pairs[:, 0]))  # per track, its most voted offset first
        first = np.unique(pairs[order, 0], return_index=True)[1]
        best[pairs[order[first], 0]] = votes[order[first]]
        offsets[pairs[order[first], 0]] = pairs[order[first], 1]
        return best, offsets

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        track_scores = np.stack([self.votes(p[0])[0] for p in np.asarray(patches)]).astype(np.float64)
        return Scores(track_scores, track_scores.max(axis=1))

    def locate(self, patch: np.ndarray) -> Location:
        """The best track for one ``(1, H, W)`` patch and where in it the query starts."""
        votes, offsets = self.votes(np.asarray(patch)[0])
        track = int(votes.argmax())
        return Location(track, float(offsets[track]) * self.landmark.hop_length / self.features.sample_rate,
                        int(votes[track]))


SPEC = single_model_family(FAMILY, settings, train, LandmarkIndex, table=TABLE,
                           front_end=lambda config: config.table(TABLE.name).front_end(
                               config.data.features.sample_rate, config.data.segment_s))
