"""``two-stage-cnn`` and ``two-stage-cnn-oblivious`` in the registry: one trained model and its
circuits (:mod:`ppazam_core.models.pipeline`, :class:`~ppazam_core.models.identifier.Identifier`), two
designs. The leaky one searches the most likely clusters, which tells the server the song's
cluster; the oblivious one searches every cluster. A suite makes one model per (bit width,
rounding) point; the first and second stages are timed on their own (once: the oblivious design
calls the same circuits)."""

from __future__ import annotations

from pathlib import Path

from ppazam_core.config import ExperimentConfig
from ppazam_core.families.registry import Family, register
from ppazam_core.models.identifier import FAMILY, OBLIVIOUS_FAMILY, Identifier
from ppazam_core.audio.library import Library
from ppazam_core.models.pipeline import circuits_folder, compile_identifier, model_folder, train_identifier
from ppazam_core.store import is_complete


def is_trained(library: Library, config: ExperimentConfig, cache_dir: Path, compiled: bool = False) -> bool:
    """Whether the store holds the trained model (and, when ``compiled``, its circuits)."""
    folder = model_folder(library, config, cache_dir)
    return is_complete(folder) and (not compiled or is_complete(circuits_folder(folder, config)))


def _trainer(oblivious: bool):
    def train(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
              refresh: bool = False, compiled: bool = True) -> Identifier:
        folder = train_identifier(library, config, cache_dir, workers, refresh)
        if not compiled:
            return Identifier(folder, oblivious=oblivious)
        compile_identifier(library, config, cache_dir, workers, refresh)
        return Identifier(folder, circuits_folder(folder, config), oblivious)

    return train


def _bits(config: ExperimentConfig) -> int:
    return config.model.weight_bits


LEAKY = register(Family(FAMILY, _trainer(False), is_trained, bits=_bits, sweeps_rounding=True,
                        stages=("first-stage", "second-stage")))
OBLIVIOUS = register(Family(OBLIVIOUS_FAMILY, _trainer(True), is_trained, bits=_bits, sweeps_rounding=True))
