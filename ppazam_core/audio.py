"""Audio input: decode files to mono float32 at a target rate, crop, pad and cut segments.

Decoding goes through libsndfile (``soundfile``), which reads wav, flac, ogg (vorbis and opus)
and mp3. Resampling uses torchaudio's band-limited sinc interpolation. Every failure is an
:class:`~ppazam_core.errors.AudioError` naming the file and the reason; nothing falls back
silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile

from ppazam_core.errors import AudioError

DEFAULT_SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})
SILENCE_DBFS = -60.0


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about it."""

    path: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def is_audio_path(path: Path) -> bool:
    """Whether the file name has one of the audio extensions ppazam decodes."""
    return path.suffix.lower() in AUDIO_EXTENSIONS


def probe(path: str | Path) -> AudioInfo:
    """Read the header of an audio file without decoding it."""
    path = Path(path)
    _check_nonempty(path)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"not a readable audio file ({e})") from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(path, "zero-length audio")
    return AudioInfo(str(path), int(info.samplerate), int(info.channels), int(info.frames))


def load_audio(
    path: str | Path,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 array at ``sample_rate``.

    Channels are averaged; the file is resampled when its rate differs. ``offset_s`` and
    ``duration_s`` select a part of the file (in seconds of the file) without decoding the rest.
    """
    path = Path(path)
    if offset_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError(f"offset_s must be >= 0 and duration_s > 0, got {offset_s}, {duration_s}")
    info = probe(path)
    start = int(round(offset_s * info.sample_rate))
    stop = None if duration_s is None else start + int(round(duration_s * info.sample_rate))
    try:
        data, native_rate = soundfile.read(
            str(path), start=start, stop=stop, dtype="float32", always_2d=True
        )
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(path, f"cannot decode audio ({e})") from e
    if data.shape[0] == 0:
        raise AudioError(path, "zero-length audio" if start == 0 else f"no audio after {offset_s} s")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    mono = data.mean(axis=1, dtype=np.float32)
    return resample(mono, native_rate, sample_rate)


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 signal; returns the input unchanged when the rates agree."""
    if orig_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    import torch  # deferred: scanning and rendering workers never resample and start faster
    import torchaudio.functional

    tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return torchaudio.functional.resample(tensor, orig_rate, target_rate).numpy()


def crop_or_pad(audio: np.ndarray, n_samples: int, start: int = 0) -> np.ndarray:
    """Take ``n_samples`` from ``start``, zero-padding at the end when the signal runs out."""
    if n_samples <= 0 or start < 0:
        raise ValueError(f"n_samples must be > 0 and start >= 0, got {n_samples}, {start}")
    piece = audio[start : start + n_samples]
    if piece.shape[0] == n_samples:
        return np.ascontiguousarray(piece, dtype=np.float32)
    return np.pad(piece, (0, n_samples - piece.shape[0])).astype(np.float32)


def segments_at(
    audio: np.ndarray, sample_rate: int, offsets_s: Sequence[float], segment_s: float
) -> np.ndarray:
    """Cut one segment of ``segment_s`` seconds at each offset; shape ``(len(offsets), n)``."""
    n_samples = int(round(segment_s * sample_rate))
    rows = [crop_or_pad(audio, n_samples, int(round(o * sample_rate))) for o in offsets_s]
    return np.stack(rows) if rows else np.zeros((0, n_samples), dtype=np.float32)


def level_dbfs(audio: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def is_silent(audio: np.ndarray, threshold_dbfs: float = SILENCE_DBFS) -> bool:
    """Whether the whole signal stays below ``threshold_dbfs`` RMS."""
    return level_dbfs(audio) < threshold_dbfs


def _check_nonempty(path: Path) -> None:
    if not path.is_file():
        raise AudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
