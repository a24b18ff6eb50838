"""Audio input: decode files to mono float32 at a target rate, crop, pad and cut segments.

Decoding goes through libsndfile (``soundfile``), which reads wav, flac, ogg (vorbis and opus)
and mp3. libsndfile stops at the end of the first logical stream of a chained Ogg file (Ogg files
joined byte by byte, ``cat a.ogg b.ogg``), so such a file is split at its page boundaries and
each link decoded in turn. Resampling uses torchaudio's band-limited sinc interpolation. Every failure is an
:class:`~ppazam_core.errors.AudioError` naming the file and the reason; nothing falls back
silently.

A header's length is never trusted: files are decoded block by block until the decoder has no
more (an MP3 whose Xing header claims 2^32 frames decodes to the seconds it holds; a FLAC or WAV
whose length field is 0 or short of what it holds is read through
:func:`~ppazam_core.audio.lengths.corrected_view`), and no file
decodes to more than :data:`MAX_DECODED_S` seconds or for longer than :data:`MAX_DECODE_WALL_S`
seconds of wall-clock time, whatever its header says, and a header claiming a rate below
:data:`MIN_FILE_RATE` is refused. Levels are measured about the signal's mean: a constant (DC)
offset is not sound, so a file holding only one is silent. Channels are averaged, unless their mean
is more than :data:`OUT_OF_PHASE_DB` below the loudest channel (phase-inverted stereo cancels in
the mean): then the loudest channel is taken alone, with a logged warning.
"""

from __future__ import annotations

import io
import logging
import struct
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile

from ppazam_core.audio.lengths import corrected_view, missing_seconds
from ppazam_core.errors import AudioError

DEFAULT_SAMPLE_RATE = 16_000
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000  # the working rates a configuration may ask for, in Hz
MIN_FILE_RATE = 4_000  # the lowest rate a file may have, in Hz: below it a header lies or holds no music
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"})
SILENCE_DBFS = -60.0
TRUNCATED_S = 0.5  # seconds a WAV may hold fewer than its header says before a warning
MAX_DECODED_S = 3600.0  # the most audio one file may decode to, in seconds (1 h: 230 MB mono at 16 kHz)
MAX_DECODE_WALL_S = 300.0  # the most wall-clock seconds decoding one file (one call) may take
OUT_OF_PHASE_DB = 20.0  # a channel mean this far below the loudest channel cancels: take that channel
_BLOCK_FRAMES = 1 << 16  # frames decoded per read
MAX_RATIO_TERM = 1000  # largest numerator or denominator of a resampling ratio (torchaudio's phases)
AUDIBLE_HOP_S = 0.25  # the resolution at which audible_starts and audible_seconds find where the audio is
_OGG_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # "OggS", version, flags, granule, serial, page, crc, segments
_OGG_BOS = 0x02

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says about it (``frames`` may lie: decoding is what counts)."""

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


def audio_files(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The regular files under ``root`` (recursively, links followed) whose names have an audio
    extension, sorted; and, with the reason each is not read, the entries so named that are not
    folders or regular files (pipes, devices, sockets, broken links), so that a caller lists them
    as skipped rather than leaving them out unsaid (a pipe is never opened: reading one blocks)."""
    files, irregular = [], []
    for path in sorted(p for p in root.rglob("*") if is_audio_path(p) and not p.is_dir()):
        if path.is_file():
            files.append(path)
        elif not path.exists():
            irregular.append((path, "a broken link: what it points to does not exist"))
        else:
            irregular.append((path, "not a regular file (a pipe, device or socket): audio is read from files"))
    return files, irregular


