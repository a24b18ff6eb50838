"""The privacy ledger of every family in every mode (:mod:`ppazam_core.results.privacy`): what the server
learns about the song, what the client receives, bytes up and down, evaluation keys, security
level and the chance of an off table lookup, per query segment. After the truly encrypted
queries of a model, the calls the server actually saw are checked against the ledger: a design
that claims to reveal nothing must have made the same calls, in the same order, for every query."""

import pytest

from ppazam_core.families import family_modes
from ppazam_core.results.privacy import ledger
from ppazam_core.recognition import Mode


def runs(run, params: dict) -> bool:
    """The family's modes of the suite (collection deselects the others)."""
    return Mode(params["ppazam_mode"]) in family_modes(params["ppazam_point"].family)


def call_patterns(costs) -> list[tuple[str, ...]]:
    """The circuits each encrypted query called, in order, as the server saw them, repeated calls
    of one circuit counted once (a query of more segments calls each more often: its length is
    no secret). A two-stage query starts with a first-stage call after a second-stage one; a
    single-circuit family's every call is alike."""
    patterns: list[list[str]] = []
    for cost in costs:
        if not patterns or cost.classifier == "cluster" and patterns[-1][-1] != "cluster":
            patterns.append([])
        if not patterns[-1] or patterns[-1][-1] != cost.classifier:
            patterns[-1].append(cost.classifier)
    return [tuple(p) for p in patterns]


@pytest.mark.point_summary  # after every encrypted query of the point, so the check sees them all
def test_privacy_ledger(ppazam_run, ppazam_point, ppazam_model, ppazam_mode):
    mode = Mode(ppazam_mode)
    channel = ppazam_model.channel
    row = ledger(ppazam_model, mode, channel)
    condition = ppazam_run.condition(ppazam_point, ppazam_model, mode.value, stage="ledger")
    ppazam_run.record.results += row.rows(condition)
    if mode is not Mode.FHE or channel is None or not channel.costs:
        return
    patterns = call_patterns(channel.costs)
    ppazam_run.record.results.append(condition.row("observed_call_patterns", len(set(patterns)), len(patterns)))
    if row.server_learns_bits == 0:
        assert len(set(patterns)) == 1, (f"{ppazam_model.family} claims the server learns nothing, yet its "
                                         f"{len(patterns)} encrypted queries made {len(set(patterns))} call patterns")
