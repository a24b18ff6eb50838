"""Open-set rejection per family, mode and level: library queries against queries of distractor
tracks held out of training (the suite's ``distractor_tracks``). True FHE is left out: it runs
too few queries for these metrics, and fhe-sim stands for it (see the agreement rows)."""

import pytest

from ppazam_core.open_set import open_set_metrics
from ppazam_core.recognition import Mode

FALSE_ACCEPTS = 0.01


def test_open_set(ppazam_run, ppazam_point, ppazam_model, ppazam_queries, ppazam_level, ppazam_mode):
    mode = Mode(ppazam_mode)
    if ppazam_run.suite.distractor_tracks == 0:
        pytest.skip("the suite holds no distractor tracks out")
    if ppazam_run.suite.is_sweep(ppazam_level):
        pytest.skip("open-set figures are measured on the suite's levels, not on its gain and length sweeps")
    if mode not in ppazam_model.modes or mode is Mode.FHE:
        pytest.skip(f"open-set figures are measured in {', '.join(m.value for m in ppazam_model.modes if m is not Mode.FHE)}")
    distractors = ppazam_run.stages.queries(ppazam_point.family, ppazam_point.config, ppazam_level, distractors=True)
    known = ppazam_run.stages.predict(ppazam_model, ppazam_queries, mode)
    unknown = ppazam_run.stages.predict(ppazam_model, distractors, mode, in_library=False)
    metrics = open_set_metrics(known.confidence, known.hits(1), unknown.confidence, FALSE_ACCEPTS)
    condition = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level)
    n = metrics.n_library + metrics.n_distractors
    ppazam_run.record.results += [
        condition.row("roc_auc", metrics.roc_auc, n, "fraction"),
        condition.row("pr_auc", metrics.pr_auc, n, "fraction"),
        condition.proportion("top1_at_far", round(metrics.top1_at_far * metrics.n_library), metrics.n_library),
        condition.row("false_accepts", metrics.false_accepts, metrics.n_distractors, "fraction"),
    ]
    if hasattr(ppazam_model, "rejects"):  # the family's own "unknown" rule (mfcc-logreg's vote threshold)
        accepted = ~ppazam_model.rejects(known.confidence)
        ppazam_run.record.results += [
            condition.proportion("own_rule_top1", (accepted & known.hits(1)).sum(), metrics.n_library),
            condition.proportion("own_rule_false_accepts", (~ppazam_model.rejects(unknown.confidence)).sum(),
                                 metrics.n_distractors)]
    assert 0.0 <= metrics.roc_auc <= 1.0 and metrics.false_accepts <= FALSE_ACCEPTS
