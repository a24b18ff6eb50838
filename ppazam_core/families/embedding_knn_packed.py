"""``embedding-knn-packed``: private nearest-neighbour search over reference segments (the design
of Apple's PNNS) on the packed CKKS backend (:mod:`ppazam_core.fhe.packed`).

The server holds, in the clear, the embeddings of every track's clean reference segments, one
every ``[knnpacked] hop_s`` (``embedding-knn``'s references:
:func:`~ppazam_core.models.encoder.references.reference_embeddings`), as the rows of ``W``, with
``b = 0``. The client embeds its query segment in the clear (unit vectors, as the references),
encrypts it, and the server computes every reference's inner product -- its cosine similarity
-- under CKKS, ``n`` rows a ciphertext (4,096 by default): ``tracks x segments per track`` rows
make ``ceil(rows / n)`` ciphertexts in the answer. The client decrypts every row's score and
takes each track's best (max over its rows): the track scores of ``embedding-knn`` over every
reference rather than the ``neighbours`` nearest. The confidence is the best track's score plus
its margin over the second best (:func:`margin_confidence`).

With the fingerprint encoder a segment is one 1-s window
(:func:`~ppazam_core.models.hear.window_segment_s`): a 3-s query is five calls (windows every 0.5 s)
whose track scores are averaged, as ``embedding-knn`` does in the clear.

The server learns nothing from the call (one call a segment, the same for every song); the
client learns every reference's similarity (``rows`` scores a segment). A shorter hop describes
more moments of each song (a query falls nearer a reference: better accuracy, above all for
short or noisy queries) at the cost of more rows: a larger answer and more server work, one
ciphertext and one shard's products per 4,096 rows. The default, 0.5 s, gives a 30-s track 59
rows of 1-s windows (69 tracks a ciphertext); ``embedding-knn`` uses 0.25 s.

Artifacts: ``embedding/``, ``references.npz`` (the ``tracks`` and ``offsets_s`` of ``W``'s
rows), ``head.npz`` (``W``, ``b``), ``circuits/fhe/packed/`` and ``model.json``; the packed head,
its modes and its call plan are those of :mod:`ppazam_core.families.packed_head`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ppazam_core.artifacts import damaged, read_arrays
from ppazam_core.config import MAX_SEGMENT_S, MIN_SEGMENT_S, ExperimentConfig, require
from ppazam_core.models.encoder.references import MIN_HOP_S, reference_embeddings
from ppazam_core.families.packed_head import TABLE as PACKED_TABLE
from ppazam_core.families.packed_head import PackedFamilyModel, packed_family, write_packed_head
from ppazam_core.families.enrollment import enroll_references, enrolled_folder, enrolled_manifest
from ppazam_core.families.registry import FamilyTable
from ppazam_core.families.store import write_family
from ppazam_core.fhe.packed import best_per_group, check_groups
from ppazam_core.models.hear import at_segment, embedding_settings, trained_embedder, window_segment_s
from ppazam_core.audio.library import Library
from ppazam_core.manifest import write_manifest
from ppazam_core.models.embedding_memo import embed
from ppazam_core.recognition import Mode, Scores

FAMILY = "embedding-knn-packed"
REFERENCES_FILE = "references.npz"


@dataclass(frozen=True)
class KnnPackedConfig:
    """``embedding-knn-packed``: the server's rows are clean reference segments of every track
    of ``segment_s`` seconds (unset: :func:`~ppazam_core.models.hear.window_segment_s`), one every
    ``hop_s`` seconds (fewer rows than ``embedding-knn``'s 0.25 s: a smaller answer, less server
    work, references further apart). CKKS parameters: ``[packed]``."""

    hop_s: float = 0.5
    segment_s: float | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.hop_s, (int, float)) and MIN_HOP_S <= self.hop_s <= 60, "knnpacked.hop_s", self.hop_s,
                f"seconds from {MIN_HOP_S:g} to 60")
        require(self.segment_s is None or (isinstance(self.segment_s, (int, float))
                                           and MIN_SEGMENT_S <= self.segment_s <= MAX_SEGMENT_S),
                "knnpacked.segment_s", self.segment_s,
                f"seconds from {MIN_SEGMENT_S:g} to {MAX_SEGMENT_S:g} (or unset: the embedder's own)")


TABLE = FamilyTable("knnpacked", KnnPackedConfig)


def segment_s(config: ExperimentConfig) -> float:
    """The seconds of a query segment (one encrypted call each) and of a reference row."""
    return window_segment_s(config, config.table(TABLE.name).segment_s)


def settings(config: ExperimentConfig) -> dict:
    """The parts of ``config`` the references and their packed circuit depend on."""
    return {"data": config.data.train_spec(), **embedding_settings(config), "knnpacked": config.table(TABLE.name),
            "packed": config.table(PACKED_TABLE.name), "seed": config.fhe.seed}


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Embed every track's reference segments into ``folder`` and build their packed circuit
    (calibrated on reference segments encrypted under a throwaway key: the CKKS error, sizes,
    and the chance the error changes the best track)."""
    started = time.perf_counter()
    seconds = segment_s(config)
    embedding, embedder = trained_embedder(library, at_segment(config, seconds), cache_dir, workers, refresh)
    timings = {"embedding_s": time.perf_counter() - started}
    with write_family(folder, FAMILY, library, config, timings, embedding=embedding) as tmp:
        started = time.perf_counter()
        vectors, tracks, offsets, _ = reference_embeddings(embedder, library, seconds, config.table(TABLE.name).hop_s,
                                                            workers=workers or 1)
        np.savez(tmp / REFERENCES_FILE, tracks=tracks, offsets_s=offsets)
        timings["references_s"] = time.perf_counter() - started
        started = time.perf_counter()
        write_packed_head(tmp, vectors, np.zeros(len(vectors)), config, vectors, groups=tracks)
        timings["packed_s"] = time.perf_counter() - started


