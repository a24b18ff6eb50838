"""Training views of the fingerprint encoder: what queries meet, applied to a batch at once.

A positive pair is two views of one song: the *reference* (the song as it is, at a random gain)
and the *query*, taken up to ``max_offset_s`` later or earlier and degraded by the chain a
phone-in-room query goes through (Neural Audio Fingerprint's protocol, and the harness's
``phone-in-room`` level, :mod:`ppazam_core.queries.augment`), each step drawn per view:

* speed: played 0.95-1.05x (tempo and pitch drift), or 0.8-1.25x (the ``large`` level's
  stretches and shifts) more rarely;
* a room: one of a bank of simulated impulse responses (:mod:`ppazam_core.audio.rooms`, a seed of
  the encoder's own, so the evaluation's rooms stay unheard);
* background noise (:mod:`ppazam_core.audio.noise`, the encoder's own bank) or another song at
  -5 to 20 dB SNR, and faint white noise;
* a phone's band: high-pass 150-400 Hz, low-pass 3-7 kHz;
* recording gain -20 to +10 dB, hard-clipped at full scale;
* MP3 at 32-96 kbit/s (``fast-mp3-augment``, audiomentations' MP3 backend).

Everything but MP3 runs on the whole batch in torch; views are then turned into log-mel windows
by the encoder's front-end (:class:`~ppazam_core.queries.features.FrontEnd`), as queries are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fast_mp3_augment
import numpy as np
import torch

from ppazam_core.audio.decode import load_audio
from ppazam_core.models.encoder.corpus import CORPUS_RATE, CorpusReader
from ppazam_core.queries.features import FrontEnd, FrontEndConfig

MP3_BITRATES = (32, 40, 48, 56, 64, 80, 96)


@dataclass(frozen=True)
class ViewConfig:
    """Probabilities and ranges of the query view's degradations (see the module docstring)."""

    max_offset_s: float = 0.25
    p_drift: float = 0.5
    p_stretch: float = 0.15
    p_room: float = 0.7
    p_noise: float = 0.8
    p_music_noise: float = 0.2
    snr_db: tuple[float, float] = (-5.0, 20.0)
    p_band: float = 0.7
    p_mp3: float = 0.5
    gain_db: tuple[float, float] = (-20.0, 10.0)


