"""Music libraries: a :class:`Library` is a list of :class:`Track` records plus what was skipped.

Three sources share one type:

* any folder of audio files, scanned recursively (the FMA layout ``000/000002.mp3`` gives the
  id ``000002``; files whose names collide get longer ids, see :func:`_track_ids`); unreadable
  files, files past the decoding bounds of :mod:`ppazam_core.audio.decode` (whatever their header
  claims) and tracks shorter than the query length are listed as skipped with a reason, never
  raised;
* the built-in synthetic library (:mod:`ppazam_core.audio.synth`), rendered once into the cache;
* a folder made by ``ppazam library build-debian`` (see :mod:`ppazam_core.audio.debian`), which
  carries a ``ppazam-library.json`` naming its music and background-noise folders.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, get_type_hints

import numpy as np
import soundfile

from ppazam_core.audio.decode import (AUDIO_EXTENSIONS, DEFAULT_SAMPLE_RATE, MAX_DECODED_S, MAX_SAMPLE_RATE,
                                      MIN_SAMPLE_RATE, SILENCE_DBFS, audio_files, load_audio, measure)
from ppazam_core.errors import AudioError, ConfigError, LibraryError, require_in_range
from ppazam_core.parallel import default_workers, parallel_map
from ppazam_core.seeding import derive_seed
from ppazam_core.store import (atomic_file, atomic_write_text, canonical_json, config_hash, recover_leftovers,
                               storage_errors)
from ppazam_core.toml_tables import MAX_SEED
from ppazam_core.audio.synth import render_track

LIBRARY_MANIFEST = "ppazam-library.json"
DEFAULT_QUERY_S = 3.0
_SCAN_RULES = 4  # how files are measured; bumped when that changes, so older scan-cache records are not reused


@dataclass(frozen=True)
class Track:
    """One identifiable recording. ``source`` is the audio file; ``generator`` names the
    synthetic recipe that produced it, if any; ``sha256`` is the hex SHA-256 of the file's bytes,
    what :meth:`Library.fingerprint` hashes instead of the path."""

    id: str
    title: str
    source: str
    duration_s: float
    sample_rate: int
    channels: int = 1
    silent: bool = False
    generator: str | None = None
    sha256: str = ""


@dataclass(frozen=True)
class SkippedFile:
    """A file of a library folder that is not a usable track, and why."""

    path: str
    reason: str


MAX_SYNTHETIC_TRACKS = 1_000_000  # ten times the peers' 100,000: a bigger count is a typo, not a library
MIN_SYNTHETIC_S = 0.1  # seconds of a synthetic song: a shorter one renders no sample


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the synthetic library: same spec, bit-identical audio."""

    seed: int = 0
    n_tracks: int = 64
    duration_s: float = 30.0
    sample_rate: int = DEFAULT_SAMPLE_RATE

    def __post_init__(self) -> None:
        if not 1 <= self.n_tracks <= MAX_SYNTHETIC_TRACKS:
            raise ConfigError.bad_value("n_tracks", self.n_tracks, f"an integer from 1 to {MAX_SYNTHETIC_TRACKS:,}")
        if not MIN_SYNTHETIC_S <= self.duration_s <= MAX_DECODED_S:
            raise ConfigError.bad_value("duration_s", self.duration_s,
                                        f"seconds from {MIN_SYNTHETIC_S:g} to {MAX_DECODED_S:g} (what a file may hold)")
        if not 0 <= self.seed < 2**64:  # derived seeds (distractors, enrolled songs) use all 64 bits
            raise ConfigError.bad_value("seed", self.seed, f"an integer from 0 to {MAX_SEED}")
        require_in_range("sample_rate", self.sample_rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, integer=True)


@dataclass(frozen=True)
class LibrarySummary:
    """Counts shown by ``ppazam library info`` and written into reports. ``silent_tracks``
    (below -60 dBFS) and ``same_audio`` (groups of track ids whose files are byte-identical;
    see :meth:`Library.same_audio`) are kept as tracks, but no family can identify a silent
    track or tell identical files apart: they cap every top-1."""

    name: str
    n_tracks: int
    total_duration_s: float
    silent_tracks: tuple[str, ...]
    skipped: tuple[SkippedFile, ...]
    sample_rates: dict[int, int]
    channels: dict[int, int]
    same_audio: tuple[tuple[str, ...], ...] = ()

    def warnings(self, most: int = 10) -> list[str]:
        """Lines a user should read before trusting figures on this library: each skipped file,
        the silent tracks, each group of identical files; at most ``most`` of each kind, then
        how many more (``library info --json`` lists them all)."""
        lines = [f"skipped {s.path}: {s.reason}" for s in self.skipped[:most]]
        lines += [f"... and {len(self.skipped) - most} more skipped file(s)"] if len(self.skipped) > most else []
        if self.silent_tracks:
            more = f" and {len(self.silent_tracks) - most} more" if len(self.silent_tracks) > most else ""
            lines.append(f"{len(self.silent_tracks)} silent track(s), no family can identify them: "
                         f"{', '.join(self.silent_tracks[:most])}{more}")
        lines += [f"tracks {', '.join(group)} are identical files: no family can tell them apart"
                  for group in self.same_audio[:most]]
        if len(self.same_audio) > most:
            lines.append(f"... and {len(self.same_audio) - most} more group(s) of identical files")
        return lines


