
import numpy as np
import pytest

from conftest import dominant_hz, tone, write_audio
from ppazam_core.audio.decode import crop_or_pad, is_silent, load_audio, probe, read_blocks, segments_at
from ppazam_core.errors import AudioError

FORMATS = [
    ("tone.wav", {}),
    ("tone.flac", {}),
    ("tone.ogg", {"format": "OGG", "subtype": "VORBIS"}),
    ("tone.opus", {"format": "OGG", "subtype": "OPUS"}),
    ("tone.mp3", {"format": "MP3", "subtype": "MPEG_LAYER_III"}),
]


@pytest.mark.parametrize("name, options", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_decodes_to_mono_float32_at_target_rate(tmp_path, name, options):
    rate = 48_000 if name.endswith(".opus") else 44_100
    path = write_audio(tmp_path / name, tone(440.0, 2.0, rate, channels=2), rate, **options)
    audio = load_audio(path, 16_000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.shape[0] - 32_000) < 1_200  # lossy codecs add a little priming/padding
    assert abs(dominant_hz(audio, 16_000) - 440.0) < 5.0


@pytest.mark.parametrize("rate", [8_000, 48_000])
def test_other_sample_rates_are_resampled(tmp_path, rate):
    path = write_audio(tmp_path / f"t{rate}.wav", tone(1000.0, 1.5, rate), rate)
    audio = load_audio(path, 16_000)
    assert audio.shape == (24_000,)
    assert abs(dominant_hz(audio, 16_000) - 1000.0) < 5.0


def test_six_channels_are_averaged(tmp_path):
    levels = np.array([0.6, 0.0, -0.3, 0.3, 0.1, -0.1], dtype=np.float32)
    data = np.ones((16_000, 6), dtype=np.float32) * levels
    path = write_audio(tmp_path / "surround.wav", data, 16_000, subtype="FLOAT")
    assert probe(path).channels == 6
    np.testing.assert_allclose(load_audio(path), np.full(16_000, levels.mean()), atol=1e-6)


def test_offset_and_duration_select_part_of_the_file(tmp_path):
    ramp = np.linspace(0, 1, 16_000 * 4, dtype=np.float32)
    path = write_audio(tmp_path / "ramp.wav", ramp, 16_000, subtype="FLOAT")
    part = load_audio(path, 16_000, offset_s=1.0, duration_s=2.0)
    np.testing.assert_array_equal(part, ramp[16_000:48_000])


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is not audio, just text named .wav\n" * 20), "not a readable audio file"),
        (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200))), "not a readable audio file"),
    ],
    ids=["zero-byte", "text-named-wav", "corrupt-header"],
)
def test_unreadable_files_raise_audio_error_naming_the_file(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=reason) as caught:
        load_audio(path)
    assert caught.value.path == str(path)


def test_truncated_compressed_file_raises_audio_error(tmp_path):
    path = write_audio(tmp_path / "full.flac", tone(300.0, 3.0, 16_000), 16_000)
    truncated = tmp_path / "cut.flac"
    truncated.write_bytes(path.read_bytes()[:60])
    with pytest.raises(AudioError):
        load_audio(truncated)


def test_non_finite_samples_raise(tmp_path):
    path = write_audio(tmp_path / "nan.wav", np.full(8_000, np.nan, dtype=np.float32), 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nowhere.flac")


def test_silence_is_valid_audio_but_detected(tmp_path):
    path = write_audio(tmp_path / "quiet.wav", np.zeros(16_000, dtype=np.float32), 16_000)
    audio = load_audio(path)
    assert audio.shape == (16_000,) and is_silent(audio)
    assert not is_silent(tone(440.0, 1.0, 16_000)[:, 0])


def test_crop_pad_and_segments():
    audio = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_pad(audio, 4, 3), [3, 4, 5, 6])
    np.testing.assert_array_equal(crop_or_pad(audio, 4, 8), [8, 9, 0, 0])
    segments = segments_at(np.arange(100, dtype=np.float32), 10, [0.0, 2.5, 9.5], 1.0)
    assert segments.shape == (3, 10)
    np.testing.assert_array_equal(segments[1], np.arange(25, 35))
    assert segments[2, 5:].sum() == 0
    with pytest.raises(ValueError):
        crop_or_pad(audio, 0)


def _chained_ogg(folder, rates=(16_000, 16_000)):
    """``cat a.ogg b.ogg``: 5 s of 440 Hz then 6 s of 880 Hz, two logical Vorbis streams."""
    links = [write_audio(folder / name, tone(freq, seconds, rate), rate, format="OGG", subtype="VORBIS")
             for name, freq, seconds, rate in zip(("a.ogg", "b.ogg"), (440.0, 880.0), (5.0, 6.0), rates)]
    chained = folder / "chained.ogg"
    chained.write_bytes(b"".join(p.read_bytes() for p in links))
    return chained


def test_chained_ogg_decodes_every_link(tmp_path):
    path = _chained_ogg(tmp_path)
    assert abs(probe(path).duration_s - 11.0) < 0.1
    audio = load_audio(path, 16_000)
    assert abs(audio.shape[0] - 176_000) < 1_200
    assert abs(dominant_hz(audio[16_000:64_000], 16_000) - 440.0) < 5.0
    assert abs(dominant_hz(audio[96_000:160_000], 16_000) - 880.0) < 5.0


def test_bytes_between_two_joined_ogg_files_do_not_hide_the_second(tmp_path):
    """Was (eighth fault hunt): junk between the links ended the file after the first (5 s of
    11), without a word."""
    path = _chained_ogg(tmp_path)
    first = (tmp_path / "a.ogg").read_bytes()
    path.write_bytes(first + b"\x00JUNK" * 1000 + (tmp_path / "b.ogg").read_bytes())
    assert abs(probe(path).duration_s - 11.0) < 0.1
    audio = load_audio(path, 16_000)
    assert abs(dominant_hz(audio[96_000:160_000], 16_000) - 880.0) < 5.0


def test_offset_and_duration_cross_chained_ogg_links(tmp_path):
    path = _chained_ogg(tmp_path)
    whole = load_audio(path, 16_000)
    across = load_audio(path, 16_000, offset_s=4.0, duration_s=2.0)
    assert across.shape == (32_000,)
    np.testing.assert_allclose(across, whole[64_000:96_000], atol=1e-4)
    assert abs(dominant_hz(across[:14_000], 16_000) - 440.0) < 5.0
    assert abs(dominant_hz(across[18_000:], 16_000) - 880.0) < 5.0
    second = load_audio(path, 16_000, offset_s=7.0, duration_s=3.0)
    np.testing.assert_allclose(second, whole[112_000:160_000], atol=1e-4)
    with pytest.raises(AudioError, match="no audio after"):
        load_audio(path, 16_000, offset_s=12.0)


def test_chained_ogg_links_of_different_rates_raise(tmp_path):
    path = _chained_ogg(tmp_path, rates=(16_000, 22_050))
    with pytest.raises(AudioError, match="different sample rates"):
        load_audio(path)


def test_read_blocks_covers_every_chained_link(tmp_path):
    path = _chained_ogg(tmp_path)
    frames = sum(block.shape[0] for block in read_blocks(path, 4_096))
    assert frames == probe(path).frames and abs(frames - 176_000) < 1_200
