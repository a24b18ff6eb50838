"""Model families: each trains into its own artifact folder and loads as a
:class:`~ppazam_core.recognition.Recognizer`, so the same suites, modes and reports cover all.

* ``two-stage-cnn``: cluster classifier + intra-cluster classifiers, whole CNNs under FHE
  (:mod:`ppazam_core.identifier`); ``two-stage-cnn-oblivious``: the same model searching every
  cluster, so that the server cannot tell the song's cluster;
* ``embedding-head``: clear-text embedding on the client, encrypted linear head on the server;
  ``embedding-head-top1``: the same, the server also computing the encrypted argmax, so that
  the client receives one track instead of every track's score;
* ``mfcc-logreg``: the Concrete ML recipe (MFCC windows, encrypted logistic regression, votes);
* ``landmark-fp`` and ``embedding-knn``: clear-text references (``fp32`` mode only).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from ppazam_core.config import ExperimentConfig
from ppazam_core.dataset import DatasetSpec
from ppazam_core.errors import ConfigError
from ppazam_core.families import embedding_head, embedding_head_top1, embedding_knn, landmark, mfcc_logreg
from ppazam_core.features import FrontEndConfig
from ppazam_core.identifier import FAMILY as TWO_STAGE
from ppazam_core.identifier import OBLIVIOUS_FAMILY as TWO_STAGE_OBLIVIOUS
from ppazam_core.identifier import Identifier
from ppazam_core.library import Library
from ppazam_core.families.store import FamilyModel, family_folder
from ppazam_core.pipeline import circuits_folder, compile_identifier, model_folder, train_identifier
from ppazam_core.store import is_complete
from ppazam_core.threads import fixed_threads
from ppazam_core.recognition import Mode, Recognizer

TWO_STAGE_FAMILIES = (TWO_STAGE, TWO_STAGE_OBLIVIOUS)  # one trained model and its circuits, two designs
FAMILIES = (TWO_STAGE, TWO_STAGE_OBLIVIOUS, embedding_head.FAMILY, embedding_head_top1.FAMILY, mfcc_logreg.FAMILY,
            landmark.FAMILY, embedding_knn.FAMILY)
CLEAR_ONLY = (landmark.FAMILY, embedding_knn.FAMILY)

_MODULES = {module.FAMILY: module for module in (embedding_head, embedding_head_top1, mfcc_logreg, landmark, embedding_knn)}
_LOAD: dict[str, Callable[[Path], Recognizer]] = {embedding_head.FAMILY: embedding_head.EmbeddingHead,
                                                   embedding_head_top1.FAMILY: embedding_head_top1.EmbeddingHeadTop1,
                                                   mfcc_logreg.FAMILY: mfcc_logreg.MfccLogReg,
                                                   landmark.FAMILY: landmark.LandmarkIndex,
                                                   embedding_knn.FAMILY: embedding_knn.EmbeddingKnn}


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ConfigError.bad_value("family", family, FAMILIES)
    return family


def family_modes(family: str) -> tuple[Mode, ...]:
    """The modes a family runs in."""
    return (Mode.FP32,) if check_family(family) in CLEAR_ONLY else tuple(Mode)


def family_features(family: str, config: ExperimentConfig) -> FrontEndConfig:
    """The front-end of the patches the family reads (its evaluation datasets are built with it)."""
    rate, segment_s = config.data.features.sample_rate, config.data.segment_s
    if check_family(family) == mfcc_logreg.FAMILY:
        return config.mfcc.front_end(rate, segment_s)
    if family == landmark.FAMILY:
        return config.landmark.front_end(rate, segment_s)
    return config.data.features


def family_eval_spec(family: str, config: ExperimentConfig, level: str) -> DatasetSpec:
    """The evaluation queries of ``level`` through the family's front-end: the same clips (same
    offsets and augmentation seeds) for every family."""
    return replace(config.data.eval_spec(level), features=family_features(family, config))


def is_trained(family: str, library: Library, config: ExperimentConfig, cache_dir: Path,
               compiled: bool = False) -> bool:
    """Whether the store holds the trained model of ``family`` (the two-stage CNN: also its
    compiled circuits when ``compiled``; the other families compile as part of training)."""
    if check_family(family) in TWO_STAGE_FAMILIES:
        folder = model_folder(library, config, cache_dir)
        return is_complete(folder) and (not compiled or is_complete(circuits_folder(folder, config)))
    return FamilyModel.is_trained(_folder(family, library, config, cache_dir))


def _folder(family: str, library: Library, config: ExperimentConfig, cache_dir: Path) -> Path:
    if check_family(family) in TWO_STAGE_FAMILIES:
        raise ConfigError.bad_value("family", family, [f for f in FAMILIES if f not in TWO_STAGE_FAMILIES])
    return family_folder(family, library, _MODULES[family].settings(config), cache_dir)


@fixed_threads()
def train_family(family: str, library: Library, config: ExperimentConfig, cache_dir: Path,
                 workers: int | None = None, refresh: bool = False, compiled: bool = True) -> Recognizer:
    """Train (or load from the store) the model of ``family``; the two-stage CNN is also
    compiled when ``compiled`` (the other families compile as part of training)."""
    if check_family(family) not in TWO_STAGE_FAMILIES:
        folder = _folder(family, library, config, cache_dir)
        if refresh or not FamilyModel.is_trained(folder):
            _MODULES[family].train(library, config, folder, cache_dir, workers, refresh)
        return _LOAD[family](folder)
    folder = train_identifier(library, config, cache_dir, workers, refresh)
    oblivious = family == TWO_STAGE_OBLIVIOUS
    if not compiled:
        return Identifier(folder, oblivious=oblivious)
    compile_identifier(library, config, cache_dir, workers, refresh)
    return Identifier(folder, circuits_folder(folder, config), oblivious)


def family_bits(family: str, config: ExperimentConfig) -> int:
    """The bit width a family's model is quantized to (32 for the clear-text families)."""
    if check_family(family) in TWO_STAGE_FAMILIES:
        return config.model.weight_bits
    if family == embedding_head.FAMILY:
        return config.head.n_bits
    if family == embedding_head_top1.FAMILY:
        return embedding_head_top1.WEIGHT_BITS
    if family == mfcc_logreg.FAMILY:
        return config.mfcc.n_bits
    return 32
