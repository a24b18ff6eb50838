"""Field reports round 3 (issue 34), audio inputs: headers that lie about length, mostly silent
long files and phase-inverted stereo. Each case failed on the code before the fix: a traceback,
a scan that never returned, a wrong answer or a refusal."""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import pytest
import soundfile

from conftest import dominant_hz, tone, write_audio
from ppazam_core.audio import decode as audio_module
from ppazam_core import recognition
from ppazam_core.audio.decode import load_audio, measure, probe
from ppazam_core.audio.lengths import corrected_view
from ppazam_core.cli import main
from ppazam_core.errors import AudioError
from ppazam_core.families import train_family
from ppazam_core.families.embedding_prototypes import FAMILY, EmbeddingPrototypes, enroll, prototypes
from ppazam_core.audio.library import scan_folder, synthetic_distractors
from ppazam_core.audio.noise import prepared_noise_folder
from test_identifier import ranked_ids

R = TypeVar("R")
RATE = 16_000
HANG_S = 60.0  # what a call may take here before it counts as hung (the old scan ran for 13 min)


def finishes(call: Callable[[], R], seconds: float = HANG_S) -> R:
    """``call()``'s result, or a test failure when it is still running after ``seconds`` (on a
    daemon thread, so that a hung decoder cannot hold the test session)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as e:  # handed to the test below
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds:g} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def lying_mp3(path: Path, frames: int | None = None, times: int | None = None) -> Path:
    """A 4-s 440 Hz stereo MP3 (44.1 kHz, with libsndfile's Xing header) whose Xing frame count
    is replaced by ``frames``, or multiplied by ``times``."""
    if "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile does not write MP3")
    write_audio(path, tone(440.0, 4.0, 44_100, channels=2), 44_100, format="MP3", subtype="MPEG_LAYER_III")
    data = bytearray(path.read_bytes())
    at = max(data.find(b"Xing"), data.find(b"Info"))
    assert at > 0 and struct.unpack(">I", data[at + 4 : at + 8])[0] & 1, "no Xing header with a frame count"
    count = struct.unpack(">I", data[at + 8 : at + 12])[0]
    data[at + 8 : at + 12] = struct.pack(">I", frames if frames is not None else count * times)
    path.write_bytes(bytes(data))
    return path


def lying_wav(path: Path) -> Path:
    """A 4-s 440 Hz WAV whose RIFF and data chunk sizes say 0xFFFFFFFF."""
    write_audio(path, tone(440.0, 4.0, RATE), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    at = data.find(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_an_mp3_claiming_2_32_frames_decodes_the_seconds_it_holds(tmp_path):
    """Was: "Unable to allocate 18.0 TiB" (MemoryError) from ``identify``'s decode."""
    path = lying_mp3(tmp_path / "liar.mp3", frames=0xFFFFFFFF)
    audio = finishes(lambda: load_audio(path, RATE))
    assert abs(audio.shape[0] / RATE - 4.0) < 0.1
    assert abs(dominant_hz(audio, RATE) - 440.0) < 5.0


def test_a_folder_scan_measures_what_decodes_not_what_headers_claim(tmp_path):
    """Was: ``library info`` never returned (stale blocks up to 2^32 MP3 frames), and the count
    x1000 gave 1 h 07 min for a 4-s clip."""
    folder = tmp_path / "lib"
    lying_mp3(folder / "max.mp3", frames=0xFFFFFFFF)
    lying_mp3(folder / "x1000.mp3", times=1000)
    lying_wav(folder / "riff.wav")
    write_audio(folder / "good.flac", tone(660.0, 5.0, RATE), RATE)
    library = finishes(lambda: scan_folder(folder))
    durations = {track.id: round(track.duration_s, 1) for track in library}
    assert durations == {"good": 5.0, "max": 4.0, "riff": 4.0, "x1000": 4.0} and not library.skipped


def flac_claiming(path: Path, total: int, seconds: float = 12.0, rate: int = RATE, channels: int = 1) -> Path:
    """A FLAC of a 440 Hz tone whose STREAMINFO sample count is replaced by ``total`` (0:
    "unknown", as streaming encoders write)."""
    write_audio(path, tone(440.0, seconds, rate, channels=channels), rate, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    fields = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1) | total
    data[18:26] = fields.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def wav_with_data_size(path: Path, size: int, seconds: float = 12.0) -> Path:
    """A 16-bit WAV of a 440 Hz tone whose ``data`` chunk size field says ``size`` bytes."""
    write_audio(path, tone(440.0, seconds, RATE), RATE, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", size)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("claimed_s", [4.0, 0.0, 30.0])
def test_a_flac_whose_header_understates_omits_or_overstates_its_length_decodes_what_it_holds(tmp_path, claimed_s):
    """Was: a 12-s FLAC claiming 4 s was scanned and decoded as 4 s without a word; one claiming
    0 samples (streaming encoders' "unknown") or 30 s failed as damaged (libsndfile's
    ``psf_fseek``)."""
    path = flac_claiming(tmp_path / "claims.flac", int(claimed_s * RATE))
    assert probe(path).frames == measure(path).frames == 12 * RATE
    assert load_audio(path, RATE).shape[0] == 12 * RATE
    late = load_audio(path, RATE, offset_s=9.0, duration_s=2.0)
    assert late.shape[0] == 2 * RATE and abs(dominant_hz(late, RATE) - 440.0) < 5.0


def test_a_stereo_24_bit_flac_with_an_unknown_length_at_44_1_khz_decodes_whole(tmp_path):
    path = tmp_path / "stream.flac"
    write_audio(path, tone(440.0, 7.0, 44_100, channels=2), 44_100, subtype="PCM_24")
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    path.write_bytes(bytes(data))
    assert measure(path).frames == 7 * 44_100


def test_a_wav_whose_data_size_is_zero_decodes_what_it_holds(tmp_path):
    """Was: a WAV with a ``data`` size of 0 (a streaming writer's "unknown") and 12 s of audio
    after it was skipped as "zero-length"."""
    path = wav_with_data_size(tmp_path / "stream.wav", 0)
    assert probe(path).frames == measure(path).frames == 12 * RATE
    assert abs(dominant_hz(load_audio(path, RATE, offset_s=10.0), RATE) - 440.0) < 5.0


@pytest.mark.parametrize("trailing", [b"\0" * 200_000, np.random.default_rng(0).bytes(2_000_000)],
                         ids=["zeros", "random"])
def test_bytes_after_a_wav_s_data_are_not_audio(tmp_path, trailing):
    """Was (eighth fault hunt): 2 MB of random bytes after a 12-s WAV's data were read as 62 s
    more audio (noise), and a query padded so was answered with a wrong track."""
    path = write_audio(tmp_path / "padded.wav", tone(440.0, 12.0, RATE), RATE, subtype="PCM_16")
    path.write_bytes(path.read_bytes() + trailing)
    assert corrected_view(path) is None
    assert measure(path).frames == 12 * RATE


@pytest.mark.parametrize("first_s, second_s", [(12.0, 5.0), (4.0, 12.0)])
def test_two_flac_files_joined_byte_by_byte_read_as_the_first_header_says(tmp_path, first_s, second_s):
    """Was (eighth fault hunt): the length correction found the second stream's last frames and
    gave the first stream the second's length (12 s + 5 s read as 5 s; 4 s + 12 s "lost sync")."""
    first = write_audio(tmp_path / "a.flac", tone(440.0, first_s, RATE), RATE)
    second = write_audio(tmp_path / "b.flac", tone(660.0, second_s, RATE), RATE)
    joined = tmp_path / "joined.flac"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    assert corrected_view(joined) is None
    assert measure(joined).frames == int(first_s * RATE)


def test_a_flac_after_an_id3_tag_with_an_unknown_length_decodes_whole(tmp_path):
    """Was (eighth fault hunt): "truncated or damaged (psf_fseek() failed)": the length was
    corrected only in files starting with ``fLaC``."""
    path = flac_claiming(tmp_path / "plain.flac", 0)
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0]) + b"\0" * 128  # a synchsafe size of 128 bytes
    tagged = tmp_path / "tagged.flac"
    tagged.write_bytes(tag + path.read_bytes())
    assert measure(tagged).frames == 12 * RATE