@dataclass(frozen=True)
class Library:
    """An ordered, immutable collection of tracks."""

    name: str
    tracks: tuple[Track, ...]
    skipped: tuple[SkippedFile, ...] = ()
    noise_dir: Path | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = Counter(t.id for t in self.tracks)
        duplicated = sorted(i for i, c in ids.items() if c > 1)
        if duplicated:
            raise LibraryError(f"library {self.name}: duplicated track ids {duplicated[:5]}")
        object.__setattr__(self, "_index", {t.id: i for i, t in enumerate(self.tracks)})

    def __len__(self) -> int:
        return len(self.tracks)

    def __iter__(self) -> Iterator[Track]:
        return iter(self.tracks)

    def index_of(self, track_id: str) -> int:
        """Position of a track id, i.e. its class label."""
        try:
            return self._index[track_id]
        except KeyError:
            raise LibraryError(f"library {self.name} has no track {track_id!r}") from None

    def fingerprint(self) -> str:
        """Hash of the track ids and audio contents (not their paths): the same files in another
        folder give the same key, other audio in a file another one. Datasets and models built
        from the library are keyed by it. Raises :class:`LibraryError` for a track without its
        content hash."""
        unhashed = [t.id for t in self.tracks if not t.sha256]
        if unhashed:
            raise LibraryError(f"library {self.name}: tracks {unhashed[:5]} have no content hash; "
                               "open the library with open_library() to compute it")
        return config_hash([(t.id, t.sha256, t.duration_s, t.sample_rate) for t in self.tracks])

    def load(
        self,
        track: Track,
        sample_rate: int = DEFAULT_SAMPLE_RATE,
        offset_s: float = 0.0,
        duration_s: float | None = None,
    ) -> np.ndarray:
        """Decode (part of) a track to mono float32 at ``sample_rate``."""
        return load_audio(track.source, sample_rate, offset_s, duration_s)

    def summary(self) -> LibrarySummary:
        return LibrarySummary(
            name=self.name,
            n_tracks=len(self.tracks),
            total_duration_s=float(sum(t.duration_s for t in self.tracks)),
            silent_tracks=tuple(t.id for t in self.tracks if t.silent),
            skipped=self.skipped,
            sample_rates=dict(sorted(Counter(t.sample_rate for t in self.tracks).items())),
            channels=dict(sorted(Counter(t.channels for t in self.tracks).items())),
            same_audio=self.same_audio(),
        )

    def same_audio(self) -> tuple[tuple[str, ...], ...]:
        """Groups of track ids (library order) whose files are byte-identical (the same
        SHA-256); tracks without a content hash are left out. The same recording encoded twice
        is not caught."""
        groups: dict[str, list[str]] = {}
        for track in self.tracks:
            if track.sha256:
                groups.setdefault(track.sha256, []).append(track.id)
        return tuple(tuple(ids) for ids in groups.values() if len(ids) > 1)


def open_library(
    source: str | Path,
    cache_dir: Path,
    synthetic: SyntheticSpec = SyntheticSpec(),
    min_duration_s: float = DEFAULT_QUERY_S,
    workers: int | None = None,
) -> Library:
    """Open ``"synthetic"`` or a folder (plain, FMA-style or built by ``build-debian``)."""
    workers = default_workers() if workers is None else workers
    if str(source) == "synthetic":
        return synthetic_library(synthetic, cache_dir, workers)
    root = Path(source).expanduser()
    music, noise = _library_folders(root)
    return scan_folder(music, min_duration_s, workers, name=root.name, noise_dir=noise, cache_dir=cache_dir)


def _library_folders(root: Path) -> tuple[Path, Path | None]:
    """The music and noise folders of the library folder ``root``: those its manifest names (a
    folder ``library build-debian`` wrote), else ``root`` itself and none."""
    manifest = root / LIBRARY_MANIFEST
    if not manifest.is_file():
        return root, None
    meta = json.loads(manifest.read_text())
    return root / meta["music"], root / meta["noise"] if meta.get("noise") else None


