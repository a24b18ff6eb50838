"""Open-set rejection: does a model's confidence tell library queries from queries of tracks
it never saw (distractors)?

Library queries are the positives. ROC-AUC and PR-AUC (average precision) summarise the
separation. The operating point is the target false-accept rate ``far``: with ``m`` distractor
queries only the rates ``k/m`` are reached by a fixed threshold, so ``top1_at_far`` (library
queries accepted *and* identified correctly) is interpolated linearly between the two fixed
thresholds whose rates bracket ``far`` (the ROC convex combination of Fawcett 2006, section 6:
a threshold randomised between them reaches ``far`` exactly), and ``threshold`` is interpolated
between them the same way. ``false_accepts`` is the rate the strict threshold just below the
target actually achieved on the distractors (e.g. 1/160 = 0.6% for a 1% target), so a label
never claims a rate the data did not reach.

An :class:`OpenSetRule` is that fixed threshold put to work: stored with a model (``ppazam
calibrate``), it makes ``ppazam identify`` answer "no match" for a query whose confidence does
not exceed it, as an identification service answers a song outside its library.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ppazam_core.errors import ArtifactError, ConfigError, DamagedArtifactError, is_integer, is_number
from ppazam_core.store import atomic_write_text

OPEN_SET_FILE = "open-set.json"
DEFAULT_FAR = 0.01  # the false-accept rate the bench reports and `ppazam calibrate` targets by default


@dataclass(frozen=True)
class OpenSetMetrics:
    """Rejection metrics: see the module docstring. Rates are fractions of queries."""

    roc_auc: float
    pr_auc: float
    far: float  # the target false-accept rate
    threshold: float  # confidence threshold at ``far``, interpolated
    top1_at_far: float  # library queries accepted and right at ``far``, interpolated
    false_accepts: float  # distractors accepted by the fixed threshold at or below ``far`` (achieved rate)
    fixed_threshold: float  # that fixed threshold: accept when confidence > it
    top1_at_false_accepts: float  # library queries accepted and right by that fixed threshold
    n_library: int
    n_distractors: int


def check_far(far: float, key: str = "far") -> float:
    """``far`` if it is a false-accept rate (0 <= far < 1), else a :class:`ConfigError` naming ``key``."""
    if not 0.0 <= far < 1.0:
        raise ConfigError.bad_value(key, far, "0 <= far < 1")
    return far


def open_set_metrics(library_confidence: np.ndarray, library_correct: np.ndarray, distractor_confidence: np.ndarray,
                     far: float = 0.01) -> OpenSetMetrics:
    """Rejection metrics of the confidences of library and distractor queries; ``library_correct``
    says which library queries were identified correctly (top-1)."""
    known = np.asarray(library_confidence, dtype=np.float64)
    correct = np.asarray(library_correct, dtype=bool)
    unknown = np.asarray(distractor_confidence, dtype=np.float64)
    if known.size == 0 or unknown.size == 0 or known.shape != correct.shape:
        raise ConfigError("open-set metrics need library and distractor queries, and one correctness per library query")
    check_far(far)
    labels = np.concatenate([np.ones(known.size), np.zeros(unknown.size)])
    scores = np.concatenate([known, unknown])
    # fixed thresholds "accept when confidence > t", from the highest distractor (none accepted) down
    thresholds = np.concatenate([np.unique(unknown)[::-1], [-math.inf]])
    rates = np.array([(unknown > t).mean() for t in thresholds])
    rights = np.array([((known > t) & correct).mean() for t in thresholds])
    below = int(np.searchsorted(rates, far, side="right") - 1)  # the last fixed threshold at or below far
    above = min(below + 1, len(rates) - 1)
    if rates[above] == rates[below]:
        weight = 0.0
    else:
        weight = (far - rates[below]) / (rates[above] - rates[below])
    return OpenSetMetrics(roc_auc=float(roc_auc_score(labels, scores)),
                          pr_auc=float(average_precision_score(labels, scores)), far=far,
                          threshold=float(thresholds[below] + weight * (thresholds[above] - thresholds[below])),
                          top1_at_far=float(rights[below] + weight * (rights[above] - rights[below])),
                          false_accepts=float(rates[below]), fixed_threshold=float(thresholds[below]),
                          top1_at_false_accepts=float(rights[below]),
                          n_library=known.size, n_distractors=unknown.size)


@dataclass(frozen=True)
class OpenSetRule:
    """A family's "no match" rule in one mode: accept a query when its confidence (the mean of
    its segments', as :func:`~ppazam_core.recognition.predict` combines them) exceeds
    ``threshold``, the fixed threshold of :func:`open_set_metrics` at the target ``far``, which
    accepted ``false_accepts`` of the ``n_distractors`` distractor queries and kept
    ``top1_at_false_accepts`` of the ``n_library`` library queries accepted and right, over the
    query conditions ``levels``. ``distractors`` names the distractor tracks (library name and
    content fingerprint)."""

    family: str
    mode: str
    threshold: float
    far: float
    false_accepts: float
    top1_at_false_accepts: float
    roc_auc: float
    n_library: int
    n_distractors: int
    levels: tuple[str, ...]
    distractors: str

    @classmethod
    def of(cls, family: str, mode: str, metrics: OpenSetMetrics, levels: tuple[str, ...],
           distractors: str) -> "OpenSetRule":
        return cls(family, mode, metrics.fixed_threshold, metrics.far, metrics.false_accepts,
                   metrics.top1_at_false_accepts, metrics.roc_auc, metrics.n_library, metrics.n_distractors,
                   tuple(levels), distractors)

    def accepts(self, confidence: float) -> bool:
        return bool(confidence > self.threshold)

    def save(self, folder: Path) -> Path:
        """Store the rule in ``folder/open-set.json`` (one rule per family and mode; a damaged
        file is replaced). Returns the file's path."""
        path = Path(folder) / OPEN_SET_FILE
        try:
            rules = _read_rules(path)
        except ArtifactError:
            rules = {}
        rules[f"{self.family}/{self.mode}"] = asdict(self)
        atomic_write_text(path, json.dumps(rules, indent=1))
        return path

    @classmethod
    def load(cls, folder: Path, family: str, mode: str) -> "OpenSetRule | None":
        """The rule of ``family`` in ``mode`` stored in ``folder`` (``None`` when there is none);
        a :class:`~ppazam_core.errors.DamagedArtifactError` naming the file when it cannot be read."""
        path = Path(folder) / OPEN_SET_FILE
        entry = _read_rules(path).get(f"{family}/{mode}")
        if entry is None:
            return None
        try:
            rule = cls(**{**entry, "levels": tuple(entry["levels"])})
        except (TypeError, KeyError) as e:
            raise _damaged(path, f"rule {family}/{mode}: {e}") from e
        numbers = (rule.threshold, rule.far, rule.false_accepts, rule.top1_at_false_accepts, rule.roc_auc)
        if not all(is_number(v) for v in numbers) or not all(is_integer(n) for n in (rule.n_library, rule.n_distractors)):
            raise _damaged(path, f"rule {family}/{mode}: a field that should be a number is not")
        return rule


def _read_rules(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        rules = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, f"{type(e).__name__}: {e}") from e
    if not isinstance(rules, dict):
        raise _damaged(path, "not a JSON object")
    return rules


def _damaged(path: Path, reason: str) -> DamagedArtifactError:
    """The error for a damaged rules file: ``ppazam calibrate`` stores the rules again."""
    return DamagedArtifactError(path, reason, path, "run ppazam calibrate again to store the rule")
