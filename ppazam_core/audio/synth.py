"""Procedural music: the built-in synthetic library.

Every track is rendered from ``(seed, index, duration_s, sample_rate)`` alone: a genre-like
style picks the tempo range, scale modes, chord progressions, drum grooves and instrument
families; the track then draws its own tempo, key, progressions per section, melody motifs,
bass line, drum pattern and timbres (additive and FM synthesis under ADSR envelopes). Sections
(verse, chorus, bridge) change harmony, groove and instrumentation over time. Tracks of one
style share grooves and timbre families, so a few noisy seconds are not trivially separable.

Rendering uses float64 numpy only and the result is stored as 16-bit PCM, so the same
arguments give bit-identical audio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "harmonic-minor": (0, 2, 3, 5, 7, 8, 11),
}
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass(frozen=True)
class Timbre:
    """An instrument voice: additive partials or a two-operator FM pair, under an ADSR."""

    kind: str  # "additive" or "fm"
    partials: tuple[float, ...] = (1.0,)
    fm_ratio: float = 1.0
    fm_index: float = 0.0
    attack_s: float = 0.01
    decay_s: float = 0.1
    sustain: float = 0.7
    release_s: float = 0.05
    vibrato_hz: float = 0.0


@dataclass(frozen=True)
class Style:
    """A genre-like family of tracks."""

    name: str
    tempo_bpm: tuple[float, float]
    scales: tuple[str, ...]
    progressions: tuple[tuple[int, ...], ...]
    grooves: tuple[tuple[str, str, str], ...]  # kick, snare, hat over 16 steps ("x" = hit)
    bass_patterns: tuple[tuple[int, ...], ...]  # 8th-note steps where the bass plays
    leads: tuple[str, ...]
    pads: tuple[str, ...]
    melody_density: float
    swing: float


TIMBRES: dict[str, Timbre] = {
    "organ": Timbre("additive", (1.0, 0.6, 0.0, 0.4, 0.0, 0.25, 0.0, 0.2), attack_s=0.02,
                    decay_s=0.05, sustain=0.9, release_s=0.08),
    "square-lead": Timbre("additive", (1.0, 0.0, 0.33, 0.0, 0.2, 0.0, 0.14, 0.0, 0.11),
                          attack_s=0.005, decay_s=0.12, sustain=0.6, release_s=0.05,
                          vibrato_hz=5.5),
    "saw-lead": Timbre("additive", tuple(1.0 / k for k in range(1, 13)), attack_s=0.01,
                       decay_s=0.15, sustain=0.5, release_s=0.06, vibrato_hz=5.0),
    "flute": Timbre("additive", (1.0, 0.25, 0.08, 0.03), attack_s=0.06, decay_s=0.1,
                    sustain=0.8, release_s=0.12, vibrato_hz=4.5),
    "fm-bell": Timbre("fm", fm_ratio=3.5, fm_index=4.0, attack_s=0.002, decay_s=0.9,
                      sustain=0.0, release_s=0.3),
    "fm-epiano": Timbre("fm", fm_ratio=1.0, fm_index=2.2, attack_s=0.003, decay_s=0.6,
                        sustain=0.25, release_s=0.2),
    "fm-brass": Timbre("fm", fm_ratio=1.0, fm_index=3.0, attack_s=0.04, decay_s=0.2,
                       sustain=0.7, release_s=0.1),
    "pluck": Timbre("additive", (1.0, 0.5, 0.33, 0.25, 0.2, 0.16), attack_s=0.002,
                    decay_s=0.35, sustain=0.0, release_s=0.1),
    "warm-pad": Timbre("additive", (1.0, 0.45, 0.3, 0.12, 0.08), attack_s=0.4, decay_s=0.5,
                       sustain=0.8, release_s=0.5, vibrato_hz=0.3),
    "string-pad": Timbre("additive", tuple(0.8 / k for k in range(1, 9)), attack_s=0.6,
                         decay_s=0.4, sustain=0.85, release_s=0.6, vibrato_hz=5.0),
    "fm-pad": Timbre("fm", fm_ratio=2.0, fm_index=1.2, attack_s=0.5, decay_s=0.5,
                     sustain=0.8, release_s=0.6),
    "sub-bass": Timbre("additive", (1.0, 0.15), attack_s=0.005, decay_s=0.2, sustain=0.8,
                       release_s=0.05),
    "fm-bass": Timbre("fm", fm_ratio=1.0, fm_index=1.8, attack_s=0.004, decay_s=0.25,
                      sustain=0.5, release_s=0.05),
}

STYLES: tuple[Style, ...] = (
    Style("pop", (96, 124), ("major", "mixolydian"),
          ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3)),
          (("x...x...x...x...", "....x.......x...", "x.x.x.x.x.x.x.x."),
           ("x.....x.x.......", "....x.......x...", "x.x.x.x.x.x.x.x.")),
          ((0, 2, 4, 6), (0, 3, 4, 7)), ("square-lead", "fm-epiano", "pluck"),
          ("warm-pad", "string-pad"), 0.55, 0.0),
    Style("rock", (110, 150), ("minor", "mixolydian", "dorian"),
          ((0, 6, 5, 6), (0, 3, 4, 4), (0, 5, 6, 4), (0, 3, 0, 4)),
          (("x.....x.x.x.....", "....x.......x...", "x.x.x.x.x.x.x.x."),
           ("x.x...x.x.......", "....x.......x..x", "xxxxxxxxxxxxxxxx")),
          ((0, 1, 2, 3, 4, 5, 6, 7), (0, 2, 3, 4, 6, 7)), ("saw-lead", "fm-brass", "organ"),
          ("organ", "string-pad"), 0.6, 0.0),
    Style("electronic", (118, 132), ("minor", "harmonic-minor", "dorian"),
          ((0, 5, 2, 6), (0, 0, 5, 4), (0, 3, 5, 4), (5, 4, 0, 0)),
          (("x...x...x...x...", "....x.......x...", "..x...x...x...x."),
           ("x...x...x...x..x", "........x.......", "xx.xxx.xxx.xxx.x")),
          ((1, 3, 5, 7), (0, 1, 2, 3, 4, 5, 6, 7)), ("square-lead", "fm-bell", "saw-lead"),
          ("fm-pad", "warm-pad"), 0.7, 0.0),
    Style("ambient", (64, 88), ("major", "dorian", "minor"),
          ((0, 3, 0, 4), (0, 5, 3, 0), (0, 1, 3, 0), (3, 0, 4, 0)),
          (("x...............", "................", "........x......."),
           ("x.......x.......", "............x...", "x...x...x...x...")),
          ((0,), (0, 4)), ("flute", "fm-bell", "fm-epiano"), ("string-pad", "fm-pad"),
          0.3, 0.0),
    Style("jazz", (88, 136), ("dorian", "mixolydian", "major"),
          ((1, 4, 0, 0), (0, 5, 1, 4), (2, 5, 1, 4), (0, 3, 1, 4)),
          (("x.......x.......", "....x.......x...", "x..xx..xx..xx..x"),
           ("x.....x.........", "......x.....x...", "x..xx..xx..xx..x")),
          ((0, 2, 4, 6), (0, 1, 2, 3, 4, 5, 6, 7)), ("fm-epiano", "flute", "fm-brass"),
          ("organ", "warm-pad"), 0.65, 0.16),
)


@dataclass(frozen=True)
class TrackPlan:
    """The musical choices behind one synthetic track (kept for titles and reports)."""

    index: int
    style: str
    tempo_bpm: float
    key: str
    scale: str
    sections: str

    @property
    def title(self) -> str:
        return (f"Synthetic {self.index:05d}: {self.style} in {self.key} {self.scale}, "
                f"{self.tempo_bpm:.0f} bpm, form {self.sections}")


def render_track(seed: int, index: int, duration_s: float, sample_rate: int) -> tuple[np.ndarray, TrackPlan]:
    """Render one track as float32 in [-1, 1]; deterministic in its four arguments."""
    rng = np.random.default_rng([seed, index])
    style = STYLES[int(rng.integers(len(STYLES)))]
    tempo = float(rng.uniform(*style.tempo_bpm))
    root = int(rng.integers(12))
    scale_name = str(rng.choice(style.scales))
    scale = SCALES[scale_name]
    lead = TIMBRES[str(rng.choice(style.leads))]
    pad = TIMBRES[str(rng.choice(style.pads))]
    bass = TIMBRES[str(rng.choice(("sub-bass", "fm-bass")))]
    lead = _vary_timbre(lead, rng)

    n = int(round(duration_s * sample_rate))
    beat_s = 60.0 / tempo
    bar_s = 4 * beat_s
    section_types = _section_types(style, rng)
    form = _form(int(np.ceil(duration_s / (4 * bar_s))) + 1, rng)
    out = np.zeros(n + int(2 * sample_rate), dtype=np.float64)
    noise_rng = np.random.default_rng([seed, index, 1])

    for section_number, label in enumerate(form):
        section = section_types[label]
        start_bar = 4 * section_number
        for bar in range(4):
            t_bar = (start_bar + bar) * bar_s
            if t_bar >= duration_s:
                break
            chord_degree = section["progression"][bar % len(section["progression"])]
            chord = [_degree_to_midi(root, scale, chord_degree + k, octave=4) for k in (0, 2, 4)]
            for midi in chord:
                _add(out, _note(pad, _hz(midi), bar_s * 0.98, sample_rate) * 0.06
                     * section["pad_gain"], t_bar, sample_rate)
            bass_root = _degree_to_midi(root, scale, chord_degree, octave=2)
            for step in section["bass"]:
                walk = 7 if (step % 4 == 3 and section["walk"]) else 0
                _add(out, _note(bass, _hz(bass_root + walk), beat_s * 0.45, sample_rate) * 0.22,
                     t_bar + step * beat_s / 2, sample_rate)
            if section["drums"]:
                _render_groove(out, section["groove"], t_bar, beat_s, style.swing,
                               sample_rate, noise_rng)
            for step, offset, length in section["motif"]:
                degree = chord_degree + offset + section["lift"]
                if rng.random() < 0.12:  # small variations keep repeats from being copies
                    degree += int(rng.choice((-1, 1)))
                midi = _degree_to_midi(root, scale, degree, octave=5)
                t_note = t_bar + step * beat_s / 4 + (style.swing * beat_s / 4 if step % 2 else 0.0)
                _add(out, _note(lead, _hz(midi), length * beat_s / 4, sample_rate) * 0.16,
                     t_note, sample_rate)

    audio = out[:n]
    peak = np.max(np.abs(audio))
    audio = audio / peak * 0.89 if peak > 0 else audio
    plan = TrackPlan(index, style.name, tempo, NOTE_NAMES[root], scale_name, "".join(form))
    return audio.astype(np.float32), plan


def _section_types(style: Style, rng: np.random.Generator) -> dict[str, dict]:
    """Verse (A), chorus (B) and bridge (C), each with its own harmony, groove and motif."""
    types = {}
    for label, density, drums in (("A", 0.8, True), ("B", 1.15, True), ("C", 0.6, bool(rng.random() < 0.5))):
        types[label] = {
            "progression": style.progressions[int(rng.integers(len(style.progressions)))],
            "groove": style.grooves[int(rng.integers(len(style.grooves)))],
            "bass": style.bass_patterns[int(rng.integers(len(style.bass_patterns)))],
            "walk": bool(rng.random() < 0.5),
            "motif": _motif(rng, style.melody_density * density),
            "lift": 2 if label == "B" else 0,
            "pad_gain": 1.3 if label == "C" else 1.0,
            "drums": drums,
        }
    return types


def _form(n_sections: int, rng: np.random.Generator) -> list[str]:
    forms = ("AABACB", "ABABCB", "AABBCA", "ABACAB")
    form = forms[int(rng.integers(len(forms)))]
    return [form[i % len(form)] for i in range(max(n_sections, 1))]


def _motif(rng: np.random.Generator, density: float) -> list[tuple[int, int, int]]:
    """(16th step, scale-degree offset from the chord root, length in 16ths) for one bar."""
    notes = []
    step = 0
    while step < 16:
        length = int(rng.choice((1, 2, 2, 3, 4)))
        if rng.random() < min(density, 0.95):
            notes.append((step, int(rng.choice((0, 2, 4, 4, 1, 3, 5, 7))), length))
        step += length
    return notes or [(0, 0, 4)]


def _vary_timbre(timbre: Timbre, rng: np.random.Generator) -> Timbre:
    """Per-track colour: brightness and FM index drift around the family's timbre."""
    tilt = float(rng.uniform(0.7, 1.3))
    partials = tuple(a * tilt ** (-k) for k, a in enumerate(timbre.partials))
    return Timbre(timbre.kind, partials, timbre.fm_ratio, timbre.fm_index * float(rng.uniform(0.6, 1.4)),
                  timbre.attack_s, timbre.decay_s * float(rng.uniform(0.7, 1.4)), timbre.sustain,
                  timbre.release_s, timbre.vibrato_hz)


