"""Front-ends: clips to CNN-ready patches (``N x 1 x H x W``) and their normalization.

Three kinds share one config: ``logmel`` (log-scaled mel power spectrogram), ``mfcc`` (with
optional delta and delta-delta rows) and ``waveform`` (the samples themselves, a ``1 x W`` patch
of ``W`` samples: the input of a HEAR embedder, :mod:`ppazam_core.models.hear`). Every clip is first
scaled to ``level_dbfs`` RMS, so a query recorded louder or quieter gives the same patch (up to
clipping and the noise floor): a constant gain is a constant in the dB domain, which the global per-bin normalization alone
does not remove (+-6 dB cost the learned families 60-80 points of top-1 before). The frequency
axis is resampled to the patch height when the two differ; the time axis is cropped to the patch width (``start``, ``center`` or the
``max-energy`` window) or, when the clip is short, filled by repeating its frames ("repeat
padding"): a 1-s query padded with its lowest value instead was identified at chance (0.02
top-1 on phone-in-room queries) by every learned family, repeated at 0.27-0.49.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torchaudio

from ppazam_core.artifacts import read_arrays
from ppazam_core.audio.decode import DEFAULT_SAMPLE_RATE, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from ppazam_core.errors import ConfigError, require_in_range
from ppazam_core.toml_tables import read_table

KINDS = ("logmel", "mfcc", "waveform")
MAX_FFT = 1 << 16  # samples of an FFT window or hop
MAX_MELS = 4096  # mel bands, and rows of a patch
MAX_PATCH_WIDTH = 1 << 24  # frames of a patch, or samples of a waveform patch (a minute at 192 kHz is 11.5 M)
LOG_FLOOR = 1e-10
SILENT_RMS = 1e-6  # clips quieter than this (-120 dBFS) are left as they are, not amplified


class PatchSelect(str, enum.Enum):
    """Which ``W`` frames of a longer spectrogram form the patch."""

    START = "start"
    CENTER = "center"
    MAX_ENERGY = "max-energy"


@dataclass(frozen=True)
class FrontEndConfig:
    """Feature extraction settings. The defaults map a 3 s clip at 16 kHz onto 32 x 32."""

    kind: str = "logmel"
    sample_rate: int = DEFAULT_SAMPLE_RATE
    n_fft: int = 2048
    hop_length: int = 1536
    n_mels: int = 32
    f_min: float = 30.0
    f_max: float | None = 8000.0
    n_mfcc: int = 20
    deltas: int = 0
    patch_height: int = 32
    patch_width: int = 32
    patch_select: str = PatchSelect.CENTER.value
    level_dbfs: float | None = -20.0  # RMS level every clip is scaled to; None keeps the recorded level

    def __post_init__(self) -> None:
        _require(self.kind in KINDS, "kind", self.kind, KINDS)
        _require(self.patch_select in {p.value for p in PatchSelect}, "patch_select",
                 self.patch_select, [p.value for p in PatchSelect])
        require_in_range("features.sample_rate", self.sample_rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, integer=True)
        require_in_range("features.n_fft", self.n_fft, 16, MAX_FFT, integer=True)
        require_in_range("features.hop_length", self.hop_length, 1, MAX_FFT, integer=True)
        require_in_range("features.n_mels", self.n_mels, 4, MAX_MELS, integer=True)
        require_in_range("features.patch_height", self.patch_height, 1, MAX_MELS, integer=True)
        require_in_range("features.patch_width (frames, or samples of a waveform)", self.patch_width, 1,
                         MAX_PATCH_WIDTH, integer=True)
        _require(0 <= self.f_min < (self.f_max or self.sample_rate / 2) <= self.sample_rate / 2,
                 "f_min/f_max", (self.f_min, self.f_max), f"0 <= f_min < f_max <= {self.sample_rate / 2:g}")
        _require(self.kind != "mfcc" or 1 <= self.n_mfcc <= self.n_mels, "n_mfcc", self.n_mfcc,
                 f"1 to n_mels ({self.n_mels})")
        _require(self.deltas in (0, 1, 2), "deltas", self.deltas, "0, 1, 2")
        if self.kind == "waveform":
            _require(self.patch_height == 1 and self.patch_width >= 16, "patch size", (self.patch_height, self.patch_width),
                     "height 1 and width >= 16 samples for a waveform")
        else:
            _require(self.patch_height >= 4 and self.patch_width >= 4, "patch size",
                     (self.patch_height, self.patch_width), "both >= 4")
        _require(self.level_dbfs is None or -60.0 <= self.level_dbfs <= 0.0, "level_dbfs", self.level_dbfs,
                 "a level from -60 to 0 dBFS, or omit it")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FrontEndConfig":
        """The ``[features]`` table ``data``; a :class:`ConfigError` for an unknown key or a value
        of the wrong type (:func:`ppazam_core.toml_tables.read_table`) or range."""

        return read_table(data, cls, "features")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.patch_height, self.patch_width)


class FrontEnd:
    """Turns mono float32 clips at ``config.sample_rate`` into patches of ``config.shape``."""

    def __init__(self, config: FrontEndConfig) -> None:
        self.config = config
        mel = dict(n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels,
                   f_min=config.f_min, f_max=config.f_max, power=2.0)
        if config.kind == "waveform":
            self._transform = None
        elif config.kind == "logmel":
            self._transform = torchaudio.transforms.MelSpectrogram(config.sample_rate, **mel)
        else:
            self._transform = torchaudio.transforms.MFCC(
                config.sample_rate, n_mfcc=config.n_mfcc, log_mels=True, melkwargs=mel)

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """``(n,)`` or ``(N, n)`` clips (float, full scale 1.0) to ``(N, 1, H, W)`` C-contiguous
        float32 patches."""
        return np.stack([self._fit_width(p) for p in self.spectrogram(clips)])[:, None]

    def spectrogram(self, clips: np.ndarray) -> np.ndarray:
        """``(n,)`` or ``(N, n)`` clips to ``(N, H, frames)`` C-contiguous float32: every frame,
        no patch cropping (a waveform: ``(N, 1, n)`` leveled samples)."""
        batch = self.leveled(np.atleast_2d(np.asarray(clips, dtype=np.float32)))
        if self._transform is None:
            return np.ascontiguousarray(batch[:, None, :])
        with torch.no_grad():
            spec = self._transform(torch.from_numpy(batch)).double()
            if self.config.kind == "logmel":
                spec = 10.0 * torch.log10(spec.clamp_min(LOG_FLOOR))
            elif self.config.deltas:
                rows = [spec]
                for _ in range(self.config.deltas):
                    rows.append(torchaudio.functional.compute_deltas(rows[-1]))
                spec = torch.cat(rows, dim=1)
            return np.ascontiguousarray(self._fit_height(spec.float()).numpy())

    def leveled(self, batch: np.ndarray) -> np.ndarray:
        """Each row of ``(N, n)`` clips scaled to ``level_dbfs`` RMS (near-silent rows unchanged)."""
        if self.config.level_dbfs is None:
            return batch
        rms = np.sqrt(np.mean(np.square(batch, dtype=np.float64), axis=1, keepdims=True))
        target = 10.0 ** (self.config.level_dbfs / 20.0)
        return (batch * np.where(rms > SILENT_RMS, target / np.maximum(rms, SILENT_RMS), 1.0)).astype(np.float32)

    def _fit_height(self, spec: torch.Tensor) -> torch.Tensor:
        height = self.config.patch_height
        if spec.shape[1] == height:
            return spec
        resized = torch.nn.functional.interpolate(
            spec.transpose(1, 2), size=height, mode="linear", align_corners=True)
        return resized.transpose(1, 2)

    def _fit_width(self, spec: np.ndarray) -> np.ndarray:
        width = self.config.patch_width
        frames = spec.shape[1]
        if frames <= width:
            return np.pad(spec, ((0, 0), (0, width - frames)), mode="wrap")
        if self.config.patch_select == PatchSelect.START:
            start = 0
        elif self.config.patch_select == PatchSelect.CENTER:
            start = (frames - width) // 2
        else:
            frames_energy = np.square(spec).mean(axis=0) if self.config.kind == "waveform" else spec.mean(axis=0)
            energy = np.convolve(frames_energy, np.ones(width), mode="valid")
            start = int(np.argmax(energy))
        return np.ascontiguousarray(spec[:, start : start + width])


@dataclass(frozen=True, eq=False)
class Normalizer:
    """Per-row (frequency bin) mean and standard deviation, fitted on training patches."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, patches: np.ndarray, batch: int = 4096) -> "Normalizer":
        """Fit on ``(N, 1, H, W)`` patches in batches (works on memory-mapped arrays)."""
        if patches.shape[0] == 0:
            raise ValueError("cannot fit normalization statistics on an empty set")
        total = np.zeros(patches.shape[2])
        squares = np.zeros(patches.shape[2])
        for start in range(0, patches.shape[0], batch):
            chunk = np.asarray(patches[start : start + batch], dtype=np.float64)
            total += chunk.sum(axis=(0, 1, 3))
            squares += np.square(chunk).sum(axis=(0, 1, 3))
        count = patches.shape[0] * patches.shape[1] * patches.shape[3]
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        return cls(mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32))

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        return ((patches - self.mean[:, None]) / self.std[:, None]).astype(np.float32)

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, mean=self.mean, std=self.std)

    @classmethod
    def load(cls, path: Path) -> "Normalizer":
        """Read statistics saved by :meth:`save`; a :class:`~ppazam_core.errors.DamagedArtifactError`
        when the file cannot be read."""
        return cls(*read_arrays(path, "mean", "std"))


def _require(ok: bool, key: str, value: object, allowed: Iterable[object] | str) -> None:
    if not ok:
        raise ConfigError.bad_value(f"features.{key}", value, allowed)
