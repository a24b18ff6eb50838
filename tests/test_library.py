import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_SPEC, tone, write_audio
from ppazam_core.errors import ConfigError, LibraryError
from ppazam_core.audio.library import (
    LIBRARY_MANIFEST,
    Library,
    SyntheticSpec,
    Track,
    _track_ids,
    open_library,
    scan_folder,
    synthetic_library,
)


@pytest.fixture
def fma_folder(tmp_path: Path) -> Path:
    """FMA-like layout with good, short, silent, corrupt and non-audio files."""
    root = tmp_path / "fma"
    write_audio(root / "000" / "000002.mp3", tone(440, 5.0, 44_100, channels=2), 44_100, format="MP3")
    write_audio(root / "000" / "000005.flac", tone(660, 4.0, 48_000), 48_000)
    write_audio(root / "001" / "001000.ogg", tone(550, 6.0, 22_050), 22_050, format="OGG", subtype="VORBIS")
    write_audio(root / "001" / "001001.wav", np.zeros((16_000 * 4, 1), dtype=np.float32), 16_000)
    write_audio(root / "001" / "short.wav", tone(300, 1.0, 16_000), 16_000)
    (root / "001" / "broken.wav").write_text("not audio")
    (root / "001" / "empty.flac").write_bytes(b"")
    (root / "README.txt").write_text("track listing")
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    return root


def test_folder_scan_lists_tracks_and_skips_bad_files(fma_folder):
    library = scan_folder(fma_folder, min_duration_s=3.0)
    assert [t.id for t in library] == ["000002", "000005", "001000", "001001"]
    first = library.tracks[0]
    assert first.sample_rate == 44_100 and first.channels == 2 and abs(first.duration_s - 5.0) < 0.1
    skipped = {Path(s.path).name: s.reason for s in library.skipped}
    assert set(skipped) == {"short.wav", "broken.wav", "empty.flac"}
    assert "shorter than the 3 s query length" in skipped["short.wav"]
    assert "empty file" in skipped["empty.flac"]
    summary = library.summary()
    assert summary.silent_tracks == ("001001",)
    assert summary.n_tracks == 4 and abs(summary.total_duration_s - 19.0) < 0.2
    assert summary.sample_rates == {16_000: 1, 22_050: 1, 44_100: 1, 48_000: 1}


def test_silent_tracks_and_copies_of_one_file_are_warned_of(fma_folder):
    shutil.copy(fma_folder / "000" / "000005.flac", fma_folder / "001" / "copy.flac")
    summary = scan_folder(fma_folder, min_duration_s=3.0).summary()
    assert summary.same_audio == (("000005", "copy"),)
    warnings = summary.warnings()
    assert sum(line.startswith("skipped ") for line in warnings) == 3
    assert any("silent" in line and "001001" in line for line in warnings)
    assert "tracks 000005, copy are identical files: no family can tell them apart" in warnings
    unhashed = Library("x", (Track("a", "a", "a.wav", 4.0, 16_000), Track("b", "b", "b.wav", 4.0, 16_000)))
    assert unhashed.same_audio() == ()
    assert synthetic_library(SyntheticSpec(n_tracks=2, duration_s=2.0), fma_folder.parent / "cache").summary(
    ).warnings() == []


def test_tracks_load_at_the_requested_rate(fma_folder):
    library = scan_folder(fma_folder)
    audio = library.load(library.tracks[1], 16_000)
    assert audio.dtype == np.float32 and abs(audio.shape[0] - 64_000) < 10
    assert library.index_of("001000") == 2
    with pytest.raises(LibraryError, match="no track"):
        library.index_of("nope")


def test_duplicate_stems_get_relative_path_ids(tmp_path):
    write_audio(tmp_path / "a" / "theme.wav", tone(400, 4.0, 16_000), 16_000)
    write_audio(tmp_path / "b" / "theme.wav", tone(500, 4.0, 16_000), 16_000)
    assert [t.id for t in scan_folder(tmp_path)] == ["a/theme", "b/theme"]


def test_folder_without_audio_and_missing_folder_are_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(LibraryError, match="no audio files"):
        scan_folder(tmp_path)
    with pytest.raises(LibraryError, match="does not exist"):
        open_library(tmp_path / "missing", tmp_path / "cache")


def test_folder_with_only_bad_audio_is_an_error_listing_them(tmp_path):
    (tmp_path / "bad.wav").write_text("nope")
    with pytest.raises(LibraryError, match="bad.wav"):
        scan_folder(tmp_path)


def test_scanning_with_workers_gives_the_same_library(fma_folder):
    assert scan_folder(fma_folder, workers=2) == scan_folder(fma_folder, workers=1)


