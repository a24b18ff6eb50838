"""Model families: each trains into its own artifact folder and loads as a
:class:`~ppazam_core.recognition.Recognizer`, so the same suites, modes and reports cover all.
Each registers itself in :mod:`ppazam_core.families.registry` (importing this package
registers the built-in ones, the two-stage CNN first: the default); families of other packages
register through the ``ppazam.families`` entry points.

* ``two-stage-cnn``: cluster classifier + intra-cluster classifiers, whole CNNs under FHE
  (:mod:`ppazam_core.models.identifier`); ``two-stage-cnn-oblivious``: the same model searching every
  cluster, so that the server cannot tell the song's cluster;
* ``embedding-head``: clear-text embedding on the client, encrypted linear head on the server;
  ``embedding-head-top1``: the same, the server also computing the encrypted argmax, so that
  the client receives one track instead of every track's score; ``embedding-head-packed``: the
  same head scored under CKKS, thousands of tracks per ciphertext (:mod:`ppazam_core.fhe.packed`);
* ``embedding-knn-packed``: private nearest-neighbour search on that backend: the encrypted
  embedding scored against every track's reference segments, the client taking each track's best;
* ``mfcc-logreg``: the Concrete ML recipe (MFCC windows, encrypted logistic regression, votes);
* ``landmark-fp`` and ``embedding-knn``: clear-text references (``fp32`` mode only).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.dataset import DatasetSpec
from ppazam_core.families import two_stage  # isort: skip (registered first: the default family)
from ppazam_core.families import embedding_head, embedding_head_top1, mfcc_logreg, landmark, embedding_knn  # isort: skip
from ppazam_core.families import embedding_prototypes  # isort: skip
from ppazam_core.families import embedding_head_packed, embedding_knn_packed  # isort: skip
from ppazam_core.families.registry import Family, family_names, get_family, register
from ppazam_core.queries.features import FrontEndConfig
from ppazam_core.audio.library import Library
from ppazam_core.recognition import Mode, Recognizer
from ppazam_core.threads import fixed_threads

__all__ = ["Family", "family_names", "get_family", "register", "two_stage", "embedding_head", "embedding_head_top1",
           "mfcc_logreg", "landmark", "embedding_knn", "embedding_prototypes", "embedding_head_packed",
           "embedding_knn_packed"]


def family_modes(family: str) -> tuple[Mode, ...]:
    """The modes a family runs in; a :class:`~ppazam_core.errors.ConfigError` for an unknown family."""
    return get_family(family).modes


def family_features(family: str, config: ExperimentConfig) -> FrontEndConfig:
    """The front-end of the patches the family reads (its evaluation datasets are built with it)."""
    return get_family(family).features(config)


def family_segment_s(family: str, config: ExperimentConfig) -> float:
    """The seconds of the segments the family cuts a query into (its patches' audio)."""
    return get_family(family).segment_s(config)


def family_eval_spec(family: str, config: ExperimentConfig, level: str) -> DatasetSpec:
    """The evaluation queries of ``level`` through the family's front-end, cut into its
    segments: the same clips (same length, offsets and augmentation seeds) for every family."""
    spec = config.data.eval_spec(level)
    segment_s = family_segment_s(family, config)
    if segment_s != spec.segment_s:
        spec = replace(spec, segment_s=segment_s, query_s=spec.clip_s)
    return replace(spec, features=family_features(family, config))


def family_bits(family: str, config: ExperimentConfig) -> int:
    """The bit width a family's model is quantized to (32 for the clear-text families)."""
    return get_family(family).bit_width(config)


def is_trained(family: str, library: Library, config: ExperimentConfig, cache_dir: Path,
               compiled: bool = False) -> bool:
    """Whether the store holds the trained model of ``family`` (when ``compiled``, also the
    circuits of a family that compiles apart from training)."""
    return get_family(family).is_trained(library, config, cache_dir, compiled)


@fixed_threads()
def train_family(family: str, library: Library, config: ExperimentConfig, cache_dir: Path,
                 workers: int | None = None, refresh: bool = False, compiled: bool = True) -> Recognizer:
    """Train (or load from the store) the model of ``family``, with its circuits when
    ``compiled`` (families that compile as part of training always have them)."""
    return get_family(family).train(library, config, cache_dir, workers, refresh, compiled)
