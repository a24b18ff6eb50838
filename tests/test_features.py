import numpy as np
import pytest

from ppazam_core.errors import ConfigError
from ppazam_core.queries.features import FrontEnd, FrontEndConfig, Normalizer
from ppazam_core.audio.synth import render_track


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    return np.stack([render_track(0, i, 3.0, 16_000)[0] for i in range(3)])


def test_default_logmel_maps_a_3s_clip_onto_32x32(clips):
    patches = FrontEnd(FrontEndConfig())(clips)
    assert patches.shape == (3, 1, 32, 32) and patches.dtype == np.float32
    assert np.isfinite(patches).all()
    assert FrontEnd(FrontEndConfig())(clips[0]).shape == (1, 1, 32, 32)


def test_mfcc_with_deltas_and_resized_height(clips):
    config = FrontEndConfig(kind="mfcc", n_mfcc=20, deltas=2, patch_height=60, patch_width=16)
    assert FrontEnd(config)(clips).shape == (3, 1, 60, 16)
    wide = FrontEndConfig(n_mels=64, patch_height=32, hop_length=512, patch_width=64)
    assert FrontEnd(wide)(clips).shape == (3, 1, 32, 64)


def test_patch_selection_and_padding():
    rate = 16_000
    quiet_then_loud = np.concatenate([np.zeros(rate * 2), render_track(0, 0, 1.0, rate)[0]]).astype(np.float32)
    base = dict(hop_length=512, patch_width=20)
    start = FrontEnd(FrontEndConfig(patch_select="start", **base))(quiet_then_loud)
    loud = FrontEnd(FrontEndConfig(patch_select="max-energy", **base))(quiet_then_loud)
    assert loud.mean() > start.mean() + 20  # dB: the loud second was picked
    short = FrontEnd(FrontEndConfig())(quiet_then_loud[-8_000:])
    assert short.shape == (1, 1, 32, 32)
    frames = FrontEnd(FrontEndConfig()).spectrogram(quiet_then_loud[-8_000:]).shape[2]
    assert frames < 32
    np.testing.assert_array_equal(short[0, 0, :, frames:2 * frames], short[0, 0, :, :frames])  # repeated


@pytest.mark.parametrize(
    "kwargs, key",
    [({"kind": "cqt"}, "kind"), ({"patch_select": "loudest"}, "patch_select"), ({"deltas": 3}, "deltas"),
     ({"f_min": 9000.0}, "f_min"), ({"n_mfcc": 80, "kind": "mfcc"}, "n_mfcc"), ({"level_dbfs": 3.0}, "level_dbfs")],
)
def test_bad_front_end_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        FrontEndConfig(**kwargs)
    with pytest.raises(ConfigError, match="bogus"):
        FrontEndConfig.from_dict({"bogus": 1})


def test_normalizer_fits_standardises_and_round_trips(tmp_path, clips):
    patches = FrontEnd(FrontEndConfig())(np.concatenate([clips, clips[::-1] * 0.5]))
    normalizer = Normalizer.fit(patches, batch=2)
    normed = normalizer(patches)
    np.testing.assert_allclose(normed.mean(axis=(0, 1, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(normed.std(axis=(0, 1, 3)), 1.0, atol=1e-3)
    normalizer.save(tmp_path / "n.npz")
    loaded = Normalizer.load(tmp_path / "n.npz")
    np.testing.assert_array_equal(loaded(patches), normed)
    with pytest.raises(ValueError):
        Normalizer.fit(patches[:0])


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_a_gain_leaves_the_patch_unchanged(clips, kind):
    """Clips are leveled to -20 dBFS RMS first: 20 dB quieter is the same patch (to float
    rounding in the STFT: < 0.05 dB), while without leveling a logmel patch moves by 20 dB."""
    front_end = FrontEnd(FrontEndConfig(kind=kind))
    quiet = clips * np.float32(0.1)
    np.testing.assert_allclose(front_end(quiet), front_end(clips), atol=0.05)
    if kind == "logmel":
        raw = FrontEnd(FrontEndConfig(level_dbfs=None))
        assert np.median(raw(clips) - raw(quiet)) == pytest.approx(20.0, abs=0.01)  # bins above the floor
    silent = np.zeros((1, 48_000), dtype=np.float32)
    assert np.isfinite(front_end(silent)).all()  # nothing to amplify


def test_patches_are_c_contiguous(clips):
    """torchaudio's mel spectrogram is transposed in memory; Concrete misreads such arrays."""
    for config in (FrontEndConfig(), FrontEndConfig(kind="mfcc", n_mfcc=20, patch_height=20)):
        assert FrontEnd(config)(clips).flags["C_CONTIGUOUS"]
        assert FrontEnd(config).spectrogram(clips).flags["C_CONTIGUOUS"]
