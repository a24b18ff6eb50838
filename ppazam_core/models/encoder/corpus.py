"""The fingerprint encoder's training corpus: songs no evaluated library holds, streamed to disk.

Two sources, both independent of every library the harness evaluates:

* songs of the built-in generator under a seed of their own (:func:`corpus_seed`, derived from
  the purpose ``"encoder-corpus"``; libraries, distractors, enrolled and background songs use
  ``SyntheticSpec.seed`` and seeds derived from it with other purposes);
* real music from the Debian packages :data:`CORPUS_PACKAGES` only (their files under a
  ``music``, ``audio`` or ``themes`` folder, zipped ``.pk3`` archives included), never those of
  ``ppazam library build-debian`` (:data:`ppazam_core.audio.debian.MUSIC_PACKAGES`).

The corpus is written song by song as 16-bit samples at 16 kHz into one flat file
(``audio.i16``) with a line per song in ``songs.jsonl`` (id, source, first sample, length,
SHA-256 of the source file for real music); a line is written only after its samples, so an
interrupted build resumes where it stopped and memory never holds more than one song.
:class:`CorpusReader` memory-maps the file and draws training windows from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ppazam_core.audio.decode import is_audio_path, load_audio
from ppazam_core.audio.debian import MUSIC_PACKAGES as EVALUATION_PACKAGES
from ppazam_core.audio.debian import download_packages, package_version, unpack
from ppazam_core.errors import AudioError, ConfigError, DebianError, is_integer, is_number
from ppazam_core.parallel import parallel_map, progress_bar
from ppazam_core.seeding import derive_seed
from ppazam_core.store import DONE_MARKER, atomic_write_text, is_complete, settings_hash
from ppazam_core.audio.synth import render_track

CORPUS_PURPOSE = "encoder-corpus"
CORPUS_RATE = 16_000
CORPUS_PACKAGES = ("ufoai-music", "planetblupi-music-ogg", "drascula-music", "pushover-data", "boswars-data",
                   "freedroidrpg-data")
MUSIC_FOLDERS = {"music", "audio", "themes"}  # where these packages keep their music (not sound effects)
ARCHIVE_SUFFIXES = (".pk3",)
AUDIO_FILE = "audio.i16"
SONGS_FILE = "songs.jsonl"
MANIFEST_FILE = "corpus.json"
MIN_SONG_S = 2.0
CORPUS_FORMAT = 1  # raise when the generator or the corpus's layout changes what a spec renders
RENDER_BATCH = 8  # generated songs rendered per task of the worker pool (what memory holds at once)


def corpus_seed(seed: int) -> int:
    """The generator seed of the corpus: never a library's (a seed derived from ``seed`` and the
    purpose ``"encoder-corpus"``)."""
    return derive_seed(seed, CORPUS_PURPOSE)


@dataclass(frozen=True)
class CorpusSpec:
    """What the corpus holds: ``generated_songs`` songs of ``song_s`` seconds from the generator
    under :func:`corpus_seed` of ``seed``, and the music of ``packages`` (none for a corpus
    without real music)."""

    generated_songs: int = 4000
    song_s: float = 30.0
    seed: int = 0
    packages: tuple[str, ...] = CORPUS_PACKAGES

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", tuple(self.packages))
        if not is_integer(self.generated_songs) or self.generated_songs < 0:
            raise ConfigError.bad_value("corpus.generated_songs", self.generated_songs, "an integer >= 0")
        if not is_number(self.song_s) or self.song_s < MIN_SONG_S:
            raise ConfigError.bad_value("corpus.song_s", self.song_s, f"seconds >= {MIN_SONG_S:g}")
        if not is_integer(self.seed):
            raise ConfigError.bad_value("corpus.seed", self.seed, "an integer")
        unknown = [p for p in self.packages if p not in CORPUS_PACKAGES]
        if unknown:
            raise ConfigError.bad_value("corpus.packages", unknown[0],
                                        f"packages of the encoder corpus only: {', '.join(CORPUS_PACKAGES)} (the "
                                        f"evaluation library's {', '.join(EVALUATION_PACKAGES)} must stay unheard)")
        if self.generated_songs == 0 and not self.packages:
            raise ConfigError("the encoder corpus needs generated songs or Debian packages")


@dataclass(frozen=True)
class CorpusSong:
    """One song of a built corpus: samples ``[start, start + length)`` of ``audio.i16``."""

    id: str
    source: str
    start: int
    length: int
    sha256: str = ""


@dataclass(frozen=True)
class Corpus:
    """A built corpus folder and what it holds."""

    folder: Path
    spec: CorpusSpec
    songs: tuple[CorpusSong, ...]
    packages: dict[str, str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    @property
    def hours(self) -> float:
        return sum(s.length for s in self.songs) / CORPUS_RATE / 3600.0

    def summary(self) -> dict:
        """What the encoder's manifest records of its corpus."""
        generated = [s for s in self.songs if s.source == "generator"]
        real = [s for s in self.songs if s.source != "generator"]
        return {"generator": {"seed": corpus_seed(self.spec.seed), "seed_purpose": CORPUS_PURPOSE,
                              "songs": len(generated), "song_s": self.spec.song_s},
                "debian": {"packages": self.packages, "tracks": len(real),
                           "hours": round(sum(s.length for s in real) / CORPUS_RATE / 3600.0, 3),
                           "files": [{"id": s.id, "sha256": s.sha256} for s in real]},
                "songs": len(self.songs), "hours": round(self.hours, 3), "sample_rate": CORPUS_RATE,
                "skipped": list(self.skipped)}