def margin_confidence(track_scores: np.ndarray) -> np.ndarray:
    """``(n, T)`` track scores to ``(n,)`` confidences: the best track's score plus its margin over
    the second best (the best alone for one track). A song outside the library resembles several
    tracks about equally (a small margin); a song of the library resembles its own far more than
    any other. On the default suite's library and distractors (64 and 16 tracks, phone-in-room
    3-s queries), top-1 at 1 % false accepts was 0.40 with the best score alone, 0.53 with the
    margin alone and 0.58 with both (clean queries: 0.92, 0.87, 0.96)."""
    if track_scores.shape[1] < 2:
        return track_scores.max(axis=1)
    second, best = np.partition(track_scores, -2, axis=1)[:, -2:].T
    return 2 * best - second


def enroll(model: "EmbeddingKnnPacked", tracks: Library, dest: Path, remove: Sequence[str] = (),
           shots: int | None = None) -> "EmbeddingKnnPacked":
    """Write into ``dest`` (a new folder, or an enrolled model's to replace, atomically) the model
    of ``model`` with every song of ``tracks`` added as a library's tracks are built (every
    ``hop_s``, the whole song: ``shots`` does not apply) and the track ids ``remove`` dropped;
    the packed circuit is built again over the new rows (its CKKS error measured anew). Returns
    the new model. Raises as :func:`~ppazam_core.families.enrollment.enroll_references`."""
    knn = model.config.table(TABLE.name)
    enrolled = enroll_references(model, tracks, remove, model.head.W.astype(np.float32), model.reference_tracks,
                                 model.offsets, segment_s(model.config), knn.hop_s)
    with enrolled_folder(model, dest) as tmp:
        np.savez(tmp / REFERENCES_FILE, tracks=enrolled.tracks, offsets_s=enrolled.offsets)
        started = time.perf_counter()
        write_packed_head(tmp, enrolled.vectors, np.zeros(len(enrolled.vectors)), model.config, enrolled.vectors,
                          groups=enrolled.tracks)
        compile_s = time.perf_counter() - started
        write_manifest(tmp, enrolled_manifest(model, tracks, remove, enrolled.enroll_s, {"hop_s": knn.hop_s},
                                              {"last_enroll_s": round(enrolled.embed_s, 3),
                                               "last_compile_s": round(compile_s, 3)}))
    return EmbeddingKnnPacked(Path(dest))


ROW_SCORES_PER_CHUNK = 1 << 24
"""Reference similarities held at once while scoring (128 MB of float64): a 10-s query against
10,000 tracks of 59 references each would otherwise take 90 MB a query."""


class EmbeddingKnnPacked(PackedFamilyModel):
    """A built ``embedding-knn-packed`` model: a track scores its best reference's cosine
    similarity."""

    family = FAMILY

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        path = self.folder / REFERENCES_FILE
        if not path.is_file():
            raise damaged(path, "it is missing")
        self.reference_tracks, self.offsets = read_arrays(path, "tracks", "offsets_s")
        reason = check_groups(self.reference_tracks, self.head.rows, len(self.track_ids))
        if reason is not None:
            raise damaged(path, f"its reference tracks do not fit the packed head's {self.head.rows} rows "
                                f"of {len(self.track_ids)} tracks: {reason}")

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        """Track scores of ``patches``, a chunk of them at a time: each chunk's similarities to
        every reference (``chunk x rows`` float64) stay under :data:`ROW_SCORES_PER_CHUNK`."""
        embedded = embed(self.embedder, patches)
        step = max(1, ROW_SCORES_PER_CHUNK // self.head.rows)
        track_scores = np.concatenate(
            [best_per_group(self.head.logits(embedded[start : start + step], mode), self.reference_tracks)
             for start in range(0, len(embedded), step)] or [np.zeros((0, len(self.track_ids)))])
        return Scores(track_scores, margin_confidence(track_scores))


SPEC = packed_family(FAMILY, settings, train, EmbeddingKnnPacked, TABLE, segment=segment_s, enroll=enroll,
                     enroll_shots=False)
