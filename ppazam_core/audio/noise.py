"""Background noise for augmentation: a user's folder prepared once, or the built-in bank.

A noise folder (for instance the Debian sound effects) is decoded once into the cache as mono
wav at the working sample rate, its silent edges trimmed; unreadable and silent files are
skipped and listed in ``skipped.json``. audiomentations then reads ready files instead of
decoding and resampling one per augmented clip.

The built-in bank is used when no folder is given: deterministic recordings of the kinds of sound a phone hears around music: coloured noise
(white, pink, brown), mains hum (50 and 60 Hz with harmonics), crowd-like babble (formant-
filtered voiced syllables from several talkers), traffic-like rumble (low-passed noise with
passing-vehicle swells and engine harmonics) and clicks (sparse impulses and crackle).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import lfilter

from ppazam_core.artifacts import check_audio, read_json
from ppazam_core.audio.decode import SILENCE_DBFS, audio_files, is_silent, load_audio
from ppazam_core.errors import AudioError, DamagedArtifactError, LibraryError
from ppazam_core.store import atomic_folder, config_hash, is_complete

NOISE_KINDS = ("white", "pink", "brown", "hum", "babble", "traffic", "clicks")

logger = logging.getLogger(__name__)


def synthetic_noise_bank(
    cache_dir: Path, seed: int = 0, variants: int = 2, duration_s: float = 8.0,
    sample_rate: int = 16_000,
) -> Path:
    """Folder of noise wav files (``kind_variant.wav``), rendered once into the cache, and again
    (with a warning) when a stored file is damaged."""
    spec = {"seed": seed, "variants": variants, "duration_s": duration_s, "sample_rate": sample_rate}
    folder = cache_dir / "noise" / config_hash(spec)
    if is_complete(folder):
        try:
            for kind in NOISE_KINDS:
                for variant in range(variants):
                    check_audio(folder / f"{kind}_{variant}.wav", int(duration_s * sample_rate))
            return folder
        except DamagedArtifactError as e:
            logger.warning("%s is damaged (%s); rendering the noise bank again", e.path, e.reason)
    with atomic_folder(folder) as tmp:
        for kind in NOISE_KINDS:
            for variant in range(variants):
                rng = np.random.default_rng([seed, NOISE_KINDS.index(kind), variant])
                audio = render_noise(kind, rng, int(duration_s * sample_rate), sample_rate, variant)
                soundfile.write(str(tmp / f"{kind}_{variant}.wav"), audio, sample_rate, subtype="PCM_16")
    return folder


def prepared_noise_folder(source: Path, cache_dir: Path, sample_rate: int = 16_000) -> Path:
    """``source``'s usable audio as mono wav at ``sample_rate`` in the cache (built once, and
    again with a warning when a stored file is damaged)."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise LibraryError(f"noise folder {source} does not exist or is not a folder")
    paths, irregular = audio_files(source)
    stamps = [(p.relative_to(source).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    folder = cache_dir / "noise" / config_hash({"source": str(source.resolve()), "files": stamps, "rate": sample_rate,
                                               "not_read": [p.relative_to(source).as_posix() for p, _ in irregular]})
    if is_complete(folder):
        try:
            read_json(folder / "skipped.json")
            for path in sorted(folder.glob("*.wav")):
                check_audio(path)
            return folder
        except DamagedArtifactError as e:
            logger.warning("%s is damaged (%s); preparing the noise folder again", e.path, e.reason)
    skipped = {p.relative_to(source).as_posix(): reason for p, reason in irregular}
    with atomic_folder(folder) as tmp:
        for path, (relative, _, _) in zip(paths, stamps):
            try:
                audio = _trim_silence(load_audio(path, sample_rate))
            except AudioError as e:
                skipped[relative] = e.reason
                continue
            if audio.size == 0 or is_silent(audio):
                skipped[relative] = f"silent (below {SILENCE_DBFS:g} dBFS)"
                continue
            soundfile.write(str(tmp / (relative.replace("/", "__").rsplit(".", 1)[0] + ".wav")), audio, sample_rate)
        if not paths or len(skipped) == len(paths) + len(irregular):
            raise LibraryError(f"no usable noise files in {source} ({len(paths) + len(irregular)} audio files, "
                               "all skipped)")
        (tmp / "skipped.json").write_text(json.dumps(skipped, indent=2))
    return folder


def _trim_silence(audio: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > 10 ** (SILENCE_DBFS / 20))
    return audio[loud[0] : loud[-1] + 1] if loud.size else audio[:0]


def render_noise(kind: str, rng: np.random.Generator, n: int, sample_rate: int,
                 variant: int = 0) -> np.ndarray:
    """One noise recording of ``n`` samples, peak-normalised to 0.5, as float32."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; known: {', '.join(NOISE_KINDS)}")
    audio = _RENDERERS[kind](rng, n, sample_rate, variant)
    audio = audio - audio.mean()
    return (0.5 * audio / max(np.max(np.abs(audio)), 1e-12)).astype(np.float32)


def _white(rng: np.random.Generator, n: int, sr: int, variant: int) -> np.ndarray:
    return rng.standard_normal(n)


def _pink(rng: np.random.Generator, n: int, sr: int, variant: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def _brown(rng: np.random.Generator, n: int, sr: int, variant: int) -> np.ndarray:
    walk = np.cumsum(rng.standard_normal(n))
    return lfilter([1.0, -1.0], [1.0, -0.999], walk)  # remove the drift, keep the 1/f^2 slope


def _hum(rng: np.random.Generator, n: int, sr: int, variant: int) -> np.ndarray:
    mains = 50.0 if variant % 2 == 0 else 60.0
    t = np.arange(n) / sr
    wobble = 1 + 0.002 * np.sin(2 * np.pi * 0.2 * t + rng.uniform(0, 2 * np.pi))
    hum = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * mains * wobble * t)
              for k in range(1, 8) if k * mains < sr / 2)
    return hum + 0.02 * rng.standard_normal(n)


def _babble(rng: np.random.Generator, n: int, sr: int, variant: int) -> np.ndarray:
    out = np.zeros(n)
    for _ in range(int(rng.integers(5, 9))):
        pitch = rng.uniform(95, 230)
        t = np.arange(n) / sr
        jitter = 1 + 0.03 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
        phase = np.cumsum(pitch * jitter / sr)
        source = np.diff(np.floor(phase), prepend=0.0) + 0.05 * rng.standard_normal(n)
        voice = np.zeros(n)
        start = int(rng.integers(0, sr // 4))
        while start < n:
            length = int(rng.uniform(0.08, 0.3) * sr)
            stop = min(start + length, n)
            piece = source[start:stop]
            for formant, width in ((rng.uniform(300, 850), 90.0), (rng.uniform(900, 2300), 140.0)):
                piece = piece + _resonator(source[start:stop], formant, width, sr)
            voice[start:stop] += piece * np.hanning(stop - start)
            start = stop + int(rng.uniform(0.02, 0.25) * sr)
        out += voice * rng.uniform(0.4, 1.0)
    return out


def _traffic(rng: np.random.Generator, n: int, sr: int, variant: int) -> np.ndarray:
    alpha = np.exp(-2 * np.pi * 180.0 / sr)
    rumble = lfilter([1 - alpha], [1, -alpha], rng.standard_normal(n))
    t = np.arange(n) / sr
    swell = 0.3 + sum(np.exp(-0.5 * ((t - rng.uniform(0, t[-1])) / rng.uniform(0.8, 2.0)) ** 2)
                      for _ in range(int(rng.integers(2, 5))))
    engine = sum(np.sin(2 * np.pi * k * rng.uniform(28, 45) * t) / k for k in range(1, 5))
    return swell * (rumble / np.std(rumble) + 0.3 * engine)


def _clicks(rng: np.random.Generator, n: int, sr: int, variant: int) -> np.ndarray:
    impulses = np.zeros(n)
    count = int(rng.integers(20, 60) * n / sr / 8)
    impulses[rng.integers(0, n, count)] = rng.uniform(-1, 1, count)
    crackle = np.where(rng.random(n) < 0.002, rng.standard_normal(n), 0.0) * 0.3
    decay = np.exp(-np.arange(int(0.004 * sr)) / (0.0008 * sr))
    return np.convolve(impulses + crackle, decay)[:n]


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / sr)
    theta = 2 * np.pi * freq / sr
    return lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)


_RENDERERS = {
    "white": _white, "pink": _pink, "brown": _brown, "hum": _hum,
    "babble": _babble, "traffic": _traffic, "clicks": _clicks,
}