class ViewMaker:
    """Pairs of (reference, query) log-mel windows ``(2B, 1, n_mels, frames)`` from a corpus.

    ``rooms``: a folder of impulse-response wav files; ``noise``: a folder of noise wav files
    (both at the corpus rate)."""

    def __init__(self, reader: CorpusReader, front_end: FrontEndConfig, rooms: Path, noise: Path,
                 config: ViewConfig = ViewConfig()) -> None:
        self.reader = reader
        self.front_end = FrontEnd(front_end)
        self.rate = CORPUS_RATE
        self.window = int(round(1.0 * self.rate))
        self.config = config
        self.rooms = [torch.from_numpy(load_audio(p, self.rate)) for p in sorted(Path(rooms).glob("*.wav"))]
        self.noise = [load_audio(p, self.rate) for p in sorted(Path(noise).glob("*.wav"))]

    def pairs(self, rng: np.random.Generator, batch: int) -> torch.Tensor:
        """``(2 * batch, 1, n_mels, frames)`` float32: rows ``i`` and ``batch + i`` are a pair."""
        c = self.config
        margin = int(round(c.max_offset_s * self.rate))
        longest = int(np.ceil(self.window * 1.25)) + 2 * margin
        source = self.reader.draw(rng, batch, longest + margin)
        reference = source[:, margin : margin + self.window]
        queries = np.stack([self._speed(row, rng, margin) for row in source])
        queries = self._room(queries, rng)
        queries = self._noise(queries, rng)
        queries = self._band(queries, rng)
        both = np.concatenate([self._gain(reference, rng), self._gain(queries, rng)])
        for row in range(batch, 2 * batch):
            if rng.random() < c.p_mp3:
                both[row] = fast_mp3_augment.compress_roundtrip(np.ascontiguousarray(both[row]), self.rate,
                                                                int(rng.choice(MP3_BITRATES)))
        return torch.from_numpy(self.front_end(both))

    def _speed(self, row: np.ndarray, rng: np.random.Generator, margin: int) -> np.ndarray:
        c = self.config
        draw = rng.random()
        rate = rng.uniform(0.95, 1.05) if draw < c.p_drift else rng.uniform(0.8, 1.25) \
            if draw < c.p_drift + c.p_stretch else 1.0
        start = margin + int(rng.integers(-margin, margin + 1))
        span = int(round(self.window * rate))
        piece = row[start : start + span]
        if span == self.window:
            return piece.copy()
        return np.interp(np.linspace(0, span - 1, self.window), np.arange(span), piece).astype(np.float32)

    def _room(self, clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        chosen = np.flatnonzero(rng.random(len(clips)) < self.config.p_room)
        if not self.rooms or not chosen.size:
            return clips
        n = self.window + max(r.shape[0] for r in self.rooms)
        size = 1 << int(np.ceil(np.log2(n)))
        responses = torch.stack([torch.nn.functional.pad(self.rooms[int(i)], (0, size - self.rooms[int(i)].shape[0]))
                                 for i in rng.integers(len(self.rooms), size=chosen.size)])
        spectra = torch.fft.rfft(torch.from_numpy(clips[chosen]), n=size) * torch.fft.rfft(responses, n=size)
        wet = torch.fft.irfft(spectra, n=size)[:, : self.window].numpy()
        scale = np.sqrt(np.mean(clips[chosen] ** 2, axis=1, keepdims=True) /
                        np.maximum(np.mean(wet**2, axis=1, keepdims=True), 1e-12))
        clips = clips.copy()
        clips[chosen] = wet * scale
        return clips

    def _noise(self, clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        out = clips.copy()
        chosen = np.flatnonzero(rng.random(len(clips)) < c.p_noise)
        music = self.reader.draw(rng, chosen.size, self.window) if chosen.size else np.zeros((0, self.window))
        for k, row in enumerate(chosen):
            if rng.random() < c.p_music_noise or not self.noise:
                noise = music[k]
            else:
                bank = self.noise[int(rng.integers(len(self.noise)))]
                start = int(rng.integers(max(1, bank.shape[0] - self.window)))
                noise = np.resize(bank[start : start + self.window], self.window)
            signal_power = float(np.mean(out[row] ** 2))
            noise_power = float(np.mean(noise**2))
            if signal_power > 0 and noise_power > 0:
                snr = rng.uniform(*c.snr_db)
                out[row] += noise * np.sqrt(signal_power / noise_power / 10 ** (snr / 10))
        faint = rng.random(len(out)) < 0.3
        out[faint] += rng.normal(0, 1e-3, size=(int(faint.sum()), self.window)).astype(np.float32)
        return out

    def _band(self, clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        chosen = np.flatnonzero(rng.random(len(clips)) < self.config.p_band)
        if not chosen.size:
            return clips
        spectra = np.fft.rfft(clips[chosen], axis=1)
        freqs = np.fft.rfftfreq(self.window, 1.0 / self.rate)
        low = rng.uniform(150.0, 400.0, size=(chosen.size, 1))
        high = rng.uniform(3000.0, 7000.0, size=(chosen.size, 1))
        # second-order Butterworth magnitudes, as a phone's microphone and audiomentations' filters roll off
        gain = 1.0 / np.sqrt(1.0 + (low / np.maximum(freqs, 1.0)) ** 4) / np.sqrt(1.0 + (freqs / high) ** 4)
        clips = clips.copy()
        clips[chosen] = np.fft.irfft(spectra * gain, n=self.window, axis=1).astype(np.float32)
        return clips

    def _gain(self, clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rms = np.sqrt(np.mean(clips**2, axis=1, keepdims=True))
        level = 10 ** ((-20.0 + rng.uniform(*self.config.gain_db, size=(len(clips), 1))) / 20)
        return np.clip(clips * level / np.maximum(rms, 1e-6), -1.0, 1.0).astype(np.float32)
