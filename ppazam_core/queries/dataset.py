"""Datasets of augmented segments: ``(library, policy, count, segment, front-end, seed)`` to
``X, y`` plus metadata, cached on disk under a hash of all inputs.

Each query is one clip named by ``(seed, split, track id, augmentation index)``: the offset in
the track, the augmentation seed and the recording gain are all derived from that name, so a
query can be rebuilt on its own. A query longer than a segment is augmented whole, then cut
into segments (:func:`~ppazam_core.queries.conditions.segment_starts`), one row each, consecutive.
Tracks are processed on a worker pool and streamed into a memory-mapped array, so
memory does not grow with the library; datasets of the same clips through several front-ends
are built in one pass (:func:`build_datasets`). The folder is written atomically
(:func:`ppazam_core.store.atomic_folder`); a stored dataset found damaged is built again.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ppazam_core.artifacts import damaged, read_json, reading
from ppazam_core.audio.decode import crop_or_pad, load_audio
from ppazam_core.queries.augment import AugmentationPolicy, Augmenter
from ppazam_core.queries.conditions import apply_gain, check_gain_range, query_segments, segment_starts
from ppazam_core.errors import ConfigError, DamagedArtifactError, LibraryError, is_number
from ppazam_core.queries.features import FrontEnd, FrontEndConfig, Normalizer
from ppazam_core.audio.library import Library, Track
from ppazam_core.parallel import default_workers, parallel_map
from ppazam_core.audio.rooms import RoomBankSpec, room_bank
from ppazam_core.seeding import Split, derive_seed
from ppazam_core.store import allocate, atomic_folder, canonical_json, config_hash, is_complete, require_space
from ppazam_core.threads import fixed_threads

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is made of (the library and noise folder are given separately). Each
    query clip lasts ``query_s`` (default: one segment of ``segment_s``) and is heard at a gain
    drawn uniformly from ``gain_db`` (dB; ``(g, g)`` fixes it) after the policy's transforms,
    hard-clipped to full scale. A track gets ``augmentations_per_track`` clips, or more when it
    is long: ``clips_per_minute`` of its duration (0: the count alone), so clips cover a 3-minute
    song as densely as a 30-s one (:meth:`clips_for`)."""

    policy: AugmentationPolicy
    augmentations_per_track: int = 50
    segment_s: float = 3.0
    features: FrontEndConfig = field(default_factory=FrontEndConfig)
    seed: int = 0
    split: str = Split.TRAIN.value
    gain_db: tuple[float, float] = (0.0, 0.0)
    query_s: float | None = None
    clips_per_minute: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "gain_db", check_gain_range("gain_db", tuple(self.gain_db)))
        if self.query_s is not None and not self.query_s > 0:
            raise ConfigError.bad_value("query_s", self.query_s, "a number of seconds > 0")
        if self.augmentations_per_track < 1:
            raise ConfigError.bad_value("augmentations_per_track", self.augmentations_per_track, "an integer >= 1")
        if not is_number(self.clips_per_minute) or not 0 <= self.clips_per_minute < math.inf:
            raise ConfigError.bad_value("clips_per_minute", self.clips_per_minute, "a number >= 0")
        if not self.segment_s > 0:
            raise ConfigError.bad_value("segment_s", self.segment_s, "a number > 0")
        if self.split not in {s.value for s in Split}:
            raise ConfigError.bad_value("split", self.split, [s.value for s in Split])

    def clips_for(self, duration_s: float) -> int:
        """Clips drawn from a track of ``duration_s`` seconds: ``augmentations_per_track``, or
        ``ceil(clips_per_minute * duration_s / 60)`` when that is more."""
        return max(self.augmentations_per_track, math.ceil(self.clips_per_minute * duration_s / 60.0 - 1e-9))

    @property
    def clip_s(self) -> float:
        """Seconds of audio in one query."""
        return self.segment_s if self.query_s is None else self.query_s

    @property
    def segments(self) -> int:
        """Rows (segments) per query."""
        return len(segment_starts(self.clip_s, self.segment_s))