def test_manifest_folder_names_music_and_noise(tmp_path):
    write_audio(tmp_path / "music" / "x" / "song.ogg", tone(440, 4.0, 16_000), 16_000, format="OGG")
    write_audio(tmp_path / "noise" / "click.ogg", tone(2000, 0.5, 16_000), 16_000, format="OGG")
    (tmp_path / LIBRARY_MANIFEST).write_text(json.dumps({"music": "music", "noise": "noise"}))
    library = open_library(tmp_path, tmp_path / "cache")
    assert [t.id for t in library] == ["song"] and library.noise_dir == tmp_path / "noise"


def test_duplicate_ids_are_refused():
    track = Track("a", "a", "/x.wav", 5.0, 16_000)
    with pytest.raises(LibraryError, match="duplicated"):
        Library("dup", (track, track))


def test_synthetic_library_is_cached_and_complete(tiny_library, session_cache):
    assert len(tiny_library) == TINY_SPEC.n_tracks
    assert all(Path(t.source).is_file() and t.generator.startswith("synthetic:") for t in tiny_library)
    assert all(t.duration_s == TINY_SPEC.duration_s for t in tiny_library)
    assert synthetic_library(TINY_SPEC, session_cache) == tiny_library


def test_interrupted_synthetic_build_resumes(cache_dir):
    spec = SyntheticSpec(seed=3, n_tracks=3, duration_s=4.0)
    library = synthetic_library(spec, cache_dir)
    folder = Path(library.tracks[0].source).parent
    (folder / "library.json").unlink()  # as if killed before the manifest
    Path(library.tracks[2].source).unlink()
    assert synthetic_library(spec, cache_dir) == library
    assert Path(library.tracks[2].source).is_file()


_HASH_SCRIPT = """
import hashlib, sys
from pathlib import Path
from ppazam_core.audio.library import SyntheticSpec, synthetic_library
lib = synthetic_library(SyntheticSpec(seed=11, n_tracks=3, duration_s=5.0), Path(sys.argv[1]), workers=int(sys.argv[2]))
print(";".join(hashlib.sha256(Path(t.source).read_bytes()).hexdigest() for t in lib))
"""


def test_synthetic_library_is_bit_identical_across_processes(tmp_path):
    digests = [
        subprocess.run([sys.executable, "-c", _HASH_SCRIPT, str(tmp_path / f"c{i}"), str(workers)],
                       capture_output=True, text=True, check=True).stdout.strip()
        for i, workers in enumerate((1, 2))
    ]
    assert digests[0] == digests[1]
    assert len(set(digests[0].split(";"))) == 3


def test_bad_synthetic_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="n_tracks"):
        SyntheticSpec(n_tracks=0)


def test_scan_cache_reuses_unchanged_files_and_rechecks_changed_ones(fma_folder, cache_dir, monkeypatch):
    import ppazam_core.audio.library as library_module

    first = scan_folder(fma_folder, cache_dir=cache_dir)
    inspected = []
    original = library_module._inspect_file
    monkeypatch.setattr(library_module, "_inspect_file", lambda p: inspected.append(p.name) or original(p))
    assert scan_folder(fma_folder, cache_dir=cache_dir) == first and inspected == []
    (fma_folder / "001" / "broken.wav").unlink()
    write_audio(fma_folder / "001" / "broken.wav", tone(500, 4.0, 16_000), 16_000)  # repaired
    again = scan_folder(fma_folder, cache_dir=cache_dir)
    assert inspected == ["broken.wav"] and "broken" in [t.id for t in again]


def test_same_stem_with_other_extensions_or_case_gets_distinct_ids(tmp_path):
    for name in ("song.WAV", "song.mp3", "a/song.wav", "a/song.flac", "b/Song.wav"):
        write_audio(tmp_path / name, tone(440, 4.0, 16_000), 16_000, format="MP3" if name.endswith("mp3") else None)
    library = scan_folder(tmp_path)
    assert {Path(t.source).relative_to(tmp_path).as_posix(): t.id for t in library} == {
        "a/song.flac": "a/song.flac", "a/song.wav": "a/song.wav", "b/Song.wav": "b/Song",
        "song.WAV": "song.WAV", "song.mp3": "song.mp3",
    }
    assert not library.skipped


