"""A real-music library from Debian's packages: ``ppazam library build-debian DEST``.

``apt-get download`` fetches the music packages (no install, no root needed beyond apt's
cache), ``dpkg -x`` unpacks them, and their audio files are laid out as::

    DEST/music/<package>/...      the tracks
    DEST/noise/...                short sound effects, the background-noise folder
    DEST/licenses/<package>       each package's copyright file
    DEST/ppazam-library.json      what was built, from which package versions

The folder is built beside DEST and renamed into place at the end, so an interrupted build
leaves nothing that ``ppazam library info DEST`` would trust.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ppazam_core.audio.decode import is_audio_path
from ppazam_core.errors import DebianError
from ppazam_core.audio.library import LIBRARY_MANIFEST

MUSIC_PACKAGES = ("wesnoth-1.16-music", "singularity-music", "hyperrogue-music")
NOISE_PACKAGE = "hyperrogue-music"
NOISE_SUBDIR = "sounds"


@dataclass(frozen=True)
class DebianBuild:
    """What ``build-debian`` produced."""

    root: Path
    packages: dict[str, str]
    music_files: int
    noise_files: int


def build_debian_library(
    dest: Path,
    packages: Sequence[str] = MUSIC_PACKAGES,
    noise_package: str = NOISE_PACKAGE,
) -> DebianBuild:
    """Download, unpack and lay out the Debian music packages into ``dest``."""
    dest = Path(dest).expanduser().resolve()
    if (dest / LIBRARY_MANIFEST).is_file():
        meta = json.loads((dest / LIBRARY_MANIFEST).read_text())
        return DebianBuild(dest, meta["packages"], meta["music_files"], meta["noise_files"])
    if dest.exists() and any(dest.iterdir()):
        raise DebianError(f"{dest} exists and is not empty; give a new or empty folder")
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DebianError(f"{tool} was not found: build-debian needs a Debian or Ubuntu system")
    wanted = list(dict.fromkeys([*packages, noise_package]))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.partial-", dir=dest.parent) as tmp_name:
        tmp = Path(tmp_name)
        debs = download_packages(wanted, tmp / "debs")
        versions = {pkg: package_version(deb) for pkg, deb in debs.items()}
        layout = tmp / "library"
        music_files = noise_files = 0
        for pkg, deb in debs.items():
            unpacked = tmp / "unpacked" / pkg
            unpacked.parent.mkdir(parents=True, exist_ok=True)
            unpack(deb, unpacked)
            audio = sorted(p for p in unpacked.rglob("*") if p.is_file() and is_audio_path(p))
            for path in audio:
                is_noise = pkg == noise_package and NOISE_SUBDIR in path.relative_to(unpacked).parts
                if is_noise:
                    target = layout / "noise" / path.name
                    noise_files += 1
                elif pkg in packages:
                    target = layout / "music" / pkg / _music_relative(unpacked, path)
                    music_files += 1
                else:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, target)
            for copyright_file in unpacked.rglob("copyright"):
                (layout / "licenses").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(copyright_file, layout / "licenses" / pkg)
        if music_files == 0:
            raise DebianError(f"the packages {', '.join(packages)} held no audio files")
        manifest = {"music": "music", "noise": "noise" if noise_files else None,
                    "packages": versions, "music_files": music_files, "noise_files": noise_files}
        (layout / LIBRARY_MANIFEST).write_text(json.dumps(manifest, indent=2))
        if dest.exists():
            dest.rmdir()
        layout.rename(dest)
    return DebianBuild(dest, versions, music_files, noise_files)


def download_packages(packages: Sequence[str], folder: Path) -> dict[str, Path]:
    """``apt-get download`` of ``packages`` into ``folder``; their ``.deb`` files by package.

    Raises:
        DebianError: apt-get fails or gives no file for a package.
    """
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)  # apt drops to the _apt user for downloads when it can
    result = subprocess.run(["apt-get", "download", *packages], cwd=folder,
                            capture_output=True, text=True)
    if result.returncode != 0:
        hint = ""
        if "Unable to locate package" in result.stderr or "has no installation candidate" in result.stderr:
            hint = " (run `apt-get update` first so apt knows these packages)"
        raise DebianError(f"apt-get download {' '.join(packages)} failed{hint}: {result.stderr.strip()}")
    debs = {}
    for pkg in packages:
        found = sorted(folder.glob(f"{pkg}_*.deb"))
        if not found:
            raise DebianError(f"apt-get download gave no .deb for {pkg} in {folder}")
        debs[pkg] = found[0]
    return debs


def package_version(deb: Path) -> str:
    """The version a ``.deb`` file declares; a :class:`DebianError` when dpkg-deb cannot read it."""
    return _run(["dpkg-deb", "--field", str(deb), "Version"], f"reading {deb.name}").strip()


def unpack(deb: Path, folder: Path) -> None:
    """``dpkg -x`` of a ``.deb`` file into ``folder``; a :class:`DebianError` when it fails."""
    _run(["dpkg", "-x", str(deb), str(folder)], f"unpacking {deb.name}")


def _music_relative(unpacked: Path, path: Path) -> Path:
    """The path below the package's ``music`` folder if it has one, else below ``usr/share``."""
    parts = path.relative_to(unpacked).parts
    if "music" in parts:
        return Path(*parts[parts.index("music") + 1 :])
    return Path(*parts[2:]) if parts[:2] == ("usr", "share") else Path(*parts)


def _run(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DebianError(f"{what} failed ({' '.join(command)}): {result.stderr.strip()}")
    return result.stdout