@dataclass(frozen=True, eq=False)
class Dataset:
    """A built dataset. ``X`` is memory-mapped ``(N, 1, H, W)`` float32 (not normalized), one
    row per segment, the ``segments`` rows of a query consecutive; ``y[i]`` indexes
    ``track_ids``; ``normalizer`` was fitted on this dataset's ``X``."""

    folder: Path
    X: np.ndarray
    y: np.ndarray
    meta: pd.DataFrame
    track_ids: tuple[str, ...]
    normalizer: Normalizer
    info: dict

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def segments(self) -> int:
        """Rows per query."""
        return int(self.info.get("segments_per_query", 1))

    @property
    def queries(self) -> int:
        return len(self) // self.segments

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())


def dataset_key(library: Library, spec: DatasetSpec, noise_dir: Path | None,
                tracks: tuple[int, ...] | None = None) -> str:
    """The cache key: every input that changes a single byte of the dataset."""
    key = {"library": library.fingerprint(), "spec": spec, "noise": _noise_fingerprint(spec, noise_dir),
           "rooms": rooms_spec(spec) if spec.policy.needs_rooms else None}
    return config_hash(key if tracks is None else {**key, "tracks": list(tracks)})


def build_dataset(
    library: Library,
    spec: DatasetSpec,
    cache_dir: Path,
    noise_dir: Path | None = None,
    workers: int | None = None,
    tracks: Sequence[int] | None = None,
) -> Dataset:
    """Load the dataset from ``cache_dir/datasets`` or build it there. ``tracks`` (positions in
    ``library``) draws clips from those tracks only; labels and ``track_ids`` stay the whole
    library's, and each clip is the one the whole-library dataset holds for its track. A stored
    dataset with a damaged file is built again, with a warning."""
    return build_datasets(library, [spec], cache_dir, noise_dir, workers, tracks)[0]


def build_datasets(
    library: Library,
    specs: Sequence[DatasetSpec],
    cache_dir: Path,
    noise_dir: Path | None = None,
    workers: int | None = None,
    tracks: Sequence[int] | None = None,
) -> list[Dataset]:
    """:func:`build_dataset` for specs of the same clips (:func:`same_clips`: several families'
    front-ends and segments): the clips of those not in the store are cut and augmented once,
    then cut into each spec's segments and put through its front-end, which gives the datasets
    :func:`build_dataset` would build one at a time. Returned in the order of ``specs``; a
    :class:`ValueError` for specs of other clips."""
    if not all(same_clips(spec, specs[0]) for spec in specs):
        raise ValueError("datasets built together must hold the same clips (they may differ in their front-end and "
                         "segments only, at one sample rate)")
    chosen = None if tracks is None else tuple(sorted(set(int(t) for t in tracks)))
    if chosen is not None and (not chosen or chosen[0] < 0 or chosen[-1] >= len(library)):
        raise ConfigError.bad_value("dataset tracks", tracks, f"positions 0 to {len(library) - 1}, at least one")
    folders = [cache_dir / "datasets" / dataset_key(library, spec, noise_dir, chosen) for spec in specs]
    found: dict[Path, Dataset] = {}
    for folder in dict.fromkeys(folders):
        if is_complete(folder):
            try:
                found[folder] = load_dataset(folder)
            except DamagedArtifactError as e:
                logger.warning("%s is damaged (%s); building dataset %s again", e.path, e.reason, folder.name)
    missing = {folder: spec for folder, spec in zip(folders, specs) if folder not in found}
    if missing:
        _build(library, missing, noise_dir, default_workers() if workers is None else workers, chosen, cache_dir)
        found.update((folder, load_dataset(folder)) for folder in missing)
    return [found[folder] for folder in folders]


def same_clips(a: DatasetSpec, b: DatasetSpec) -> bool:
    """Whether two specs hold the same clips (length, offsets, augmentation, gains and seeds
    depend on the clip's length, not its segments), cut into segments and put through a
    front-end at the same sample rate, possibly in other ways."""
    def clips(spec: DatasetSpec) -> DatasetSpec:
        return replace(spec, features=None, segment_s=spec.clip_s, query_s=None)

    return clips(a) == clips(b) and a.features.sample_rate == b.features.sample_rate