def test_track_ids_are_unique_even_up_to_case_and_keep_unique_stems(tmp_path):
    names = ["000/000002.mp3", "a/song.wav", "a/song.flac", "b/song.wav", "x/Intro.mp3", "y/intro.ogg",
             "c/Take.wav", "c/take.wav", "song.wav.mp3", "song.wav"]
    ids = _track_ids(tmp_path, [tmp_path / n for n in names])
    assert {p.relative_to(tmp_path).as_posix(): i for p, i in ids.items()} == {
        "000/000002.mp3": "000002", "song.wav.mp3": "song.wav", "b/song.wav": "b/song", "song.wav": "song",
        "x/Intro.mp3": "x/Intro", "y/intro.ogg": "y/intro", "a/song.wav": "a/song.wav",
        "a/song.flac": "a/song.flac", "c/Take.wav": "c/Take.wav~1", "c/take.wav": "c/take.wav~2",
    }
    assert len({i.casefold() for i in ids.values()}) == len(names)


def test_chained_ogg_track_lasts_all_its_links(tmp_path):
    links = [write_audio(tmp_path / "parts" / f"{i}.ogg", tone(f, s, 16_000), 16_000, format="OGG", subtype="VORBIS")
             for i, (f, s) in enumerate([(440, 5.0), (880, 6.0)])]
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "chained.ogg").write_bytes(b"".join(p.read_bytes() for p in links))
    (track,) = scan_folder(tmp_path / "music").tracks
    assert abs(track.duration_s - 11.0) < 0.1


def test_fingerprint_is_the_same_for_one_synthetic_spec_in_two_cache_folders(tmp_path):
    spec = SyntheticSpec(seed=5, n_tracks=2, duration_s=4.0)
    first, second = (synthetic_library(spec, tmp_path / name) for name in ("c1", "c2"))
    assert first.tracks[0].source != second.tracks[0].source
    assert first.fingerprint() == second.fingerprint()
    assert first.fingerprint() != synthetic_library(SyntheticSpec(seed=6, n_tracks=2, duration_s=4.0),
                                                    tmp_path / "c1").fingerprint()


def test_synthetic_manifest_without_content_hashes_is_rebuilt(cache_dir):
    spec = SyntheticSpec(seed=3, n_tracks=2, duration_s=4.0)
    library = synthetic_library(spec, cache_dir)
    manifest = Path(library.tracks[0].source).parent / "library.json"
    data = json.loads(manifest.read_text())
    for track in data["tracks"]:
        del track["sha256"]
    manifest.write_text(json.dumps(data))
    assert synthetic_library(spec, cache_dir) == library
    assert all(t["sha256"] for t in json.loads(manifest.read_text())["tracks"])


def test_fingerprint_follows_audio_content_not_paths(tmp_path, cache_dir):
    music = tmp_path / "music"
    write_audio(music / "one.wav", tone(440, 4.0, 16_000), 16_000)
    write_audio(music / "two.wav", tone(550, 4.0, 16_000), 16_000)
    original = scan_folder(music, cache_dir=cache_dir).fingerprint()
    shutil.copytree(music, tmp_path / "elsewhere" / "copy")
    assert scan_folder(tmp_path / "elsewhere" / "copy", cache_dir=cache_dir).fingerprint() == original
    write_audio(music / "two.wav", tone(660, 4.0, 16_000), 16_000)  # same length, other audio
    assert scan_folder(music, cache_dir=cache_dir).fingerprint() != original
    assert scan_folder(music).fingerprint() != original


def test_fingerprint_needs_content_hashes():
    with pytest.raises(LibraryError, match="no content hash"):
        Library("bare", (Track("a", "a", "/x.wav", 5.0, 16_000),)).fingerprint()


def _garble_records(text: str) -> str:
    records = json.loads(text)
    return json.dumps({path: {**r, "duration_s": "long"} if "duration_s" in r else {**r, "reason": 3}
                       for path, r in records.items()})


@pytest.mark.parametrize(
    "garble",
    [lambda t: t[: len(t) // 2], lambda t: "not json", lambda t: "[]", lambda t: "null",
     lambda t: json.dumps({path: [1, 2] for path in json.loads(t)}), _garble_records],
    ids=["truncated", "invalid", "list", "null", "wrong-records", "wrong-types"],
)
def test_garbled_scan_cache_is_rescanned_and_rewritten(fma_folder, cache_dir, monkeypatch, garble):
    import ppazam_core.audio.library as library_module

    first = open_library(fma_folder, cache_dir, workers=1)
    (cache_file,) = (cache_dir / "scans").iterdir()
    good = cache_file.read_text()
    cache_file.write_text(garble(good))
    inspected = []
    original = library_module._inspect_file
    monkeypatch.setattr(library_module, "_inspect_file", lambda p: inspected.append(p.name) or original(p))
    assert open_library(fma_folder, cache_dir, workers=1) == first
    assert len(inspected) == 7  # every audio file, decoded again
    assert json.loads(cache_file.read_text()) == json.loads(good)
