import numpy as np

from ppazam_core.audio.synth import STYLES, render_track


def _spectrum(audio: np.ndarray, n_fft: int = 4096) -> np.ndarray:
    frames = audio[: audio.shape[0] // n_fft * n_fft].reshape(-1, n_fft)
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)).mean(axis=0)


def test_same_arguments_same_audio_and_different_tracks_differ():
    a, plan = render_track(1, 4, 6.0, 16_000)
    b, _ = render_track(1, 4, 6.0, 16_000)
    c, _ = render_track(1, 5, 6.0, 16_000)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (96_000,)
    assert not np.allclose(a, c)
    assert 0.5 < np.abs(a).max() <= 0.9
    assert plan.style in {s.name for s in STYLES} and plan.key in plan.title


def test_tracks_are_polyphonic_music_not_single_tones():
    audio, _ = render_track(0, 0, 10.0, 16_000)
    spectrum = _spectrum(audio)
    strong = spectrum > 0.1 * spectrum.max()
    peaks = np.sum(strong[1:-1] & (spectrum[1:-1] > spectrum[:-2]) & (spectrum[1:-1] >= spectrum[2:]))
    assert peaks >= 8  # chords, bass, melody and their partials


def test_sections_change_over_time():
    audio, plan = render_track(2, 9, 30.0, 16_000)
    assert len(set(plan.sections)) >= 2
    thirds = np.array_split(audio, 3)
    spectra = [_spectrum(x) / np.linalg.norm(_spectrum(x)) for x in thirds]
    assert min(float(spectra[0] @ s) for s in spectra[1:]) < 0.995


def test_every_style_appears_in_a_library_sized_draw():
    styles = {render_track(0, i, 1.0, 16_000)[1].style for i in range(40)}
    assert styles == {s.name for s in STYLES}