def _build(library: Library, specs: dict[Path, DatasetSpec], noise_dir: Path | None, workers: int,
           chosen: tuple[int, ...] | None, cache_dir: Path) -> None:
    """Write the dataset of each ``folder: spec`` (specs of the same clips, :func:`same_clips`)."""
    if len(library) == 0:
        raise LibraryError(f"library {library.name} has no tracks to build a dataset from")
    spec = next(iter(specs.values()))
    rooms = room_bank(cache_dir, rooms_spec(spec)) if spec.policy.needs_rooms else None
    labels = range(len(library)) if chosen is None else chosen
    clips = np.cumsum([spec.clips_for(library.tracks[label].duration_s) for label in labels])
    started = time.perf_counter()
    with ExitStack() as stack:
        tmps = [stack.enter_context(atomic_folder(folder)) for folder in specs]
        Xs = [_allocated_rows(tmp / "X.npy", (int(clips[-1]) * s.segments, *s.features.shape))
              for tmp, s in zip(tmps, specs.values())]
        rows: list[list[dict]] = [[] for _ in specs]
        jobs = [(library.tracks[label], tuple(specs.values()), None if noise_dir is None else str(noise_dir),
                 None if rooms is None else str(rooms)) for label in labels]
        described = f"dataset {spec.policy.name}: {int(clips[-1])} clips ({spec.split})"
        for slot, (label, (patches, track_rows)) in enumerate(zip(labels, parallel_map(_track_rows, jobs, workers,
                                                                                          described))):
            for X, s, front_end_patches in zip(Xs, specs.values(), patches):
                end = int(clips[slot]) * s.segments
                X[end - len(front_end_patches) : end] = front_end_patches
            for spec_rows, spec_track_rows in zip(rows, track_rows):
                spec_rows.extend({**row, "label": label} for row in spec_track_rows)
        seconds = round(time.perf_counter() - started, 3)
        for tmp, X, s, spec_rows in zip(tmps, Xs, specs.values(), rows):
            meta = pd.DataFrame(spec_rows)
            X.flush()
            np.save(tmp / "y.npy", meta["label"].to_numpy(np.int64))
            meta.to_csv(tmp / "meta.csv", index=False)
            Normalizer.fit(X).save(tmp / "normalizer.npz")
            info = {
                "library": library.name,
                "library_fingerprint": library.fingerprint(),
                "noise_dir": None if noise_dir is None else str(noise_dir),
                "spec": json.loads(canonical_json(s)),
                "track_ids": [t.id for t in library],
                "tracks_drawn_from": len(labels),
                "segments_per_query": s.segments,
                "n_rows": len(meta),
                "build_seconds": seconds,
                "built_with_front_ends": len(specs),
            }
            (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
        del X, Xs


def _allocated_rows(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A new float32 ``.npy`` file of ``shape``, memory-mapped once the disk was seen to have
    room for it (:func:`~ppazam_core.store.require_space`), its blocks allocated before any row
    is written (:func:`~ppazam_core.store.allocate`): a full disk is an error, not a SIGBUS.

    Raises:
        StorageError: the disk has no room for it (or another file-system fault).
    """
    require_space(path.parent, math.prod(shape) * np.dtype(np.float32).itemsize)
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    allocate(path)
    return X


def load_dataset(folder: Path) -> Dataset:
    """Open a finished dataset folder (memory-mapped). A :class:`LibraryError` when it is not
    finished, a :class:`~ppazam_core.errors.DamagedArtifactError` when a file cannot be read or
    one holds another number of rows than ``dataset.json`` says."""
    if not is_complete(folder):
        raise LibraryError(f"{folder} is not a finished dataset (no done marker)")
    info = read_json(folder / "dataset.json", "track_ids", "n_rows", "build_seconds")
    with reading(folder / "X.npy") as path:
        X = np.load(path, mmap_mode="r")
    with reading(folder / "y.npy") as path:
        y = np.load(path)
    with reading(folder / "meta.csv") as path:
        meta = pd.read_csv(path, dtype={"track_id": str})
    for name, rows in (("X.npy", len(X)), ("y.npy", len(y)), ("meta.csv", len(meta))):
        if rows != info["n_rows"]:
            raise damaged(folder / name, f"{rows} rows where dataset.json says {info['n_rows']}")
    return Dataset(folder=folder, X=X, y=y, meta=meta, track_ids=tuple(info["track_ids"]),
                   normalizer=Normalizer.load(folder / "normalizer.npz"), info=info)


def clip_offset(track: Track, spec: DatasetSpec, index: int, audio_s: float) -> float:
    """Start (s) of clip ``index`` of ``track``: uniform over the track, named by its seed."""
    rng = np.random.default_rng(derive_seed(spec.seed, spec.split, track.id, index, "offset"))
    return float(rng.uniform(0.0, max(audio_s - spec.clip_s, 0.0)))


def clip_gain(track: Track, spec: DatasetSpec, index: int) -> float:
    """Gain (dB) of clip ``index`` of ``track``: uniform over ``spec.gain_db``, named by its seed."""
    low, high = spec.gain_db
    if low == high:
        return low
    return float(np.random.default_rng(derive_seed(spec.seed, spec.split, track.id, index, "gain")).uniform(low, high))


def rooms_spec(spec: DatasetSpec) -> RoomBankSpec:
    """The room impulse responses a dataset's ``phone-in-room`` clips are played in."""
    return RoomBankSpec(sample_rate=spec.features.sample_rate)


def _track_rows(job: tuple[Track, tuple[DatasetSpec, ...], str | None, str | None]
                ) -> tuple[list[np.ndarray], list[list[dict]]]:
    """Every clip of one track cut into each spec's segments and put through its front-end,
    and each spec's rows (the specs hold the same clips, :func:`same_clips`).
    Runs on one thread in workers and inline alike, since reduction order changes with the
    thread count and rows must not depend on ``workers``."""
    with fixed_threads(1):
        return _track_rows_single_threaded(*job)


def _track_rows_single_threaded(track: Track, specs: tuple[DatasetSpec, ...], noise_dir: str | None,
                                rooms_dir: str | None) -> tuple[list[np.ndarray], list[list[dict]]]:
    spec = specs[0]
    augmenter = _augmenter(spec.policy, spec.features.sample_rate, noise_dir, rooms_dir)
    rate = spec.features.sample_rate
    audio = load_audio(track.source, rate)
    n_samples = int(round(spec.clip_s * rate))
    cuts = {s.segment_s: segment_starts(spec.clip_s, s.segment_s) for s in specs}  # segment length -> starts
    clips: dict[float, list[np.ndarray]] = {length: [] for length in cuts}
    rows: dict[float, list[dict]] = {length: [] for length in cuts}
    for index in range(spec.clips_for(track.duration_s)):
        offset = clip_offset(track, spec, index, audio.shape[0] / rate)
        seed = derive_seed(spec.seed, spec.split, track.id, index, "augment")
        gain = clip_gain(track, spec, index)
        clip = apply_gain(augmenter(crop_or_pad(audio, n_samples, int(round(offset * rate))), seed), gain)
        for length, starts in cuts.items():
            clips[length].extend(query_segments(clip, rate, length))
            rows[length].extend({"track_id": track.id, "augmentation": index, "segment": number,
                                 "offset_s": round(offset + start, 4), "seed": seed, "gain_db": round(gain, 3),
                                 "policy": spec.policy.name, "split": spec.split} for number, start in enumerate(starts))
    batches = {length: np.stack(segments) for length, segments in clips.items()}
    return [_front_end(s.features)(batches[s.segment_s]) for s in specs], [rows[s.segment_s] for s in specs]


@functools.lru_cache(maxsize=4)
def _augmenter(policy: AugmentationPolicy, sample_rate: int, noise_dir: str | None, rooms_dir: str | None) -> Augmenter:
    """Per-process augmenter (a worker builds it once)."""
    return Augmenter(policy, sample_rate, None if noise_dir is None else Path(noise_dir),
                     None if rooms_dir is None else Path(rooms_dir))


@functools.lru_cache(maxsize=8)
def _front_end(config: FrontEndConfig) -> FrontEnd:
    """Per-process front-end (a worker builds it once)."""
    return FrontEnd(config)


def _noise_fingerprint(spec: DatasetSpec, noise_dir: Path | None) -> list | None:
    if noise_dir is None or not spec.policy.needs_noise:
        return None
    return sorted((p.name, p.stat().st_size) for p in Path(noise_dir).rglob("*") if p.is_file())