def test_a_wav_whose_data_is_followed_by_a_chunk_is_read_as_its_header_says(tmp_path):
    path = write_audio(tmp_path / "tagged.wav", tone(440.0, 2.0, RATE), RATE, subtype="PCM_16")
    path.write_bytes(path.read_bytes() + b"LIST" + struct.pack("<I", 4) + b"INFO")
    assert corrected_view(path) is None
    assert measure(path).frames == 2 * RATE


def test_a_valid_flac_is_read_as_it_is_and_a_truncated_one_is_still_damaged(tmp_path):
    path = write_audio(tmp_path / "good.flac", tone(440.0, 6.0, RATE), RATE)
    assert corrected_view(path) is None
    cut = tmp_path / "cut.flac"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AudioError, match="truncated or damaged"):
        measure(cut)


def test_a_truncated_wav_is_used_for_what_it_holds_with_a_warning(tmp_path, caplog):
    """Was (seventh fault hunt): a WAV cut to a third of its length was taken at 4 s without a
    word; its samples are sound, so they are kept, and the scan says the file is short."""
    whole = write_audio(tmp_path / "whole.wav", tone(440.0, 12.0, RATE), RATE, subtype="PCM_16")
    cut = tmp_path / "lib" / "cut.wav"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    with caplog.at_level(logging.WARNING, logger="ppazam_core.audio.decode"):
        assert round(measure(cut).duration_s, 1) == 4.0
        assert round(measure(whole).duration_s, 1) == 12.0
    assert f"{cut}: its header says 12.0 s, it holds 4.0 s (a truncated file?)" in caplog.text
    assert "whole.wav" not in caplog.text


