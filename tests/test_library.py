import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_SPEC, tone, write_audio
from ppazam_core.errors import ConfigError, LibraryError
from ppazam_core.library import (
    LIBRARY_MANIFEST,
    Library,
    SyntheticSpec,
    Track,
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
from ppazam_core.library import SyntheticSpec, synthetic_library
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
    import ppazam_core.library as library_module

    first = scan_folder(fma_folder, cache_dir=cache_dir)
    inspected = []
    original = library_module._inspect_file
    monkeypatch.setattr(library_module, "_inspect_file", lambda p: inspected.append(p.name) or original(p))
    assert scan_folder(fma_folder, cache_dir=cache_dir) == first and inspected == []
    (fma_folder / "001" / "broken.wav").unlink()
    write_audio(fma_folder / "001" / "broken.wav", tone(500, 4.0, 16_000), 16_000)  # repaired
    again = scan_folder(fma_folder, cache_dir=cache_dir)
    assert inspected == ["broken.wav"] and "broken" in [t.id for t in again]