def _degree_to_midi(root: int, scale: tuple[int, ...], degree: int, octave: int) -> int:
    octave_shift, position = divmod(degree, len(scale))
    return 12 * (octave + 1 + octave_shift) + root + scale[position]


def _hz(midi: int) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def _envelope(timbre: Timbre, n_on: int, n_total: int, sample_rate: int) -> np.ndarray:
    a = max(int(timbre.attack_s * sample_rate), 1)
    d = max(int(timbre.decay_s * sample_rate), 1)
    env = np.full(n_total, timbre.sustain, dtype=np.float64)
    attack = np.linspace(0.0, 1.0, a, endpoint=False)
    decay = timbre.sustain + (1.0 - timbre.sustain) * np.exp(-np.arange(d) * 5.0 / d)
    head = np.concatenate([attack, decay])[:n_total]
    env[: head.shape[0]] = head
    if n_on < n_total:
        level = env[n_on - 1] if n_on > 0 else 0.0
        env[n_on:] = level * np.exp(-np.arange(n_total - n_on) * 5.0 / max(n_total - n_on, 1))
    return env


def _note(timbre: Timbre, freq: float, length_s: float, sample_rate: int) -> np.ndarray:
    n_on = max(int(length_s * sample_rate), 1)
    n_total = n_on + max(int(timbre.release_s * sample_rate), 1)
    t = np.arange(n_total) / sample_rate
    phase = 2 * np.pi * freq * t
    if timbre.vibrato_hz:
        phase = phase + 0.004 * freq / timbre.vibrato_hz * np.sin(2 * np.pi * timbre.vibrato_hz * t)
    env = _envelope(timbre, n_on, n_total, sample_rate)
    if timbre.kind == "fm":
        index = timbre.fm_index * (0.3 + 0.7 * env)
        wave = np.sin(phase + index * np.sin(timbre.fm_ratio * phase))
    else:
        wave = np.zeros(n_total)
        for k, amp in enumerate(timbre.partials, start=1):
            if amp and k * freq < sample_rate / 2:
                wave += amp * np.sin(k * phase)
        wave /= max(sum(timbre.partials), 1e-9)
    return wave * env