def tracks_at_most(source: str | Path, synthetic: SyntheticSpec = SyntheticSpec()) -> int | None:
    """The most tracks :func:`open_library` can find at ``source``, known without rendering or
    decoding anything: the generator's ``n_tracks``, else the audio files under the folder (a
    file that fails to decode lowers the count later). ``None`` when the folder cannot be listed
    (:func:`open_library` says why)."""
    if str(source) == "synthetic":
        return synthetic.n_tracks
    try:
        music, _ = _library_folders(Path(source).expanduser())
        return len(audio_files(music)[0]) if music.is_dir() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def scan_folder(
    root: Path,
    min_duration_s: float = DEFAULT_QUERY_S,
    workers: int = 1,
    name: str | None = None,
    noise_dir: Path | None = None,
    cache_dir: Path | None = None,
    only: Path | None = None,
) -> Library:
    """Scan ``root`` recursively (or only its file ``only``); every audio file is decoded once to
    validate it.

    With ``cache_dir``, what was learnt of each file (its content hash included) is kept under
    ``cache_dir/scans`` and reused while the file's size and modification time are unchanged.
    """
    if not root.is_dir():
        raise LibraryError(f"library folder {root} does not exist or is not a folder")
    paths, irregular = audio_files(root) if only is None else ([only], [])
    skipped = [SkippedFile(str(path), reason) for path, reason in irregular]
    if not paths and not skipped:
        raise LibraryError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under {root}")
    ids = _track_ids(root, paths)
    tracks: list[Track] = []
    for path, outcome in zip(paths, _inspect_files(root, paths, workers, cache_dir)):
        if isinstance(outcome, SkippedFile):
            skipped.append(outcome)
        elif outcome.duration_s < min_duration_s:
            skipped.append(SkippedFile(str(path), f"shorter than the {min_duration_s:g} s query "
                                                  f"length ({outcome.duration_s:.2f} s)"))
        else:
            tracks.append(Track(id=ids[path], title=path.stem, source=str(path),
                                duration_s=outcome.duration_s, sample_rate=outcome.sample_rate,
                                channels=outcome.channels, silent=outcome.silent, sha256=outcome.sha256))
    if not tracks:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
        raise LibraryError(f"no usable track under {root} ({len(skipped)} skipped: {reasons})")
    return Library(name or root.name, tuple(tracks), tuple(skipped), noise_dir)


def synthetic_library(spec: SyntheticSpec, cache_dir: Path, workers: int = 1) -> Library:
    """The built-in library, rendered once into ``cache_dir/synthetic/<hash>``.

    Tracks are rendered in parallel and each is written atomically, so an interrupted run
    resumes; the manifest is written last and is what makes the folder trusted. A manifest
    written before tracks carried their content hash is rebuilt (the audio files are kept).
    """
    folder = cache_dir / "synthetic" / config_hash(spec)
    manifest = folder / "library.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        tracks = tuple(Track(**t) for t in data["tracks"])
        if all(t.sha256 for t in tracks):
            return Library(data["name"], tracks)
    with storage_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    recover_leftovers(folder)  # tracks half-written by a run that died
    jobs = [(spec, i, str(folder)) for i in range(spec.n_tracks)]
    tracks = tuple(parallel_map(_render_to_file, jobs, workers, "rendering synthetic library"))
    name = f"synthetic-{spec.n_tracks}x{spec.duration_s:g}s-seed{spec.seed}"
    atomic_write_text(manifest, canonical_json({"name": name, "spec": spec, "tracks": tracks}))
    return Library(name, tracks)


def synthetic_distractors(spec: SyntheticSpec, n_tracks: int, cache_dir: Path, workers: int = 1,
                          purpose: str = "distractors") -> Library:
    """``n_tracks`` songs outside the synthetic library of ``spec``: the same generator under
    another seed (derived from ``spec.seed`` and ``purpose``: distractors for open-set rejection,
    ``enrolled`` for tracks enrolled after training). A :class:`ConfigError` when ``n_tracks``
    is below 1."""
    if isinstance(n_tracks, bool) or not isinstance(n_tracks, int) or n_tracks < 1:
        raise ConfigError.bad_value(f"{purpose} tracks", n_tracks, "an integer >= 1")
    return synthetic_library(replace(spec, seed=derive_seed(spec.seed, purpose), n_tracks=n_tracks),
                             cache_dir, workers)


def _render_to_file(job: tuple[SyntheticSpec, int, str]) -> Track:
    spec, index, folder = job
    path = Path(folder) / f"track_{index:05d}.flac"
    audio, plan = render_track(spec.seed, index, spec.duration_s, spec.sample_rate)
    if not path.is_file():
        with atomic_file(path, audio.size * 2) as tmp:  # 16-bit samples: FLAC writes fewer bytes
            soundfile.write(str(tmp), audio, spec.sample_rate, subtype="PCM_16", format="FLAC")
    recipe = canonical_json({**asdict(spec), "index": index})
    return Track(id=f"syn{index:05d}", title=plan.title, source=str(path),
                 duration_s=audio.shape[0] / spec.sample_rate, sample_rate=spec.sample_rate,
                 generator=f"synthetic:{recipe}", sha256=_file_sha256(path))


