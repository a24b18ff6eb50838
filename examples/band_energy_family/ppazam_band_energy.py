"""``band-energy``: a small private identifier written outside ppazam, to show what a family is.

The client cuts its clip into the harness's log-mel patches (``(1, H, W)`` float32, dB) and
sends, encrypted, one vector per patch: each mel band's mean level over time, less the patch's
overall mean (a gain on the phone moves every band alike and cancels), and each band's standard
deviation. The server evaluates an encrypted Concrete ML ``LogisticRegression`` over it (one
call per segment, every track's score back to the client), so the family runs in every mode:
``fp32`` (scikit-learn), ``quant``, ``fhe-disable``, ``fhe-sim`` and ``fhe``.

What makes it a ppazam family is the last line: a :class:`~ppazam_core.families.registry.Family`
record with its name, its config table ``[band_energy]``, its bit width, how it trains into the
artifact store and how it loads. Installed with its entry point (``pyproject.toml`` beside this
file), it runs in every suite, report and ``compare`` with no edit to ppazam.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppazam_core.artifacts import read_arrays
from ppazam_core.config import ExperimentConfig, require
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.families.linear_head import LinearHeadModel, fit_linear_head
from ppazam_core.families.registry import FamilyTable
from ppazam_core.families.store import single_model_family, write_family
from ppazam_core.audio.library import Library
from ppazam_core.models.pipeline import noise_folder
from ppazam_core.recognition import Mode, Scores, log_softmax

FAMILY = "band-energy"
SCALER_FILE = "scaler.npz"


@dataclass(frozen=True)
class BandEnergyConfig:
    """The ``[band_energy]`` table of an experiment config: the head's bit width and its
    inverse regularisation strength, and how many training rows calibrate its circuit."""

    n_bits: int = 6
    C: float = 1.0
    calibration_rows: int = 512

    def __post_init__(self) -> None:
        require(isinstance(self.n_bits, int) and 2 <= self.n_bits <= 16, "band_energy.n_bits", self.n_bits, "2 to 16")
        require(self.C > 0, "band_energy.C", self.C, "a number > 0")
        require(isinstance(self.calibration_rows, int) and self.calibration_rows >= 1,
                "band_energy.calibration_rows", self.calibration_rows, "an integer >= 1")


TABLE = FamilyTable("band_energy", BandEnergyConfig)


def band_statistics(patches: np.ndarray) -> np.ndarray:
    """``(n, 1, H, W)`` log-mel patches (dB) to ``(n, 2 H)`` float64 rows: each band's mean over
    time less the patch's mean, then each band's standard deviation over time."""
    bands = np.asarray(patches, dtype=np.float64)[:, 0]
    means = bands.mean(axis=2)
    return np.concatenate([means - means.mean(axis=1, keepdims=True), bands.std(axis=2)], axis=1)


def settings(config: ExperimentConfig) -> dict:
    """What the trained model depends on: it names the model's folder in the store."""
    return {"data": config.data.train_spec(), "band_energy": config.table(TABLE.name),
            "p_error": config.fhe.p_error, "seed": config.fhe.seed}


def train(library: Library, config: ExperimentConfig, folder: Path, cache_dir: Path, workers: int | None = None,
          refresh: bool = False) -> None:
    """Fit and compile the head on the harness's training patches into ``folder``."""
    started = time.perf_counter()
    dataset = build_dataset(library, config.data.train_spec(), cache_dir, noise_folder(library, config.data, cache_dir),
                            workers)
    rows = band_statistics(dataset.X)
    mean, std = rows.mean(axis=0), np.maximum(rows.std(axis=0), 1e-6)
    timings = {"dataset_s": time.perf_counter() - started}
    table = config.table(TABLE.name)
    with write_family(folder, FAMILY, library, config, timings) as tmp:
        started = time.perf_counter()
        np.savez(tmp / SCALER_FILE, mean=mean, std=std)
        fit_linear_head(((rows - mean) / std).astype(np.float32), dataset.y, len(library), table.n_bits, table.C,
                        500, table.calibration_rows, config.fhe, tmp)
        timings["head_s"] = time.perf_counter() - started


class BandEnergy(LinearHeadModel):
    """A trained ``band-energy`` model: log-probabilities of every track per patch."""

    family = FAMILY

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.features = self.config.data.features
        self.mean, self.std = read_arrays(self.folder / SCALER_FILE, "mean", "std")

    def scores(self, patches: np.ndarray, mode: Mode | str = Mode.FP32) -> Scores:
        rows = ((band_statistics(patches) - self.mean) / self.std).astype(np.float32)
        log_probs = log_softmax(self.head.logits(rows, mode))
        return Scores(log_probs, np.exp(log_probs.max(axis=1)))


SPEC = single_model_family(FAMILY, settings, train, BandEnergy, table=TABLE,
                           bits=lambda config: config.table(TABLE.name).n_bits)