def _render_groove(out: np.ndarray, groove: tuple[str, str, str], t_bar: float, beat_s: float,
                   swing: float, sample_rate: int, rng: np.random.Generator) -> None:
    kick, snare, hat = groove
    for step in range(16):
        t = t_bar + step * beat_s / 4 + (swing * beat_s / 4 if step % 2 else 0.0)
        if kick[step] == "x":
            _add(out, _kick(sample_rate) * 0.5, t, sample_rate)
        if snare[step] == "x":
            _add(out, _snare(sample_rate, rng) * 0.3, t, sample_rate)
        if hat[step] == "x":
            _add(out, _hat(sample_rate, rng) * (0.1 if step % 4 else 0.14), t, sample_rate)


def _kick(sample_rate: int) -> np.ndarray:
    t = np.arange(int(0.25 * sample_rate)) / sample_rate
    freq = 45.0 + 110.0 * np.exp(-t * 30.0)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    return np.sin(phase) * np.exp(-t * 14.0)


def _snare(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.18 * sample_rate)) / sample_rate
    noise = lfilter([1.0, -1.0], [1.0, -0.6], rng.standard_normal(t.shape[0]))
    return (0.7 * noise + 0.5 * np.sin(2 * np.pi * 190.0 * t)) * np.exp(-t * 22.0)


def _hat(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.05 * sample_rate)) / sample_rate
    noise = np.diff(rng.standard_normal(t.shape[0] + 1))
    return noise * np.exp(-t * 70.0)


def _add(out: np.ndarray, sound: np.ndarray, t_start: float, sample_rate: int) -> None:
    start = int(round(t_start * sample_rate))
    if start >= out.shape[0]:
        return
    end = min(start + sound.shape[0], out.shape[0])
    out[start:end] += sound[: end - start]