def corpus_folder(spec: CorpusSpec, cache_dir: Path) -> Path:
    """Where the corpus of ``spec`` is built: named by the spec and :data:`CORPUS_FORMAT`, not
    by the code's fingerprint, so that an edit elsewhere does not render hours of audio again."""
    return Path(cache_dir) / "encoder-corpus" / settings_hash({"spec": spec, "format": CORPUS_FORMAT})


def build_corpus(spec: CorpusSpec, cache_dir: Path, workers: int = 1, debian_dir: Path | None = None) -> Corpus:
    """Build (or resume, or find) the corpus of ``spec`` under ``cache_dir/encoder-corpus``.

    ``debian_dir``: a folder holding the packages' ``.deb`` files already (else they are fetched
    with ``apt-get download``). Unreadable music files are skipped and listed.

    Raises:
        DebianError: the packages cannot be fetched or unpacked.
    """
    folder = corpus_folder(spec, cache_dir)
    if is_complete(folder):
        return _read_corpus(folder, spec)
    folder.mkdir(parents=True, exist_ok=True)
    done = _resume(folder)
    with open(folder / AUDIO_FILE, "ab") as audio, open(folder / SONGS_FILE, "a") as lines:
        def append(song_id: str, source: str, samples: np.ndarray, sha256: str = "") -> None:
            start = audio.tell() // 2
            audio.write(_to_int16(samples).tobytes())
            audio.flush()
            os.fsync(audio.fileno())
            song = CorpusSong(song_id, source, start, int(samples.shape[0]), sha256)
            lines.write(json.dumps(asdict(song)) + "\n")
            lines.flush()
            done.add(song_id)

        todo = [i for i in range(spec.generated_songs) if _generated_id(i) not in done]
        batches = [(corpus_seed(spec.seed), todo[i : i + RENDER_BATCH], spec.song_s)
                   for i in range(0, len(todo), RENDER_BATCH)]
        for batch in parallel_map(_render_batch, batches, workers, "rendering the encoder corpus"):
            for index, samples in batch:
                append(_generated_id(index), "generator", samples)
        packages, skipped = {}, []
        if spec.packages:
            packages, skipped = _add_debian_music(spec.packages, folder, debian_dir, done, append)
    atomic_write_text(folder / MANIFEST_FILE, json.dumps({"spec": asdict(spec), "packages": packages,
                                                         "skipped": skipped}, indent=2))
    (folder / DONE_MARKER).write_text("{}")
    return _read_corpus(folder, spec)


def _generated_id(index: int) -> str:
    return f"gen{index:06d}"


def _render_batch(job: tuple[int, list[int], float]) -> list[tuple[int, np.ndarray]]:
    seed, indices, song_s = job
    return [(i, render_track(seed, i, song_s, CORPUS_RATE)[0]) for i in indices]


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")


def _resume(folder: Path) -> set[str]:
    """Ids of the songs a previous, interrupted build finished; the audio file is cut back to
    the end of the last of them (a song half-written is written again)."""
    songs = _read_songs(folder / SONGS_FILE) if (folder / SONGS_FILE).is_file() else []
    _rewrite_songs(folder / SONGS_FILE, songs)
    end = max((s.start + s.length for s in songs), default=0)
    with open(folder / AUDIO_FILE, "ab") as audio:
        audio.truncate(end * 2)
    return {s.id for s in songs}


def _read_songs(path: Path) -> list[CorpusSong]:
    songs = []
    for line in path.read_text().splitlines():
        try:
            songs.append(CorpusSong(**json.loads(line)))
        except (ValueError, TypeError):
            break  # a line cut by an interruption: it and what follows are written again
    return songs


def _rewrite_songs(path: Path, songs: Sequence[CorpusSong]) -> None:
    atomic_write_text(path, "".join(json.dumps(asdict(s)) + "\n" for s in songs))


def _read_corpus(folder: Path, spec: CorpusSpec) -> Corpus:
    meta = json.loads((folder / MANIFEST_FILE).read_text())
    return Corpus(folder, spec, tuple(_read_songs(folder / SONGS_FILE)), meta["packages"], tuple(meta["skipped"]))