def test_a_folder_scan_takes_a_flac_and_a_wav_at_the_length_they_hold(tmp_path):
    """Was: ``library info`` counted a 12-s track as 4 s and skipped the WAV with a 0 data size."""
    folder = tmp_path / "lib"
    flac_claiming(folder / "short.flac", 4 * RATE)
    wav_with_data_size(folder / "zero.wav", 0)
    library = finishes(lambda: scan_folder(folder))
    assert {track.id: round(track.duration_s, 1) for track in library} == {"short": 12.0, "zero": 12.0}
    assert not library.skipped


def test_files_past_the_decoding_bounds_are_skipped_and_the_others_kept(tmp_path, monkeypatch):
    folder = tmp_path / "lib"
    write_audio(folder / "long.wav", tone(440.0, 8.0, RATE), RATE)
    write_audio(folder / "short.flac", tone(660.0, 4.0, RATE), RATE)
    monkeypatch.setattr(audio_module, "MAX_DECODED_S", 6.0)
    library = scan_folder(folder)
    assert [t.id for t in library] == ["short"]
    assert [(Path(s.path).name, s.reason) for s in library.skipped] == [
        ("long.wav", "decodes to more than 6 s of audio, the most ppazam reads of a file")]
    with pytest.raises(AudioError, match="more than 6 s"):
        load_audio(folder / "long.wav")
    monkeypatch.setattr(audio_module, "MAX_DECODE_WALL_S", 0.0)
    with pytest.raises(AudioError, match="decoding took more than 0 s"):
        load_audio(folder / "short.flac")


# Mostly silent long files, and phase-inverted stereo: identified and enrolled with the
# embedding-prototypes model of the tiny library (the one tests/test_enrollment.py trains).


@pytest.fixture(scope="module")
def model(tiny_library, tiny_config, session_cache) -> EmbeddingPrototypes:
    config, _ = tiny_config
    return train_family(FAMILY, tiny_library, config, session_cache, workers=1)


@pytest.fixture(scope="module")
def new_song(tiny_config, session_cache) -> np.ndarray:
    """8 s of a song the model never saw (the generator under another seed), mono at 16 kHz."""
    config, _ = tiny_config
    (track,) = synthetic_distractors(config.data.synthetic, 1, session_cache)
    return load_audio(track.source, RATE)


def in_silence(song: np.ndarray, at_s: float, total_s: float) -> np.ndarray:
    """``total_s`` seconds of near-silence (-100 dBFS of noise) with ``song`` from ``at_s``."""
    audio = np.random.default_rng(0).standard_normal(int(total_s * RATE)).astype(np.float32) * 1e-5
    start = int(at_s * RATE)
    audio[start : start + song.shape[0]] = song
    return audio


def identify(clip: Path, tiny_config, session_cache, capsys) -> str:
    _, toml = tiny_config
    assert main(["identify", str(clip), "--family", FAMILY, "--config", str(toml), "--cache-dir", str(session_cache),
                 "--workers", "1"]) == 0
    return capsys.readouterr().out


def test_identify_skips_the_silence_of_a_long_clip_and_says_so(model, tiny_library, tiny_config, session_cache,
                                                              tmp_path, capsys):
    """Was: every segment read, silent ones included, and a wrong track with no warning."""
    song = tiny_library.load(tiny_library.tracks[2], RATE)
    clip = write_audio(tmp_path / "long.wav", in_silence(song, 100.0, 240.0), RATE)
    out = identify(clip, tiny_config, session_cache, capsys)
    assert ranked_ids(out)[0] == "syn00002", out
    assert "7 segment(s), 152 silent skipped" in out, out  # 97.5 s to 106.5 s hold the song