@dataclass(frozen=True)
class _FileFacts:
    duration_s: float
    sample_rate: int
    channels: int
    silent: bool
    sha256: str


def _inspect_files(root: Path, paths: list[Path], workers: int,
                   cache_dir: Path | None) -> list[_FileFacts | SkippedFile]:
    """Facts of each file, from the scan cache where the file's stamp (size in bytes,
    modification time in ns) is unchanged; the others are decoded and hashed again and the
    cache rewritten. A cache file that cannot be read counts as empty."""
    key = config_hash([str(root.resolve()), _SCAN_RULES])
    cache_file = None if cache_dir is None else cache_dir / "scans" / f"{key}.json"
    known = {} if cache_file is None else _read_scan_cache(cache_file)
    stamps = {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in paths}
    todo = [p for p in paths if str(p) not in known or known[str(p)][0] != stamps[str(p)]]
    fresh = dict(zip(todo, parallel_map(_inspect_file, todo, workers, f"scanning {root.name}")))
    outcomes = [fresh[p] if p in fresh else known[str(p)][1] for p in paths]
    if cache_file is not None and todo:
        records = {str(p): {"stamp": stamps[str(p)], "kind": type(o).__name__, **asdict(o)}
                   for p, o in zip(paths, outcomes)}
        atomic_write_text(cache_file, json.dumps(records))
    return outcomes


def _read_scan_cache(cache_file: Path) -> dict[str, tuple[object, _FileFacts | SkippedFile]]:
    """The scan cache as ``{path: (stamp, outcome)}``. A missing file, invalid JSON or JSON of
    another shape gives no record; a record of another shape (say, from an older version) is
    left out."""
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    known = {}
    for path, record in data.items():
        outcome = _from_record(record)
        if outcome is not None:
            known[path] = (record.get("stamp"), outcome)
    return known


def _from_record(record: object) -> _FileFacts | SkippedFile | None:
    """The outcome a scan-cache record holds; None where its kind, keys or value types differ."""
    kinds = {"_FileFacts": _FileFacts, "SkippedFile": SkippedFile}
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str) or record["kind"] not in kinds:
        return None
    kind = kinds[record["kind"]]
    values = {k: v for k, v in record.items() if k not in ("stamp", "kind")}
    types = get_type_hints(kind)
    if values.keys() != types.keys() or not all(isinstance(v, types[k]) for k, v in values.items()):
        return None
    return kind(**values)


def _inspect_file(path: Path) -> _FileFacts | SkippedFile:
    """Decode a whole file (every link of a chained Ogg file) block by block, within the bounds
    of :func:`~ppazam_core.audio.decode.read_blocks`: finite samples, duration and loudness as decoded
    (never as the header claims); and hash its bytes."""
    try:
        stats = measure(path)
        sha256 = _file_sha256(path)
    except AudioError as e:
        return SkippedFile(str(path), e.reason)
    except OSError as e:
        return SkippedFile(str(path), f"cannot read file ({e})")
    return _FileFacts(stats.duration_s, stats.sample_rate, stats.channels, stats.level_dbfs < SILENCE_DBFS, sha256)


def _file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _track_ids(root: Path, paths: list[Path]) -> dict[Path, str]:
    """A distinct id for every file, also when compared case-insensitively.

    The stem where no other file's stem is the same up to case (FMA: ``000/000002.mp3`` ->
    ``000002``); for the others the relative path without extension (``a/theme``,
    ``b/theme``), else with it (``song.WAV``, ``song.mp3``); paths that differ only in case
    are numbered in sorted order (``a/Song.wav~1``, ``a/song.wav~2``).
    """
    namings = (lambda rel: rel.stem, lambda rel: rel.with_suffix("").as_posix(), lambda rel: rel.as_posix())
    ids: dict[Path, str] = {}
    taken: set[str] = set()
    pending = sorted(paths)
    for naming in namings:
        names = {p: naming(p.relative_to(root)) for p in pending}
        counts = Counter(n.casefold() for n in names.values())
        for p, n in names.items():
            if counts[n.casefold()] == 1 and n.casefold() not in taken:
                ids[p] = n
                taken.add(n.casefold())
        pending = [p for p in pending if p not in ids]
    for p in pending:
        base, number = p.relative_to(root).as_posix(), 1
        while f"{base}~{number}".casefold() in taken:
            number += 1
        ids[p] = f"{base}~{number}"
        taken.add(ids[p].casefold())
    return ids

