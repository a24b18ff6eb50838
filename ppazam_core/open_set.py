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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ppazam_core.errors import ConfigError


@dataclass(frozen=True)
class OpenSetMetrics:
    """Rejection metrics: see the module docstring. Rates are fractions of queries."""

    roc_auc: float
    pr_auc: float
    far: float  # the target false-accept rate
    threshold: float  # confidence threshold at ``far``, interpolated
    top1_at_far: float  # library queries accepted and right at ``far``, interpolated
    false_accepts: float  # distractors accepted by the fixed threshold at or below ``far`` (achieved rate)
    top1_at_false_accepts: float  # library queries accepted and right by that fixed threshold
    n_library: int
    n_distractors: int


def open_set_metrics(library_confidence: np.ndarray, library_correct: np.ndarray, distractor_confidence: np.ndarray,
                     far: float = 0.01) -> OpenSetMetrics:
    """Rejection metrics of the confidences of library and distractor queries; ``library_correct``
    says which library queries were identified correctly (top-1)."""
    known = np.asarray(library_confidence, dtype=np.float64)
    correct = np.asarray(library_correct, dtype=bool)
    unknown = np.asarray(distractor_confidence, dtype=np.float64)
    if known.size == 0 or unknown.size == 0 or known.shape != correct.shape:
        raise ConfigError("open-set metrics need library and distractor queries, and one correctness per library query")
    if not 0.0 <= far < 1.0:
        raise ConfigError.bad_value("far", far, "0 <= far < 1")
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
                          false_accepts=float(rates[below]), top1_at_false_accepts=float(rights[below]),
                          n_library=known.size, n_distractors=unknown.size)