def test_a_query_reads_at_most_max_query_s(model, tiny_library, monkeypatch):
    song = tiny_library.load(tiny_library.tracks[2], RATE)
    monkeypatch.setattr(recognition, "MAX_QUERY_S", 4.5)
    query = recognition.prepare_query(np.concatenate([song, song]), model.features, 3.0)
    assert query.read_s == 4.5 and query.patches.shape[0] == 2 and query.silent_segments == 0


def test_enrollment_takes_its_segments_where_the_song_is(model, new_song, tiny_config, tmp_path, capsys,
                                                        session_cache):
    """Was: the prototype of a song 120 s into 200 s of silence came from silent offsets, and the
    song was never identified."""
    config, _ = tiny_config
    folder = tmp_path / "songs"
    write_audio(folder / "late_song.wav", in_silence(new_song, 120.0, 200.0), RATE)
    write_audio(tmp_path / "clean" / "late_song.wav", new_song, RATE)
    clean, _, _ = prototypes(model.embedder, scan_folder(tmp_path / "clean"), config.data.segment_s, 5)
    enrolled = enroll(model, scan_folder(folder), tmp_path / "enrolled")
    assert float(enrolled.prototypes[-1] @ clean[0]) > 0.95
    clip = write_audio(tmp_path / "clip.wav", new_song[RATE : 5 * RATE], RATE)
    assert main(["identify", str(clip), "--model", str(tmp_path / "enrolled")]) == 0
    assert ranked_ids(capsys.readouterr().out)[0] == "late_song"


def test_enrollment_refuses_a_file_with_too_little_audio(model, new_song, tmp_path):
    folder = tmp_path / "songs"
    write_audio(folder / "blip.wav", in_silence(new_song[: RATE], 30.0, 60.0), RATE)
    with pytest.raises(AudioError, match=r"only 1 s of it is above the silence level; enrolling a song needs at "
                                         r"least 3 s") as caught:
        enroll(model, scan_folder(folder), tmp_path / "enrolled")
    assert caught.value.path == str(folder / "blip.wav") and not (tmp_path / "enrolled").exists()


def test_phase_inverted_stereo_is_not_silence(model, tiny_library, tiny_config, session_cache, tmp_path, capsys,
                                              caplog):
    """Was: "clip is silent": the mean of left and -right is zero."""
    song = tiny_library.load(tiny_library.tracks[4], RATE)[RATE : 5 * RATE]
    song *= 10 ** (-21.5 / 20) / np.sqrt(np.mean(np.square(song)))
    clip = write_audio(tmp_path / "inverted" / "inverted.wav", np.stack([song, -song], axis=1), RATE, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="ppazam_core.audio.decode"):
        audio = load_audio(clip, RATE)
    assert abs(20 * np.log10(np.sqrt(np.mean(np.square(audio)))) + 21.5) < 0.1
    assert "out of phase" in caplog.text
    (track,) = scan_folder(clip.parent).tracks
    assert not track.silent
    assert ranked_ids(identify(clip, tiny_config, session_cache, capsys))[0] == "syn00004"


@pytest.mark.parametrize("rate", [192_007, 44_101, 7_919])
def test_a_rate_sharing_no_factor_with_the_working_rate_resamples_in_bounded_memory(rate):
    """torchaudio's filter bank has one phase per step of the reduced ratio: 192,007 Hz to 16 kHz
    asked for 12 GB before the ratio was bounded (a pitch error below 0.01 %)."""
    seconds = 0.5
    out = audio_module.resample(np.zeros(int(rate * seconds), dtype=np.float32), rate, 16_000)
    assert abs(out.shape[0] - 16_000 * seconds) <= 2


def test_a_pipe_named_like_audio_is_not_called_missing(tmp_path):
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(fifo, RATE)


