"""Choose a family's "no match" rule (:class:`~ppazam_core.results.open_set.OpenSetRule`) on distractor
queries and store it with the model, for ``ppazam identify``.

The library's queries and the distractors' are the evaluation queries of every level of the
config (:meth:`~ppazam_core.config.DataConfig.eval_spec`: the same clips, gains and seeds as
the bench), through the family's front-end; the threshold is the fixed one of
:func:`~ppazam_core.results.open_set.open_set_metrics` at the target false-accept rate. ``fhe`` mode
uses the ``fhe-sim`` rule: the simulation computes the encrypted circuit's integers, and true
FHE is too slow to run hundreds of distractor queries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.errors import ConfigError
from ppazam_core.families import family_eval_spec
from ppazam_core.audio.library import Library
from ppazam_core.results.open_set import OpenSetRule, check_far, open_set_metrics
from ppazam_core.models.pipeline import noise_folder
from ppazam_core.recognition import Mode, Recognizer, predict


def rule_mode(mode: Mode | str) -> Mode:
    """The mode whose rule applies in ``mode`` (``fhe`` answers by the ``fhe-sim`` rule)."""
    mode = Mode(mode)
    return Mode.FHE_SIM if mode is Mode.FHE else mode


def rule_folder(model: Recognizer, mode: Mode | str) -> Path:
    """Where the rule of ``model`` in ``mode`` is stored: with the compiled circuits for the
    modes that run them (their confidences depend on the compilation), else with the model."""
    if rule_mode(mode).needs_circuits and model.channel is not None:
        return Path(model.channel.circuits)
    return Path(model.folder)


def calibrate_open_set(model: Recognizer, library: Library, distractors: Library, config: ExperimentConfig,
                       cache_dir: Path, mode: Mode | str, far: float, workers: int | None = None) -> OpenSetRule:
    """Predict the library's and the distractors' queries of every level of ``config`` in
    ``mode`` and return the rule at false-accept rate ``far`` (not stored: see
    :meth:`~ppazam_core.results.open_set.OpenSetRule.save` and :func:`rule_folder`).

    Raises:
        ConfigError: ``mode`` is ``fhe`` or a mode the family lacks, or ``far`` is outside [0, 1).
        ArtifactError: ``library`` is not the model's.
    """
    mode = Mode(mode)
    if mode is Mode.FHE:
        raise ConfigError.bad_value("mode", mode.value, "fp32, quant or fhe-sim (fhe answers by the fhe-sim rule)")
    check_far(far)
    noise = noise_folder(library, config.data, cache_dir)
    known, correct, unknown = [], [], []
    for level in config.data.eval_levels:
        spec = family_eval_spec(model.family, config, level)
        library_result = predict(model, build_dataset(library, spec, cache_dir, noise, workers), mode)
        distractor_result = predict(model, build_dataset(distractors, spec, cache_dir, noise, workers), mode,
                                    in_library=False)
        known.append(library_result.confidence)
        correct.append(library_result.hits(1))
        unknown.append(distractor_result.confidence)
    metrics = open_set_metrics(np.concatenate(known), np.concatenate(correct), np.concatenate(unknown), far)
    return OpenSetRule.of(model.family, mode.value, metrics, config.data.eval_levels,
                          f"{distractors.name} {distractors.fingerprint()}")
