"""Enrolling a library with a client-side embedder: clean segments of every track, embedded.

What replaces per-library training when the embedder is the shipped fingerprint encoder: a
track is described by its segments' embeddings (``embedding-knn``'s references) or by their
normalized mean (the two-stage CNN's clustering).
"""

from __future__ import annotations

import functools
import time
from typing import Protocol

import numpy as np

from ppazam_core.audio.decode import crop_or_pad, load_audio, require_audible
from ppazam_core.queries.features import FrontEnd, FrontEndConfig
from ppazam_core.audio.library import Library, Track
from ppazam_core.parallel import parallel_map
from ppazam_core.threads import fixed_threads


MIN_HOP_S = 0.005
"""The shortest hop between reference windows: 200 a second (a 1-h song: 720,000 windows)."""
EMBED_WINDOWS = 512
"""Windows of one track cut, featurized and embedded at a time (a 1-h song at 0.25 s holds
14,400 1-s windows: 460 MB of float32 audio at once)."""


class PatchEmbedder(Protocol):
    """What enrollment needs of an embedder: its front-end and a map from patches to vectors."""

    features: FrontEndConfig

    def embed_patches(self, patches: np.ndarray) -> np.ndarray: ...


def reference_embeddings(embedder: PatchEmbedder, library: Library, segment_s: float, hop_s: float,
                         min_audible_s: float | None = None,
                         workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings ``(n, d)`` float32 of every track's clean ``segment_s`` segments, one every
    ``hop_s`` seconds (at least one a track, zero-padded when the track is shorter), their
    tracks ``(n,)`` (positions in ``library``), offsets ``(n,)`` in seconds, and the seconds
    each track took ``(T,)`` (decoding, front-end, embedding). Tracks are embedded one a task
    on ``workers`` processes (or Ray's, see :mod:`ppazam_core.parallel`), each on
    :data:`~ppazam_core.threads.ARTIFACT_THREADS` threads, so the vectors do not depend on
    where they were computed.

    Raises:
        AudioError: a track cannot be decoded or, with ``min_audible_s`` (a song to enroll),
            holds less audio above the silence level.
    """
    embed = functools.partial(_track_references, embedder, segment_s, hop_s, min_audible_s)
    vectors, tracks, offsets, seconds = [], [], [], []
    for label, (embedded, starts_s, took_s) in enumerate(parallel_map(embed, library.tracks, workers,
                                                                      "embedding reference segments")):
        vectors.append(embedded)
        tracks.append(np.full(starts_s.size, label))
        offsets.append(starts_s)
        seconds.append(took_s)
    return (np.concatenate(vectors).astype(np.float32), np.concatenate(tracks), np.concatenate(offsets),
            np.asarray(seconds))


@fixed_threads()
def _track_references(embedder: PatchEmbedder, segment_s: float, hop_s: float, min_audible_s: float | None,
                      track: Track) -> tuple[np.ndarray, np.ndarray, float]:
    """One track's reference embeddings, their offsets (s) and the seconds they took."""
    started = time.perf_counter()
    rate = embedder.features.sample_rate
    window, hop = int(round(segment_s * rate)), max(1, int(round(hop_s * rate)))
    audio = load_audio(track.source, rate)
    if min_audible_s is not None:
        require_audible(audio, rate, min_audible_s, track.source)
    starts = np.arange(0, max(1, audio.shape[0] - window + 1), hop)
    front_end = FrontEnd(embedder.features)
    embedded = np.concatenate([
        embedder.embed_patches(front_end(np.stack([crop_or_pad(audio, window, int(s)) for s in chunk])))
        for chunk in np.array_split(starts, max(1, -(-starts.size // EMBED_WINDOWS)))]).astype(np.float32)
    return embedded, starts / rate, time.perf_counter() - started


def merged_references(vectors: np.ndarray, tracks: np.ndarray, offsets: np.ndarray, keep: np.ndarray,
                      added: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """References of a model's kept tracks (``keep`` ``(T,)`` bool over its tracks), renumbered
    in order, followed by ``added`` (vectors, tracks, offsets of new tracks numbered from 0, as
    :func:`reference_embeddings` gives them): ``(vectors, tracks, offsets)`` of the new model."""
    rows = keep[tracks]
    renumbered = (np.cumsum(keep) - 1)[tracks[rows]]
    new_vectors, new_tracks, new_offsets = added
    return (np.concatenate([vectors[rows], new_vectors]).astype(np.float32),
            np.concatenate([renumbered, new_tracks + int(keep.sum())]),
            np.concatenate([offsets[rows], new_offsets]))


def track_means(vectors: np.ndarray, tracks: np.ndarray, n_tracks: int) -> np.ndarray:
    """``(n_tracks, d)`` float32: the normalized mean of each track's vectors.

    Raises:
        ValueError: a track has no vector.
    """
    sums = np.zeros((n_tracks, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, tracks, vectors)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("every track needs at least one segment to be embedded")
    return (sums / norms).astype(np.float32)