def test_a_pipe_or_broken_link_in_a_folder_is_listed_as_skipped_not_left_out(tmp_path):
    """Was: a FIFO or a dangling link named like audio was silently left out of a library
    folder and a noise folder (``Path.is_file`` filtered it before anything was said)."""
    folder = tmp_path / "music"
    write_audio(folder / "song.wav", tone(440, 4.0, RATE), RATE)
    os.mkfifo(folder / "pipe.wav")
    (folder / "gone.flac").symlink_to(tmp_path / "nowhere.flac")
    library = scan_folder(folder, 3.0)
    assert [t.title for t in library.tracks] == ["song"]
    reasons = {Path(s.path).name: s.reason for s in library.skipped}
    assert "not a regular file" in reasons["pipe.wav"] and "broken link" in reasons["gone.flac"]
    noise = prepared_noise_folder(folder, tmp_path / "cache", RATE)
    skipped = json.loads((noise / "skipped.json").read_text())
    assert "not a regular file" in skipped["pipe.wav"] and "broken link" in skipped["gone.flac"]


def test_identify_lists_a_pipe_and_a_broken_link_of_a_folder_as_skipped(model, tiny_library, tiny_config,
                                                                       session_cache, tmp_path, capsys):
    """Was: ``identify FOLDER`` left a named pipe and a broken link out unsaid ("1 of 2 clip(s)
    skipped" for four entries)."""
    folder = tmp_path / "clips"
    write_audio(folder / "song.wav", tiny_library.load(tiny_library.tracks[1], RATE)[: 4 * RATE], RATE)
    os.mkfifo(folder / "pipe.wav")
    (folder / "gone.flac").symlink_to(tmp_path / "nowhere.flac")
    out = identify(folder, tiny_config, session_cache, capsys)
    assert ranked_ids(out)[0] == "syn00001", out
    assert f"{folder / 'pipe.wav'}: skipped (not a regular file" in out and f"{folder / 'gone.flac'}: skipped" in out
    assert "2 of 3 clip(s) skipped" in out


def test_a_clip_silent_in_all_a_query_reads_says_so(model, monkeypatch):
    monkeypatch.setattr(recognition, "MAX_QUERY_S", 4.5)
    with pytest.raises(AudioError, match="its first 4.5 s, all that a query reads, are silent"):
        recognition.prepare_query(np.zeros(RATE * 10, dtype=np.float32), model.features, 3.0)
    with pytest.raises(AudioError, match="its first 4.5 s, all that a query reads, are silent"):  # read no further
        recognition.prepare_query(np.zeros(int(RATE * 4.5), dtype=np.float32), model.features, 3.0)
    with pytest.raises(AudioError, match="clip is silent"):
        recognition.prepare_query(np.zeros(RATE * 4, dtype=np.float32), model.features, 3.0)


def test_a_constant_offset_is_silence_not_sound(model, tmp_path):
    """Was: a track holding only a DC offset was not called silent, and a query of it was
    identified (tying with a silent track) instead of refused."""
    dc = write_audio(tmp_path / "music" / "dc.wav", np.full(4 * RATE, 0.25, dtype=np.float32), RATE, subtype="FLOAT")
    write_audio(tmp_path / "music" / "song.wav", tone(440, 4.0, RATE) + 0.25, RATE, subtype="FLOAT")
    tracks = {t.title: t for t in scan_folder(dc.parent, 3.0).tracks}
    assert tracks["dc"].silent and not tracks["song"].silent  # a tone riding on the offset is sound
    with pytest.raises(AudioError, match="clip is silent"):
        recognition.prepare_query(load_audio(dc, RATE), model.features, 3.0)
    assert audio_module.audible_seconds(load_audio(dc, RATE), RATE) == 0


def test_a_header_claiming_a_rate_no_music_has_is_refused_as_a_query_and_as_a_track(tmp_path):
    """Was: a WAV whose header said 1 Hz was refused as a library track (past the decoding bound)
    but accepted as a query, resampled from 1 Hz."""
    clip = write_audio(tmp_path / "music" / "one-hz.wav", tone(440, 4.0, RATE), RATE, subtype="PCM_16")
    data = bytearray(clip.read_bytes())
    data[24:28] = struct.pack("<I", 1)  # the fmt chunk's sample rate (and its byte rate after it)
    data[28:32] = struct.pack("<I", 2)
    clip.write_bytes(bytes(data))
    with pytest.raises(AudioError, match="its header claims 1 Hz"):
        load_audio(clip, RATE, duration_s=10.0)
    write_audio(tmp_path / "music" / "song.wav", tone(440, 4.0, RATE), RATE)
    library = scan_folder(clip.parent, 3.0)
    assert [t.title for t in library.tracks] == ["song"]
    assert "its header claims 1 Hz" in library.skipped[0].reason
