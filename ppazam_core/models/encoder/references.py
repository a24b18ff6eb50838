"""Enrolling a library with a client-side embedder: clean segments of every track, embedded.

What replaces per-library training when the embedder is the shipped fingerprint encoder: a
track is described by its segments' embeddings (``embedding-knn``'s references) or by their
normalized mean (the two-stage CNN's clustering).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ppazam_core.audio.decode import crop_or_pad
from ppazam_core.queries.features import FrontEnd, FrontEndConfig
from ppazam_core.audio.library import Library
from ppazam_core.parallel import progress_bar


class PatchEmbedder(Protocol):
    """What enrollment needs of an embedder: its front-end and a map from patches to vectors."""

    features: FrontEndConfig

    def embed_patches(self, patches: np.ndarray) -> np.ndarray: ...


def reference_embeddings(embedder: PatchEmbedder, library: Library, segment_s: float,
                         hop_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings ``(n, d)`` float32 of every track's clean ``segment_s`` segments, one every
    ``hop_s`` seconds (at least one a track, zero-padded when the track is shorter), their
    tracks ``(n,)`` (positions in ``library``) and offsets ``(n,)`` in seconds."""
    front_end = FrontEnd(embedder.features)
    rate = embedder.features.sample_rate
    window, hop = int(round(segment_s * rate)), max(1, int(round(hop_s * rate)))
    vectors, tracks, offsets = [], [], []
    with progress_bar() as progress:
        bar = progress.add_task("embedding reference segments", total=len(library))
        for label, track in enumerate(library):
            audio = library.load(track, rate)
            starts = np.arange(0, max(1, audio.shape[0] - window + 1), hop)
            clips = np.stack([crop_or_pad(audio, window, int(s)) for s in starts])
            vectors.append(embedder.embed_patches(front_end(clips)))
            tracks.append(np.full(starts.size, label))
            offsets.append(starts / rate)
            progress.advance(bar)
    return (np.concatenate(vectors).astype(np.float32), np.concatenate(tracks), np.concatenate(offsets))


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
