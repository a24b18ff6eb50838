"""Open-set rejection per family, mode and level: library queries against queries of distractor
tracks held out of training (the suite's ``distractor_tracks``). True FHE is left out: it runs
a sample of the queries, and fhe-sim stands for it (see the agreement rows). ``top1_at_far`` is
interpolated at exactly :data:`FALSE_ACCEPTS`; ``false_accepts`` is the rate the fixed threshold
below it achieved (see :mod:`ppazam_core.results.open_set`)."""

from ppazam_core.families import family_modes
from ppazam_core.results.open_set import DEFAULT_FAR, open_set_metrics
from ppazam_core.recognition import Mode

FALSE_ACCEPTS = DEFAULT_FAR


def runs(run, params: dict) -> bool:
    """Only suites with distractor tracks, on their levels (not the sweeps), in the family's
    modes but true FHE (collection deselects the others)."""
    mode = Mode(params["ppazam_mode"])
    return run.suite.distractor_tracks > 0 and not run.suite.is_sweep(params["ppazam_level"]) and (
        mode in family_modes(params["ppazam_point"].family) and mode is not Mode.FHE)


def test_open_set(ppazam_run, ppazam_point, ppazam_model, ppazam_queries, ppazam_level, ppazam_mode):
    mode = Mode(ppazam_mode)
    distractors = ppazam_run.stages.queries(ppazam_point.family, ppazam_point.config, ppazam_level, distractors=True)
    known = ppazam_run.stages.predict(ppazam_model, ppazam_queries, mode)
    unknown = ppazam_run.stages.predict(ppazam_model, distractors, mode, in_library=False)
    metrics = open_set_metrics(known.confidence, known.hits(1), unknown.confidence, FALSE_ACCEPTS)
    condition = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, ppazam_level)
    n = metrics.n_library + metrics.n_distractors
    ppazam_run.record.results += [
        condition.row("roc_auc", metrics.roc_auc, n),
        condition.row("pr_auc", metrics.pr_auc, n),
        condition.row("far_target", metrics.far, metrics.n_distractors),
        condition.row("top1_at_far", metrics.top1_at_far, metrics.n_library),
        condition.row("false_accepts", metrics.false_accepts, metrics.n_distractors),
        condition.proportion("top1_at_false_accepts", round(metrics.top1_at_false_accepts * metrics.n_library),
                             metrics.n_library),
    ]
    rejected = ppazam_model.rejects(known.confidence)
    if rejected is not None:  # the family's own "unknown" rule (mfcc-logreg's vote threshold)
        ppazam_run.record.results += [
            condition.proportion("own_rule_top1", (~rejected & known.hits(1)).sum(), metrics.n_library),
            condition.proportion("own_rule_false_accepts", (~ppazam_model.rejects(unknown.confidence)).sum(),
                                 metrics.n_distractors)]
