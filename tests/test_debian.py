import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import tone, write_audio
from ppazam_core.audio.debian import build_debian_library
from ppazam_core.errors import DebianError
from ppazam_core.audio.library import LIBRARY_MANIFEST, open_library

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs Debian's dpkg-deb")

FAKE_APT_GET = """#!/bin/sh
# stands in for `apt-get download`: copies prebuilt .deb files from $FAKE_DEBS
[ "$1" = download ] || exit 64
shift
for pkg in "$@"; do
    set -- "$FAKE_DEBS/${pkg}"_*.deb
    if [ ! -f "$1" ]; then echo "E: Unable to locate package $pkg" >&2; exit 100; fi
    cp "$1" .
done
"""


def _deb(folder: Path, name: str, files: dict[str, float]) -> None:
    root = folder / f"{name}-build"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.2-3\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n")
    for relative, seconds in files.items():
        write_audio(root / relative, tone(440, seconds, 22_050), 22_050, format="OGG", subtype="VORBIS")
    (root / "usr/share/doc" / name).mkdir(parents=True)
    (root / "usr/share/doc" / name / "copyright").write_text(f"{name}: CC-BY-SA\n")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(folder / f"{name}_1.2-3_all.deb")],
                   check=True, capture_output=True)
    shutil.rmtree(root)


@pytest.fixture
def fake_apt(tmp_path, monkeypatch) -> Path:
    debs = tmp_path / "debs"
    debs.mkdir()
    _deb(debs, "tunes-music", {"usr/share/games/tunes/music/battle.ogg": 4.0, "usr/share/games/tunes/music/calm.ogg": 5.0})
    _deb(debs, "rogue-music", {"usr/share/rogue/music/cave.ogg": 4.0, "usr/share/rogue/sounds/click.ogg": 0.3,
                               "usr/share/rogue/sounds/door.ogg": 0.5})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(FAKE_APT_GET)
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DEBS", str(debs))
    return debs


def test_build_lays_out_music_noise_and_licenses(fake_apt, tmp_path):
    dest = tmp_path / "library"
    build = build_debian_library(dest, ("tunes-music", "rogue-music"), "rogue-music")
    assert build.packages == {"tunes-music": "1.2-3", "rogue-music": "1.2-3"}
    assert (build.music_files, build.noise_files) == (3, 2)
    assert sorted(p.relative_to(dest).as_posix() for p in (dest / "music").rglob("*.ogg")) == [
        "music/rogue-music/cave.ogg", "music/tunes-music/battle.ogg", "music/tunes-music/calm.ogg"]
    assert sorted(p.name for p in (dest / "noise").iterdir()) == ["click.ogg", "door.ogg"]
    assert (dest / "licenses" / "tunes-music").read_text().startswith("tunes-music")
    assert json.loads((dest / LIBRARY_MANIFEST).read_text())["noise"] == "noise"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left

    library = open_library(dest, tmp_path / "cache", min_duration_s=3.0)
    assert [t.id for t in library] == ["cave", "battle", "calm"]
    assert library.noise_dir == dest / "noise"
    assert build_debian_library(dest, ("tunes-music",), "rogue-music") == build  # already built: no-op


def test_missing_package_suggests_apt_get_update(fake_apt, tmp_path):
    with pytest.raises(DebianError, match="apt-get update"):
        build_debian_library(tmp_path / "lib", ("no-such-music",), "rogue-music")
    assert not (tmp_path / "lib").exists()


def test_non_empty_destination_is_refused(fake_apt, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "keep.txt").write_text("mine")
    with pytest.raises(DebianError, match="not empty"):
        build_debian_library(tmp_path / "lib", ("tunes-music",), "rogue-music")
    assert (tmp_path / "lib" / "keep.txt").read_text() == "mine"