def music_files(unpacked: Path) -> list[Path]:
    """The music of an unpacked package: audio files under a folder named ``music``, ``audio``
    or ``themes``, and ``.pk3`` archives (whose members are taken from such folders)."""
    return sorted(p for p in unpacked.rglob("*") if p.is_file() and (p.suffix.lower() in ARCHIVE_SUFFIXES or (
        is_audio_path(p) and MUSIC_FOLDERS & {part.lower() for part in p.relative_to(unpacked).parts[:-1]})))


def _add_debian_music(packages: Sequence[str], folder: Path, debian_dir: Path | None, done: set[str],
                      append) -> tuple[dict[str, str], list[str]]:
    debs = _package_files(packages, folder / "debs", debian_dir)
    versions, skipped = {}, []
    with tempfile.TemporaryDirectory(prefix=".unpacked-", dir=folder) as tmp, progress_bar() as progress:
        bar = progress.add_task("decoding the corpus's Debian music", total=len(debs))
        for package, deb in debs.items():
            versions[package] = package_version(deb)
            unpacked = Path(tmp) / package
            unpack(deb, unpacked)
            for name, path in _music_of(package, unpacked):
                if name in done:
                    continue
                try:
                    samples = load_audio(path, CORPUS_RATE)
                except AudioError as e:
                    skipped.append(f"{name}: {e.reason}")
                    continue
                if samples.shape[0] < MIN_SONG_S * CORPUS_RATE:
                    skipped.append(f"{name}: shorter than {MIN_SONG_S:g} s")
                    continue
                append(name, f"debian:{package}", samples, hashlib.sha256(path.read_bytes()).hexdigest())
            shutil.rmtree(unpacked, ignore_errors=True)
            progress.advance(bar)
    return versions, skipped


def _music_of(package: str, unpacked: Path) -> Iterator[tuple[str, Path]]:
    """``(song id, audio file)`` of every music file of the package, archives' members extracted."""
    for path in music_files(unpacked):
        relative = path.relative_to(unpacked).as_posix()
        if path.suffix.lower() not in ARCHIVE_SUFFIXES:
            yield f"{package}/{relative}", path
            continue
        with zipfile.ZipFile(path) as archive:
            for member in sorted(archive.namelist()):
                if is_audio_path(Path(member)) and MUSIC_FOLDERS & set(Path(member).parts[:-1]):
                    target = path.parent / "members" / member
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))
                    yield f"{package}/{relative}/{member}", target
                    target.unlink()


def _package_files(packages: Sequence[str], folder: Path, debian_dir: Path | None) -> dict[str, Path]:
    """The ``.deb`` file of each package: found in ``debian_dir`` or ``folder``, else fetched."""
    found = {}
    for package in packages:
        matches = [m for where in (debian_dir, folder) if where is not None
                   for m in sorted(Path(where).glob(f"{package}_*.deb"))]
        if matches:
            found[package] = matches[0]
    missing = [p for p in packages if p not in found]
    if missing and shutil.which("apt-get") is None:
        raise DebianError(f"the encoder corpus needs the Debian packages {', '.join(missing)}: apt-get was not "
                          "found (give their .deb files with --debian-dir, or leave real music out with --no-debian)")
    return {**found, **(download_packages(missing, folder) if missing else {})}


class CorpusReader:
    """Draws windows of a built corpus through a memory map (nothing is read into memory but
    the windows drawn). Songs are drawn in proportion to their length, real music weighted
    ``real_weight`` times (it is the scarcer and the harder)."""

    def __init__(self, corpus: Corpus, real_weight: float = 2.0) -> None:
        self.corpus = corpus
        self.audio = np.memmap(corpus.folder / AUDIO_FILE, dtype="<i2", mode="r")
        self.starts = np.array([s.start for s in corpus.songs], dtype=np.int64)
        self.lengths = np.array([s.length for s in corpus.songs], dtype=np.int64)
        weights = self.lengths * np.where([s.source == "generator" for s in corpus.songs], 1.0, real_weight)
        self.weights = weights / weights.sum()

    def __len__(self) -> int:
        return len(self.starts)

    def draw(self, rng: np.random.Generator, n: int, samples: int) -> np.ndarray:
        """``(n, samples)`` float32 windows from ``n`` different songs (fewer songs than ``n``:
        some repeat) at random offsets; a song shorter than a window is zero-padded."""
        songs = rng.choice(len(self), size=n, replace=n > len(self), p=self.weights)
        out = np.zeros((n, samples), dtype=np.float32)
        for row, song in enumerate(songs):
            room = max(0, int(self.lengths[song]) - samples)
            offset = int(self.starts[song]) + int(rng.integers(room + 1))
            piece = self.audio[offset : offset + min(samples, int(self.lengths[song]))]
            out[row, : piece.shape[0]] = piece / 32768.0
        return out
