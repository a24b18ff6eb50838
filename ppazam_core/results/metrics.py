"""The metric table: every number a run folder holds, by name, with its unit, its direction and
the kind of interval its rows carry.

``ppazam evaluate``, the bench, ``ppazam report`` and ``ppazam compare`` all read it: a row's
unit comes from here (:meth:`~ppazam_core.results.records.Condition.row`), the report's glossary and
labels, and the regression gate's choice of test (paired McNemar on a per-query column, or
Mann-Whitney on timed rounds, in the metric's worse direction). A metric name may carry a
qualifier after a colon (``train_s:embedding``): it is the metric before the colon. A family
outside this repository that writes rows of its own adds its metrics with :func:`register_metric`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Interval(str, Enum):
    """What ``ci_low``/``ci_high`` or ``min``/``max`` of a row mean."""

    WILSON = "wilson"  # 95% Wilson score interval of a proportion over n queries
    T = "t"  # 95% Student-t interval of a mean over n episodes
    SPREAD = "spread"  # minimum and maximum of the n observations the median summarises
    NONE = "none"  # a single value (a count, a size, an estimate)


@dataclass(frozen=True)
class Metric:
    """One metric: ``unit`` (``fraction``, ``s``, ``ms``, ``bytes``, ``bits``, ``count``,
    ``probability``, ``ratio``, ``flag`` or empty for unitless scores), whether a higher value is
    better (``None`` for a fact that is neither, like a circuit's PBS count), its interval kind,
    a one-line description and, for accuracies the gate compares query by query, the column of
    ``predictions.csv.gz`` holding each query's hit (``paired``)."""

    name: str
    unit: str
    higher_is_better: bool | None
    interval: Interval
    description: str
    paired: str = ""

    @property
    def direction(self) -> str:
        """``higher``, ``lower`` or empty: which way is better."""
        return {True: "higher", False: "lower", None: ""}[self.higher_is_better]


_METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the table (a plug-in family writing rows of its own calls this).

    Raises:
        ValueError: another metric of that name is registered.
    """
    known = _METRICS.get(metric.name)
    if known is not None and known != metric:
        raise ValueError(f"metric {metric.name!r} is already registered as {known}")
    _METRICS[metric.name] = metric
    return metric


def metric(name: str) -> Metric:
    """The metric a row named ``name`` measures (the part before a ``:`` qualifier).

    Raises:
        KeyError: no such metric is registered (register it with :func:`register_metric`).
    """
    base = name.split(":", 1)[0]
    if base not in _METRICS:
        raise KeyError(f"unknown metric {name!r}: register it with ppazam_core.results.metrics.register_metric "
                       f"(known: {', '.join(sorted(_METRICS))})")
    return _METRICS[base]


def metrics() -> tuple[Metric, ...]:
    """Every registered metric, in registration order."""
    return tuple(_METRICS.values())


def _table(unit: str, better: bool | None, interval: Interval, *entries: tuple[str, str]) -> None:
    for name, description in entries:
        register_metric(Metric(name, unit, better, interval, description))


register_metric(Metric("top1", "fraction", True, Interval.WILSON, "queries whose best track is the true one", "top1"))
register_metric(Metric("top3", "fraction", True, Interval.WILSON, "queries with the true track among the best three",
                       "top3"))
register_metric(Metric("cluster_accuracy", "fraction", True, Interval.WILSON,
                       "queries whose first stage picked the true track's cluster", "cluster_correct"))
_table("fraction", True, Interval.WILSON,
       ("agreement", "encrypted queries whose best track equals fhe-sim's on the same query"),
       ("fhe_sim_top1_same_queries", "fhe-sim top-1 on the queries run truly encrypted"),
       ("circuit_agreement", "queries where fhe-sim's best track equals the clear circuit's"),
       ("simulation_self_agreement", "queries where two fhe-sim runs agree on the best track"),
       ("top1_seen", "top-1 on tracks the embedding was trained on"),
       ("top1_enrolled", "top-1 on tracks enrolled after training"),
       ("top1_at_false_accepts", "top-1 of library queries accepted by the threshold giving the achieved false-accept rate"),
       ("own_rule_top1", "library queries accepted by the model's stored open-set rule and right"))
_table("fraction", True, Interval.NONE,
       ("roc_auc", "ROC-AUC of the confidence separating library queries from distractors"),
       ("pr_auc", "PR-AUC of the same (library queries positive)"),
       ("roc_auc_enrolled", "ROC-AUC with enrolled tracks as the library"),
       ("top1_at_far", "top-1 of library queries at the target false-accept rate"),
       ("top1_at_far_enrolled", "top-1 of enrolled-track queries at the target false-accept rate"))
_table("fraction", False, Interval.NONE,
       ("false_accepts", "distractor queries accepted at the chosen threshold"))
_table("fraction", False, Interval.WILSON,
       ("own_rule_false_accepts", "distractor queries accepted by the model's stored open-set rule"))
_table("fraction", None, Interval.NONE, ("far_target", "false-accept rate the threshold was chosen for"))
_table("fraction", True, Interval.T, ("episode_top1", "mean top-1 of n-way k-shot episodes"))
_table("probability", None, Interval.NONE,
       ("p_error", "Concrete's probability that one table lookup is off"),
       ("mcnemar_p_vs_fhe_sim", "McNemar exact p-value, fhe against fhe-sim on the same queries"))
_table("probability", False, Interval.NONE, ("p_error_per_query", "probability that a query meets an off lookup"))
_table("s", False, Interval.SPREAD,
       ("median_s", "median seconds of one call or query"),
       ("enroll_s_per_track", "median seconds to enroll one track"))
_table("s", False, Interval.NONE,
       ("seconds", "seconds of the whole evaluation of a condition"),
       ("per_query_s", "seconds a query spends in a stage (median call times calls per query)"),
       ("server_s", "server seconds of a call (measured rounds) or Concrete's estimate (fhe-estimate)"),
       ("keys_s", "seconds to generate and install a circuit's keys"),
       ("recompile_s", "seconds to recompile a circuit after enrollment"),
       ("train_s", "seconds to train a model (qualified by step)"))
_table("ms", False, Interval.SPREAD, ("ms_per_pbs", "server milliseconds per programmable bootstrap"))
_table("bytes", False, Interval.SPREAD, ("median_bytes", "median bytes sent or received by one call"))
_table("bytes", False, Interval.NONE,
       ("per_query_bytes", "bytes a query sends or receives in a stage"),
       ("bytes_up", "bytes the client uploads per query segment"),
       ("bytes_down", "bytes the client downloads per query segment"),
       ("key_bytes_up", "evaluation-key bytes the client uploads once"),
       ("evaluation_key_bytes", "evaluation keys in memory (Concrete)"),
       ("serialized_key_bytes", "serialized evaluation keys a client uploads"),
       ("evaluation_key_bytes_sent", "evaluation-key bytes sent in this run"),
       ("input_ciphertext_bytes", "bytes of one encrypted input"),
       ("output_ciphertext_bytes", "bytes of one encrypted output"),
       ("secret_key_bytes", "bytes of the client's secret keys"),
       ("artifact_bytes", "bytes of the model folder"))
_table("bits", False, Interval.NONE, ("server_learns_bits", "what the server learns about the song (entropy of its "
                                                            "observations)"))
_table("bits", True, Interval.NONE, ("security_bits", "security level of the circuit's parameters"))
_table("count", False, Interval.NONE,
       ("server_calls", "encrypted calls per query segment"),
       ("client_scores", "scores the client decrypts per query segment"),
       ("observed_call_patterns", "distinct call patterns the server saw"),
       ("pbs_count", "programmable bootstraps in one circuit evaluation"))
_table("count", None, Interval.NONE,
       ("segments_per_query", "segments one query is cut into"),
       ("library_tracks", "tracks in the model's library"))
_table("bits", None, Interval.NONE, ("max_bit_width", "widest integer in the circuit"))
_table("", False, Interval.NONE, ("complexity", "Concrete's cost estimate of the circuit"))
_table("s", None, Interval.NONE, ("compile_s", "seconds Concrete ML took to compile the circuit"))
_table("ratio", None, Interval.NONE, ("server_s_over_estimate", "measured server seconds over Concrete's estimate"))
_table("flag", None, Interval.NONE, ("sizes_measured", "1 when bytes were measured on this run's exchanges"))