def probe(path: str | Path) -> AudioInfo:
    """Read the header of an audio file (of each link of a chained Ogg file) without decoding it.

    ``frames`` counts every link, as the headers claim (they may lie: :func:`measure` counts what
    decodes); ``channels`` is the most any link has. Raises :class:`AudioError` for a missing,
    empty or unreadable file, and for a chained Ogg file whose links differ in sample rate.
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
    if rate < MIN_FILE_RATE:
        raise AudioError(path, f"its header claims {rate} Hz; no file below {MIN_FILE_RATE:,} Hz holds music ppazam "
                               "can identify (a damaged header?)")
    return AudioInfo(str(path), rate, channels, frames)


@dataclass(frozen=True)
class AudioStats:
    """What decoding a whole file found: frames decoded (not what the header claims) and the RMS
    level of the mono signal :func:`load_audio` makes of it (dBFS, -inf for digital silence)."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    level_dbfs: float

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def load_audio(
    path: str | Path,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    offset_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 array at ``sample_rate``.

    Channels are averaged (out-of-phase channels that cancel: the loudest one, see the module's
    notes); the file is resampled when its rate differs. ``offset_s`` and ``duration_s`` select
    a part of the file (in seconds of the file, across the links of a chained Ogg file) without
    decoding the rest.

    Raises:
        AudioError: the file cannot be decoded, holds no audio after ``offset_s``, holds
            non-finite samples or goes past the decoding bounds (:func:`read_blocks`).
    """
    path = Path(path)
    if offset_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ValueError(f"offset_s must be >= 0 and duration_s > 0, got {offset_s}, {duration_s}")
    info = probe(path)
    start = int(round(offset_s * info.sample_rate))
    stop = None if duration_s is None else start + int(round(duration_s * info.sample_rate))
    levels = _Levels(info.channels)
    pieces = [levels.add(block) for block in read_blocks(path, _BLOCK_FRAMES, start, stop)]
    if levels.frames == 0:
        raise AudioError(path, "zero-length audio" if start == 0 else f"no audio after {offset_s} s")
    channel = levels.cancelling_channel(path)
    if channel is not None:
        pieces = [np.ascontiguousarray(block[:, min(channel, block.shape[1] - 1)])
                  for block in read_blocks(path, _BLOCK_FRAMES, start, stop)]
    return resample(np.concatenate(pieces), info.sample_rate, sample_rate)


def measure(path: str | Path) -> AudioStats:
    """Decode a whole file block by block (:func:`read_blocks`) and measure what it holds.

    Raises:
        AudioError: as :func:`probe` and :func:`read_blocks`, and for a file that decodes to no
            audio.
    """
    path = Path(path)
    info = probe(path)
    levels = _Levels(info.channels)
    for block in read_blocks(path, _BLOCK_FRAMES):
        levels.add(block)
    if levels.frames == 0:
        raise AudioError(path, "zero-length audio")
    missing_s = missing_seconds(path)
    if missing_s > TRUNCATED_S:
        held_s = levels.frames / info.sample_rate
        logger.warning("%s: its header says %.1f s, it holds %.1f s (a truncated file?): the %.1f s it holds are used",
                       path, held_s + missing_s, held_s, held_s)
    return AudioStats(str(path), info.sample_rate, info.channels, levels.frames,
                      levels.level_dbfs(levels.cancelling_channel(path)))


def read_blocks(path: str | Path, blocksize: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Decode the file's frames ``[start, stop)`` (default: all of them, across the links of a
    chained Ogg file) as float32 blocks of at most ``blocksize`` frames, shape ``(frames,
    channels of the link)``, until the decoder gives no more, whatever the header claims. A link
    wholly before ``start`` is skipped by its header's length.

    Raises:
        AudioError: decoding fails, a sample is NaN or infinite, or the file decodes to more than
            :data:`MAX_DECODED_S` seconds or for longer than :data:`MAX_DECODE_WALL_S` seconds.
    """
    path = Path(path)
    deadline = time.monotonic() + MAX_DECODE_WALL_S
    decoded_s, first = 0.0, 0  # first: the file's frame where the current link begins
    try:
        with closing(_open_links(path)) as links:
            for link in links:
                if stop is not None and first >= stop:
                    break
                if start >= first + link.frames:
                    first += link.frames
                    continue
                position = max(start, first)
                if position > first:
                    link.seek(position - first)
                while stop is None or position < stop:
                    block = link.read(blocksize if stop is None else min(blocksize, stop - position),
                                      dtype="float32", always_2d=True)
                    if block.shape[0] == 0:
                        break
                    position += block.shape[0]
                    decoded_s += block.shape[0] / link.samplerate
                    _check_block(path, block, decoded_s, deadline)
                    yield block
                first = position
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as e:
        raise AudioError(path, f"cannot decode audio: the file is truncated or damaged (libsndfile: {e})") from e


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono float32 signal (torchaudio's windowed-sinc resampler); returns the input
    unchanged when the rates agree. torchaudio's filter bank has ``orig_rate / gcd`` phases, so a
    rate sharing almost no factor with ``target_rate`` (44,101 Hz, a damaged header's 192,007 Hz)
    would take gigabytes: such a ratio is replaced by the nearest one with terms of at most
    :data:`MAX_RATIO_TERM` (a pitch error below 0.01 % of the rates met in practice)."""
    if orig_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    import torch  # deferred: scanning and rendering workers never resample and start faster
    import torchaudio.functional

    ratio = Fraction(target_rate, orig_rate).limit_denominator(MAX_RATIO_TERM)
    tensor = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return torchaudio.functional.resample(tensor, ratio.denominator, ratio.numerator).numpy()


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
    """Root-mean-square level about the signal's mean in dB relative to full scale (-inf for
    digital silence or a constant: a DC offset is not sound)."""
    rms = float(np.std(audio, dtype=np.float64)) if audio.size else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def is_silent(audio: np.ndarray, threshold_dbfs: float = SILENCE_DBFS) -> bool:
    """Whether the whole signal stays below ``threshold_dbfs`` RMS."""
    return level_dbfs(audio) < threshold_dbfs


def audible_starts(audio: np.ndarray, sample_rate: int, window: int, count: int) -> np.ndarray:
    """``count`` start samples of ``window``-sample windows of a mono signal, spread evenly over
    the starts whose window holds the most audible blocks (:data:`AUDIBLE_HOP_S` seconds at or
    above :data:`SILENCE_DBFS` RMS), that is where the song is, away from silent stretches: the
    i-th at ``(i + 1/2) / count`` of them, laid end to end. That is ``(i + 1/2) / count`` of the
    possible starts when every window is as audible (all of them, or none: a silent track); all
    zero for a signal no longer than ``window``."""
    last = max(audio.shape[0] - window, 0)
    if last == 0:
        return np.zeros(count, dtype=np.int64)
    hop = _hop(sample_rate)
    audible = np.concatenate([[0], np.cumsum(_audible_blocks(audio, hop))])
    begins = np.arange(0, last, hop)
    ends = np.minimum(np.arange(begins.size) + -(-window // hop), audible.size - 1)
    held = audible[ends] - audible[: begins.size]
    begins = begins[held == held.max()]
    lengths = np.minimum(hop, last - begins)
    through = np.cumsum(lengths)  # the chosen starts, laid end to end
    at = (np.arange(count) + 0.5) / count * through[-1]
    piece = np.searchsorted(through, at, side="right")
    return (begins[piece] + at - (through[piece] - lengths[piece])).astype(np.int64)


def audible_seconds(audio: np.ndarray, sample_rate: int) -> float:
    """Seconds of a mono signal in blocks of :data:`AUDIBLE_HOP_S` seconds at or above
    :data:`SILENCE_DBFS` RMS."""
    hop = _hop(sample_rate)
    return float(_audible_blocks(audio, hop).sum()) * hop / sample_rate


def require_audible(audio: np.ndarray, sample_rate: int, min_s: float, source: str | Path) -> None:
    """Refuse a song to enroll that holds less than ``min_s`` seconds of audio above the
    silence level (:func:`audible_seconds`): an :class:`AudioError` naming ``source``."""
    audible_s = audible_seconds(audio, sample_rate)
    if audible_s < min_s:
        raise AudioError(source, f"only {audible_s:g} s of it is above the silence level; "
                                 f"enrolling a song needs at least {min_s:g} s")


class _Levels:
    """Sums and sums of squares of each channel and of the channels' mean over the blocks of a
    file: their energies about their means (a DC offset carries none)."""

    def __init__(self, channels: int) -> None:
        self.channel_sums = np.zeros(channels)
        self.channel_squares = np.zeros(channels)
        self.mean_sum = 0.0
        self.mean_squares = 0.0
        self.frames = 0

    def add(self, block: np.ndarray) -> np.ndarray:
        """Count a ``(frames, channels)`` block in; returns its channels' mean (float32)."""
        self.channel_sums[: block.shape[1]] += block.sum(axis=0, dtype=np.float64)
        self.channel_squares[: block.shape[1]] += np.einsum("ij,ij->j", block, block, dtype=np.float64)
        mono = block.mean(axis=1, dtype=np.float32)
        self.mean_sum += float(mono.sum(dtype=np.float64))
        self.mean_squares += float(np.dot(mono, mono.astype(np.float64)))
        self.frames += block.shape[0]
        return mono

    @property
    def channels(self) -> np.ndarray:
        """Each channel's energy about its mean."""
        return np.maximum(self.channel_squares - self.channel_sums ** 2 / max(self.frames, 1), 0.0)

    @property
    def mean(self) -> float:
        """The channels' mean's energy about its mean."""
        return max(self.mean_squares - self.mean_sum ** 2 / max(self.frames, 1), 0.0)

    def cancelling_channel(self, path: Path) -> int | None:
        """The loudest channel when the channels' mean is more than :data:`OUT_OF_PHASE_DB` below
        it (out-of-phase channels cancel), with a logged warning; else None (also when even the
        loudest channel is silent: nothing is lost to cancelling)."""
        channels = self.channels
        loudest = int(np.argmax(channels))
        if channels[loudest] < self.frames * 10.0 ** (SILENCE_DBFS / 10) or \
                channels[loudest] <= self.mean * 10.0 ** (OUT_OF_PHASE_DB / 10):
            return None
        logger.warning("%s: the mean of its %d channels is more than %g dB below channel %d (out of phase, they "
                       "cancel); using channel %d alone", path, self.channels.size, OUT_OF_PHASE_DB, loudest + 1,
                       loudest + 1)
        return loudest

    def level_dbfs(self, channel: int | None) -> float:
        """RMS level (dBFS) of one channel, or of the channels' mean (``None``)."""
        energy = self.mean if channel is None else float(self.channels[channel])
        return 10.0 * float(np.log10(energy / self.frames)) if energy > 0 else float("-inf")


def _check_block(path: Path, block: np.ndarray, decoded_s: float, deadline: float) -> None:
    """Raise :class:`AudioError` for non-finite samples, or once a file's decoding goes past
    :data:`MAX_DECODED_S` seconds of audio or its wall-clock ``deadline``."""
    if not np.isfinite(block).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    if decoded_s > MAX_DECODED_S:
        raise AudioError(path, f"decodes to more than {MAX_DECODED_S:g} s of audio, the most ppazam reads of a file")
    if time.monotonic() > deadline:
        raise AudioError(path, f"decoding took more than {MAX_DECODE_WALL_S:g} s, the most ppazam spends on a file")


def _hop(sample_rate: int) -> int:
    """:data:`AUDIBLE_HOP_S` in samples at ``sample_rate``."""
    return max(int(round(AUDIBLE_HOP_S * sample_rate)), 1)


def _audible_blocks(audio: np.ndarray, hop: int) -> np.ndarray:
    """Whether each ``hop``-sample block of a mono signal (the last zero-padded) is at or above
    :data:`SILENCE_DBFS` RMS about the block's mean."""
    blocks = np.pad(np.asarray(audio, dtype=np.float32), (0, -audio.shape[0] % hop)).reshape(-1, hop)
    blocks = blocks - blocks.mean(axis=1, keepdims=True, dtype=np.float64)
    return np.einsum("ij,ij->i", blocks, blocks) >= hop * 10.0 ** (SILENCE_DBFS / 10)


def _check_nonempty(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "no such file")
    if not path.is_file():
        raise AudioError(path, "not a regular file (a folder, pipe or device): audio is read from files")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _open_links(path: Path) -> Iterator[soundfile.SoundFile]:
    """Open each link of a chained Ogg file in turn, else the file itself; each handle is closed
    when the next one is opened (or the generator closed). Raises libsndfile's errors."""
    spans = _ogg_links(path)
    if len(spans) <= 1:
        view = corrected_view(path)
        with (closing(view) if view is not None else nullcontext(),
              soundfile.SoundFile(str(path) if view is None else view) as handle):
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
    Empty for a file that is not Ogg. Bytes between pages that are not a page (junk between
    two joined files) are passed over to the next page, staying in the span of the link before
    them; bytes after the last well-formed page stay with the last link, for libsndfile to judge."""
    starts, size, offset, previous_bos = [], path.stat().st_size, 0, False
    with path.open("rb") as file:
        while offset + _OGG_PAGE_HEADER.size <= size:
            file.seek(offset)
            header = file.read(_OGG_PAGE_HEADER.size)
            capture, _, flags, _, _, _, _, n_segments = _OGG_PAGE_HEADER.unpack(header)
            if capture != b"OggS" and starts:  # bytes that are not a page: the next page, if any, goes on
                offset = _next_page(file, offset + 1)
                continue
            lacing = file.read(n_segments)
            if capture != b"OggS" or len(lacing) < n_segments:
                break
            bos = bool(flags & _OGG_BOS)
            if not starts or (bos and not previous_bos):
                starts.append(offset)
            previous_bos = bos
            offset += _OGG_PAGE_HEADER.size + n_segments + sum(lacing)
    return list(zip(starts, starts[1:] + [size]))


def _next_page(file: io.BufferedReader, offset: int, block: int = 1 << 20) -> int:
    """The offset of the next ``OggS`` capture pattern at or after ``offset`` (the file's size
    when there is none): where an Ogg demuxer regains sync past bytes that are not a page."""
    file.seek(offset)
    position = offset
    while chunk := file.read(block + 3):
        found = chunk.find(b"OggS")
        if found >= 0:
            return position + found
        position += len(chunk) - 3
        file.seek(position)
        if len(chunk) < block + 3:
            break
    return file.seek(0, io.SEEK_END)
