"""Open-set rejection: does a model's confidence tell library queries from queries of tracks
it never saw (distractors)?

Library queries are the positives. ROC-AUC and PR-AUC (average precision) summarise the
separation; the operating point accepts a query when its confidence is above the threshold that
lets at most ``far`` of the distractor queries through, and ``top1_at_far`` counts the library
queries that are both accepted and identified correctly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from ppazam_core.errors import ConfigError


@dataclass(frozen=True)
class OpenSetMetrics:
    roc_auc: float
    pr_auc: float
    threshold: float
    top1_at_far: float
    false_accepts: float  # the fraction of distractors accepted at ``threshold`` (<= far)
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
    allowed = int(math.floor(far * unknown.size))  # distractors that may pass
    threshold = float(np.sort(unknown)[::-1][allowed]) if allowed < unknown.size else -math.inf
    accepted = known > threshold
    return OpenSetMetrics(roc_auc=float(roc_auc_score(labels, scores)),
                          pr_auc=float(average_precision_score(labels, scores)),
                          threshold=threshold, top1_at_far=float((accepted & correct).mean()),
                          false_accepts=float((unknown > threshold).mean()), n_library=known.size,
                          n_distractors=unknown.size)
