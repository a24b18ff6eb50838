"""Audio input: decode files to mono float32 at a target rate, crop, pad and cut segments.

Decoding goes through libsndfile (``soundfile``), which reads wav, flac, ogg (vorbis and opus)
and mp3. libsndfile stops at the end of the first logical stream of a chained Ogg file (Ogg files
joined byte by byte, ``cat a.ogg b.ogg``), so such a file is split at its page boundaries and
each link decoded in turn. Resampling uses torchaudio's band-limited sinc interpolation. Every failure is an
:class:`~ppazam_core.errors.AudioError` naming the file and the reason; nothing falls back
silently.
"""

from __future__ import annotations

import io
import struct
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile

from ppazam_core.errors import AudioError

DEFAULT_SAMPLE_RATE = 16_000
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})
SILENCE_DBFS = -60.0
_OGG_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # "OggS", version, flags, granule, serial, page, crc, segments
_OGG_BOS = 0x02


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
    """Read the header of an audio file (of each link of a chained Ogg file) without decoding it.

    ``frames`` counts every link; ``channels`` is the most any link has. Raises
    :class:`AudioError` for a missing, empty or unreadable file, and for a chained Ogg file whose
    links differ in sample rate.
    """
    path = Path(path)
    _check_nonempty(path)
    rates: set[int] = set()
    channels = frames = 0
    try:
        for link in _open_links(path):
            rates.add(int(link.samplerate))
            channels, frames = max(channels, int(link.channels)), frames + int(link.frames)
    except (soundfile.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"not a readable audio file ({e})") from e
    if len(rates) > 1:
        raise AudioError(path, "chained Ogg streams of different sample rates "
                               f"({', '.join(map(str, sorted(rates)))} Hz)")
    rate = rates.pop()
    if frames <= 0 or rate <= 0:
        raise AudioError(path, "zero-length audio")
    return AudioInfo(str(path), rate, channels, frames)


def load_audio(
    path: str | Path,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 array at ``sample_rate``.

    Channels are averaged; the file is resampled when its rate differs. ``offset_s`` and
    ``duration_s`` select a part of the file (in seconds of the file, across the links of a
    chained Ogg file) without decoding the rest. Raises :class:`AudioError` for a file that
    cannot be decoded, holds no audio after ``offset_s`` or holds non-finite samples.
    """
    path = Path(path)
    if offset_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError(f"offset_s must be >= 0 and duration_s > 0, got {offset_s}, {duration_s}")
    info = probe(path)
    start = int(round(offset_s * info.sample_rate))
    stop = info.frames if duration_s is None else start + int(round(duration_s * info.sample_rate))
    pieces: list[np.ndarray] = []
    first = 0  # the file's frame where the current link begins
    try:
        with closing(_open_links(path)) as links:
            for link in links:
                if first >= stop:
                    break
                if start < first + link.frames:
                    link.seek(max(start - first, 0))
                    data = link.read(min(stop, first + link.frames) - max(start, first),
                                     dtype="float32", always_2d=True)
                    if not np.isfinite(data).all():
                        raise AudioError(path, "audio contains NaN or infinite samples")
                    pieces.append(data.mean(axis=1, dtype=np.float32))
                first += link.frames
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(path, f"cannot decode audio: the file is truncated or damaged (libsndfile: {e})") from e
    mono = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if mono.shape[0] == 0:
        raise AudioError(path, "zero-length audio" if start == 0 else f"no audio after {offset_s} s")
    return resample(mono, info.sample_rate, sample_rate)


def read_blocks(path: str | Path, blocksize: int) -> Iterator[np.ndarray]:
    """Decode the whole file (every link of a chained Ogg file) as float32 blocks of at most
    ``blocksize`` frames, shape ``(frames, channels of the link)``. Raises :class:`AudioError` where
    decoding fails."""
    path = Path(path)
    try:
        for link in _open_links(path):
            yield from link.blocks(blocksize=blocksize, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"cannot decode audio: the file is truncated or damaged (libsndfile: {e})") from e


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


def _open_links(path: Path) -> Iterator[soundfile.SoundFile]:
    """Open each link of a chained Ogg file in turn, else the file itself; each handle is closed
    when the next one is opened (or the generator closed). Raises libsndfile's errors."""
    spans = _ogg_links(path)
    if len(spans) <= 1:
        with soundfile.SoundFile(str(path)) as handle:
            yield handle
        return
    with path.open("rb") as file:
        for begin, end in spans:
            file.seek(begin)
            with soundfile.SoundFile(io.BytesIO(file.read(end - begin))) as handle:
                yield handle


def _ogg_links(path: Path) -> list[tuple[int, int]]:
    """Byte spans ``[begin, end)`` of the links of an Ogg file, read from its page headers: a
    link begins with a group of beginning-of-stream pages (and the first with the first page).
    Empty for a file that is not Ogg;
    bytes after the last well-formed page stay with the last link, for libsndfile to judge."""
    starts, size, offset, previous_bos = [], path.stat().st_size, 0, False
    with path.open("rb") as file:
        while offset + _OGG_PAGE_HEADER.size <= size:
            file.seek(offset)
            header = file.read(_OGG_PAGE_HEADER.size)
            capture, _, flags, _, _, _, _, n_segments = _OGG_PAGE_HEADER.unpack(header)
            lacing = file.read(n_segments)
            if capture != b"OggS" or len(lacing) < n_segments:
                break
            bos = bool(flags & _OGG_BOS)
            if not starts or (bos and not previous_bos):
                starts.append(offset)
            previous_bos = bos
            offset += _OGG_PAGE_HEADER.size + n_segments + sum(lacing)
    return list(zip(starts, starts[1:] + [size]))
