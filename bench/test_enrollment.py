"""Enrollment without training, measured the few-shot way (families whose registry record can
``enroll``, e.g. ``embedding-prototypes``; suites with ``enroll_tracks``).

The suite's enrolled tracks are kept out of training (more tracks of the synthetic generator
under their own seed, or tracks held out of a folder) and added to the trained model from
``k`` clean segments each, for every ``k`` of ``shots`` (stage ``enroll:k-shot``), or, for a
family that enrolls songs whole as it trains (the kNN families' references), once (stage
``enroll:song``). At each level
and mode but ``fhe`` (fhe-sim computes the circuit's integers), the enrolled model answers the
queries of the tracks seen in training (``top1_seen``) and of the enrolled ones
(``top1_enrolled``, the whole library as the classes), and n-way k-shot episodes as in
prototypical networks (Snell et al. 2017): ``EPISODES`` draws of n enrolled tracks, their queries
ranked among those n tracks only (``episode_top1``, stage ``enroll:n-way-k-shot``: the mean of the
episodes' top-1 with its 95% interval over episodes, n the episodes; the same episodes for every
k). With distractor tracks, open-set rejection of the enrolled model is measured on the enrolled
tracks' queries against the distractors' (``roc_auc_enrolled``, ``top1_at_far_enrolled`` at 1% false accepts,
as in ``test_open_set``). Latency rows give each track's enrollment seconds (median, min, max) and
the recompilation's.
"""

import statistics

import numpy as np

from ppazam_core.families import get_family
from ppazam_core.results.open_set import DEFAULT_FAR, open_set_metrics
from ppazam_core.recognition import Mode, combine_segments
from ppazam_core.results.records import wilson_interval
from ppazam_core.seeding import derive_seed

EPISODES = 100
SANITY_CONDITION = "clean"


def runs(run, params: dict) -> bool:
    """Suites with tracks to enroll, families that enroll, the levels (not the sweeps), every
    mode of the family but true FHE (collection deselects the others)."""
    family = get_family(params["ppazam_point"].family)
    mode = Mode(params["ppazam_mode"])
    return run.suite.enroll_tracks > 0 and family.enroll is not None and mode in family.modes and \
        mode is not Mode.FHE and not run.suite.is_sweep(params["ppazam_level"])


def test_enrollment(ppazam_run, ppazam_point, ppazam_model, ppazam_queries, ppazam_level, ppazam_mode):
    mode = Mode(ppazam_mode)
    stages, config = ppazam_run.stages, ppazam_point.config
    new_queries = stages.queries(ppazam_point.family, config, ppazam_level, enrolled=True)
    seen_tracks = len(ppazam_model.track_ids)
    family = get_family(ppazam_point.family)
    for shots in ppazam_run.suite.shots if family.enroll_shots else (None,):
        how = "song" if shots is None else f"{shots}-shot"  # None: whole songs, as the family trains
        model = stages.enrolled_model(ppazam_model, config, shots)
        condition = ppazam_run.condition(ppazam_point, model, mode.value, ppazam_level, stage=f"enroll:{how}")
        seen = stages.predict(model, ppazam_queries, mode, in_library=False)
        seen_hits = seen.ranking[:, 0] == ppazam_queries.y[seen.rows * ppazam_queries.segments]
        new = stages.predict(model, new_queries, mode, in_library=False)
        new_truth = seen_tracks + new_queries.y[new.rows * new_queries.segments]
        new_hits = new.ranking[:, 0] == new_truth
        ppazam_run.record.results += [condition.proportion("top1_seen", seen_hits.sum(), len(seen_hits)),
                                      condition.proportion("top1_enrolled", new_hits.sum(), len(new_hits))]
        distractors = stages.queries(ppazam_point.family, config, ppazam_level, distractors=True)
        if distractors is not None:
            unknown = stages.predict(model, distractors, mode, in_library=False)
            metrics = open_set_metrics(new.confidence, new_hits, unknown.confidence, DEFAULT_FAR)
            ppazam_run.record.results += [
                condition.row("roc_auc_enrolled", metrics.roc_auc, metrics.n_library + metrics.n_distractors),
                condition.row("top1_at_far_enrolled", metrics.top1_at_far, metrics.n_library)]
        scores = combine_segments(model.scores(np.asarray(new_queries.X), mode).track_scores[:, seen_tracks:],
                                  new_queries.segments)
        for ways in ppazam_run.suite.episode_ways:
            accuracy = episodes(scores, new_truth - seen_tracks, ways,
                                derive_seed(config.data.eval_seed, "episodes", ppazam_level, ways))
            if accuracy.size:
                episode = ppazam_run.condition(ppazam_point, model, mode.value, ppazam_level,
                                               stage=f"enroll:{ways}-way-{how}")
                half = 1.96 * accuracy.std(ddof=1) / np.sqrt(accuracy.size)
                ppazam_run.record.results.append(episode.row("episode_top1", accuracy.mean(), accuracy.size,
                                                             ci=(accuracy.mean() - half, accuracy.mean() + half)))
        if mode is Mode.FP32 and ppazam_level == ppazam_run.suite.levels[0]:  # once per enrolled model
            seconds = [entry["enroll_s"] for entry in model.manifest["enrolled"]]
            timing = ppazam_run.condition(ppazam_point, model, mode.value, stage=f"enroll:{how}")
            ppazam_run.record.latency += [
                timing.row("enroll_s_per_track", statistics.median(seconds), len(seconds),
                           spread=(min(seconds), max(seconds))),
                timing.row("recompile_s", model.manifest["timings"]["last_compile_s"], 1)]
        if ppazam_level == SANITY_CONDITION and (shots is None or shots == max(ppazam_run.suite.shots)):
            low, _ = wilson_interval(int(new_hits.sum()), len(new_hits))
            assert low > 1 / len(model.track_ids), (
                f"{ppazam_point.family} {mode}: enrolled tracks identified no better than chance "
                f"({new_hits.mean():.2f} top-1 on {len(new_hits)} clean queries, enrolled as {how})")


def episodes(scores: np.ndarray, truth: np.ndarray, ways: int, seed: int) -> np.ndarray:
    """Top-1 of each of :data:`EPISODES` n-way episodes ``(EPISODES,)``: each draws ``ways`` of the
    enrolled tracks and ranks their queries among them only (``scores (queries, tracks)``,
    ``truth`` indices into the enrolled tracks). Empty when fewer than ``ways`` are enrolled."""
    tracks = np.unique(truth)
    if len(tracks) < ways:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    accuracy = []
    for _ in range(EPISODES):
        chosen = rng.choice(tracks, ways, replace=False)
        queries = np.isin(truth, chosen)
        answers = chosen[np.argmax(scores[np.ix_(queries, chosen)], axis=1)]
        accuracy.append((answers == truth[queries]).mean())
    return np.asarray(accuracy)
