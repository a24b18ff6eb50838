"""``report.html``: one self-contained page (figures embedded as PNG data), no network needed.

Sections: provenance, the library's warnings (skipped files, silent tracks, identical files), the
regression verdict when a baseline was given, the headline table (each family at a glance), then
the figures: the Pareto figure (fhe-sim top-1 against encrypted seconds per query, one point per
family, bit width and rounding), accuracy against augmentation level per mode, top-1 against
recording gain and against query length, encrypted seconds against query length, bit-width curves
(accuracy and encrypted latency on two axes), latency per stage (stacked bars), key and ciphertext
sizes, answer bytes against library size, open-set rejection, cost and accuracy against library
size (log axes); then the tables (every mode side by side, open set, privacy ledger), every
accuracy row (folded) and the metric table.

The page is read at 1280 and at 800 pixels wide: figures are drawn 8 inches wide at 110 dpi with
no font smaller than matplotlib's ``small``, small multiples wrap at three panels a row, legends
sit outside the axes, and a figure that has rows but nothing it can draw says why.
"""

from __future__ import annotations

import base64
import io

import jinja2
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ppazam_core.queries.augment import Level
from ppazam_core.queries.conditions import QueryCondition
from reports.projection import PROJECTION_NOTE, projection_tables
from reports.scaling_figure import PNNS
from reports.tables import (ESTIMATE_MODE, MODE_ORDER, at_levels, encrypted_query_seconds, family_points, glossary,
                            headline, labelled, machine, mode_comparison, open_set, privacy_ledger, row_order)

FIGURE_IDS = ("pareto", "accuracy-by-level", "gain-sweep", "length-sweep", "length-cost", "bit-width-sweep",
              "latency-by-stage", "sizes", "answer-bytes", "open-set", "scaling")
SIZE_METRICS = ("evaluation_key_bytes", "input_ciphertext_bytes", "output_ciphertext_bytes")
STACKED_STAGES = ("features", "first-stage", "first-stage:encrypt", "first-stage:server", "first-stage:decrypt",
                  "second-stage", "second-stage:encrypt", "second-stage:server", "second-stage:decrypt",
                  "query", "head:encrypt", "head:server", "head:decrypt")
SPLIT_STAGES = ("first-stage", "second-stage", "query")  # in fhe mode, shown as encrypt / server / decrypt
MODE_COLOURS = dict(zip(MODE_ORDER, sns.color_palette(n_colors=len(MODE_ORDER))))

TEMPLATE = jinja2.Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ppazam report {{ run.run_id }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } tbody th { white-space: nowrap; }
figure { margin: 2rem 0; } figure h2 { margin-bottom: 0.3rem; } figcaption { margin-bottom: 0.8rem; }
img { max-width: 100%; height: auto; }
.words td, .words th { text-align: left; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .note { color: #555; font-style: italic; }
code { font-size: 0.85rem; overflow-wrap: anywhere; } summary { cursor: pointer; }
@media (max-width: 900px) { table { font-size: 0.8rem; } th, td { padding: 0.2rem 0.4rem; }
  tbody th { white-space: normal; } }
</style></head><body>
<h1>ppazam: {{ suite }} suite</h1>
<p>Run <code>{{ run.run_id }}</code>, commit <code>{{ run.git_commit }}</code>, library <code>{{ run.library }}</code>,
started {{ run.timestamp }}{% if run.command %}, command <code>{{ run.command }}</code>{% endif %}. Machine: {{ machine }}.</p>
{% for name, warnings in (run.library_warnings or {}).items() %}<p class="fail">Library <code>{{ name | e }}</code> as opened:
{{ warnings | length }} warning(s) (skipped files are left out of every figure; silent tracks and identical files cap top-1).</p>
<ul>{% for line in warnings %}<li>{{ line | e }}</li>{% endfor %}</ul>{% endfor %}
{% if verdict %}
<h2 id="verdict">Regression check</h2>
{% if verdict.error %}<p class="fail">NOT COMPARED: {{ verdict.error }}</p>{% else %}
<p class="{{ 'pass' if verdict.passed else 'fail' }}">{{ 'PASSED' if verdict.passed else 'REGRESSED' }}:
{{ verdict.compared }} paired tests against <code>{{ verdict.baseline }}</code>{% if verdict.baseline_run_id %}
(run <code>{{ verdict.baseline_run_id }}</code>){% endif %} on {{ verdict.paired_queries }}
queries matched by key (max accuracy drop {{ verdict.tolerance.max_accuracy_drop }}, max latency growth
{{ verdict.tolerance.max_latency_growth }}, significance {{ verdict.tolerance.significance }} Holm-adjusted);
{{ verdict.regressions | length }} regressed, {{ verdict.untested }} tests could not reach significance (no discordant query, too few rounds) and were not counted.</p>{% endif %}
{% if verdict.regressions %}<div class="wide"><table><tr><th>condition</th><th>metric</th><th>baseline</th><th>run</th><th>why</th></tr>
{% for r in verdict.regressions %}<tr><td>{{ r.condition }}</td><td>{{ r.metric }}</td><td>{{ '%.4g' % r.baseline }}</td>
<td>{{ '%.4g' % r.current }}</td><td>{{ r.reason }}</td></tr>{% endfor %}</table></div>{% endif %}
{% endif %}
<h2 id="glance">At a glance</h2>
<p>Each family in its most private mode: top-1 per level, its spread over the gain sweep, top-1
at the shortest and longest query, and seconds per truly encrypted query (~: estimated).</p>
<div class="wide">{{ glance }}</div>
{% for figure in figures %}
<figure id="{{ figure.id }}"><h2>{{ figure.title }}</h2><figcaption>{{ figure.caption }}</figcaption>
{% if figure.png %}<img alt="{{ figure.title }}" src="data:image/png;base64,{{ figure.png }}">
{% else %}<p class="note">{{ figure.note or "No rows for this figure in this run." }}</p>{% endif %}</figure>
{% endfor %}
<h2 id="summary">Summary</h2>
<p>Top-1 / top-3 per level and mode (n queries), and the median seconds of one query.</p>
<div class="wide">{{ summary }}</div>
{% if open_set %}<h2 id="open-set-table">Open-set rejection</h2>
<p>ROC-AUC / PR-AUC of the confidence for library vs distractor queries, and top-1 at 1% false accepts,
interpolated between the two fixed thresholds that bracket 1%; in brackets the false-accept rate the
fixed threshold at or below 1% achieved on the distractor queries.</p>
<div class="wide">{{ open_set }}</div>{% endif %}
{% if ledger %}<h2 id="privacy">Privacy ledger</h2>
<p>Per query segment, for each family's clear design (the query is sent in the clear) and its encrypted
design (fhe-disable and fhe-sim evaluate it): bits about the song the server learns from which circuits
a query calls, encrypted calls, scores the client decrypts, ciphertext kilobytes up and down,
evaluation-key megabytes uploaded once, the security level of the FHE parameters, and the probability
that at least one table lookup of a query is off by a quantization step. Definitions: docs/privacy-and-serving.md.</p>
<div class="wide">{{ ledger }}</div>{% endif %}
{% if projections %}<h2 id="projection">Projected cost at full size</h2>
<p>{{ projection_note }}</p>
{% for caption, table in projections %}<p>{{ caption }}.</p><div class="wide">{{ table }}</div>{% endfor %}{% endif %}
<details id="rows"><summary><h2 style="display: inline">All accuracy rows</h2> ({{ n_details }} rows; click to open)</summary>
<div class="wide">{{ details }}</div></details>
<h2 id="metrics">Metrics</h2>
<p>Every metric of this run: its unit, which way is better, and what the interval columns of its rows hold
(wilson: 95% Wilson interval over n queries; t: 95% t-interval over n episodes; spread: minimum and maximum
of the n observations of a median).</p>
<div class="wide">{{ metrics }}</div>
</body></html>
""")


def render_report(results: pd.DataFrame, latency: pd.DataFrame, run: dict, verdict: dict | None = None) -> str:
    """The whole page as a string."""
    summary = mode_comparison(results, latency)
    glance = headline(results, latency)
    rejection = open_set(results)
    privacy = privacy_ledger(results)
    overall = results[results["stage"] == ""]
    details = overall[["family", "mode", "bit_width", "rounding_bits", "level", "metric", "value", "unit", "ci_low",
                       "ci_high", "n"]]
    query_s = float(run.get("suite", {}).get("query_s", 3.0))
    figures = [
        _figure("pareto", "Accuracy against encrypted cost",
                "fhe-sim top-1 per level against the seconds of one truly encrypted query (log scale), one colour "
                "per family (and bit width and rounding where a family has several), one marker per level; filled: "
                "measured, hollow: Concrete's cost estimate.", _pareto, results, latency),
        _figure("accuracy-by-level", "Top-1 by augmentation level and mode",
                "One panel per family (its first point), one line per mode, with 95% Wilson intervals.",
                _accuracy_by_level, results),
        _figure("gain-sweep", "Top-1 against recording gain",
                "Clean queries recorded at each gain; one panel per family, one line per mode, 95% Wilson intervals.",
                lambda f, r: _sweep(f, r, "gain_db", "recording gain (dB)"), results),
        _figure("length-sweep", "Top-1 against query length",
                "Phone-in-room queries of each length; one panel per family, one line per mode, 95% Wilson "
                "intervals.", lambda f, r: _sweep(f, r, "length_s", "query length (s)", query_s), results),
        _figure("length-cost", "Encrypted seconds against query length",
                "Segments per query x the seconds of a one-segment encrypted query (measured, else Concrete's "
                "estimate), per encrypted family; log scale.",
                lambda f, r, l: _length_cost(f, r, l, query_s), results, latency),
        _figure("bit-width-sweep", "Bit-width sweep",
                "fhe-sim top-1 (left axis) and the seconds of an encrypted query (right axis) of the run's first "
                "family against its weight and activation bits.", _bit_width_sweep, results, latency),
        _figure("latency-by-stage", "Latency per stage",
                "Each mode's query split into its stages, as shares of the summed stage medians (of the timed "
                "rounds); the total in brackets.", _latency_by_stage, latency),
        _figure("sizes", "Key and ciphertext sizes", "Per circuit, in MB on a log scale.", _sizes, results),
        _figure("answer-bytes", "Answer bytes and server seconds against library size",
                "Per query segment and encrypted design, from the privacy ledger and the measured server stages, "
                "with Apple's PNNS point (star); dashed, hollow: extrapolated past the largest measured size (an "
                "estimate).", _answer_bytes, results, latency),
        _figure("open-set", "Open-set rejection",
                "ROC-AUC of the confidence, library against distractor queries, per mode and level.",
                _open_set, results),
        _figure("scaling", "Cost and accuracy against library size",
                "fhe-sim top-1 (clear families: fp32) and seconds per query (fhe; clear families: fp32) against the "
                "number of library tracks, log axes.", _scaling, results, latency),
    ]
    return TEMPLATE.render(run=run, suite=run.get("suite", {}).get("name", "?"), machine=machine(run),
                           verdict=verdict, figures=figures,
                           glance=glance.to_html(border=0) if not glance.empty else "<p>No accuracy rows.</p>",
                           open_set=None if rejection.empty else rejection.to_html(border=0),
                           ledger=None if privacy.empty else privacy.to_html(border=0),
                           summary=summary.to_html(border=0) if not summary.empty else "<p>No accuracy rows.</p>",
                           details=details.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}"),
                           n_details=len(details), projection_note=PROJECTION_NOTE,
                           projections=[(caption, table.to_html(border=0))
                                        for caption, table in projection_tables(run, results, latency)],
                           metrics=glossary(results, latency).to_html(border=0, classes="words"))


FIGURE_WIDTH = 8.0  # inches, at FIGURE_DPI: about 880 pixels, legible when a 800-pixel window shrinks it
FIGURE_DPI = 110


def _figure(figure_id: str, title: str, caption: str, draw, *frames: pd.DataFrame) -> dict:
    """One figure of the page: ``draw`` runs on a fresh figure and returns True (drawn), False (no
    rows for it) or a sentence saying why its rows give nothing to draw; the PNG as base64."""
    figure = Figure(figsize=(FIGURE_WIDTH, 4.5), layout="constrained")
    drawn = draw(figure, *frames)
    if drawn is not True:
        return {"id": figure_id, "title": title, "caption": caption, "png": None, "note": drawn or None}
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight", pad_inches=0.1)
    return {"id": figure_id, "title": title, "caption": caption, "png": base64.b64encode(buffer.getvalue()).decode()}


def _png(draw, *frames: pd.DataFrame) -> str | None:
    """The PNG (base64) ``draw`` makes of ``frames``, or None when it draws nothing."""
    return _figure("", "", "", draw, *frames)["png"]


PANELS_PER_ROW = 3  # small multiples wrap after this many panels: family names stay apart at 800 pixels
Drawn = bool | str  # what a figure's draw function returns: drawn, no rows, or why there is nothing to draw


def _accuracy_by_level(figure, results: pd.DataFrame) -> Drawn:
    """One panel per family (its first point), one line per mode, with 95% Wilson intervals."""
    rows = at_levels(family_points(results))
    rows = rows[(rows["metric"] == "top1") & (rows["stage"] == "")]
    if rows.empty:
        return False
    levels = list(dict.fromkeys(rows["level"]))
    for ax, part_rows in _family_panels(figure, rows):
        modes = [m for m in MODE_ORDER if m in set(part_rows["mode"])]
        width = 0.6 / len(modes)
        for i, mode in enumerate(modes):
            part = part_rows[part_rows["mode"] == mode].set_index("level").reindex(levels)
            _top1_errorbar(ax, [j + (i - (len(modes) - 1) / 2) * width for j in range(len(levels))], part, mode)
        ax.set_xticks(range(len(levels)), levels, fontsize="small", rotation=35, ha="right", rotation_mode="anchor")
    _mode_legend(figure)
    return True


def _family_panels(figure, rows: pd.DataFrame) -> list:
    """One panel per family of ``rows``, :data:`PANELS_PER_ROW` to a row, sharing the top-1 axis
    (labelled once, on the figure's left); the (axis, the family's rows) pairs to draw into."""
    families = list(dict.fromkeys(rows["family"]))
    columns = min(PANELS_PER_ROW, len(families))
    lines = -(-len(families) // columns)
    figure.set_size_inches(FIGURE_WIDTH, 0.8 + 2.9 * lines)
    figure.get_layout_engine().set(hspace=0.06)
    axes = figure.subplots(lines, columns, sharey=True, squeeze=False).ravel()
    for unused in axes[len(families):]:
        figure.delaxes(unused)
    for ax, family in zip(axes, families):
        ax.set_title(family, fontsize="medium")
        ax.set_ylim(0, 1.02)
        ax.tick_params(axis="y", labelleft=True)
    figure.supylabel("top-1 (95% Wilson CI)")
    return [(ax, rows[rows["family"] == family]) for ax, family in zip(axes, families)]


def _top1_errorbar(ax, x, part: pd.DataFrame, mode: str) -> None:
    """``part``'s top-1 at ``x`` with its 95% Wilson interval, in the mode's colour."""
    below = (part["value"] - part["ci_low"]).fillna(0).clip(lower=0).to_numpy()
    above = (part["ci_high"] - part["value"]).fillna(0).clip(lower=0).to_numpy()
    ax.errorbar(x, part["value"].to_numpy(), yerr=np.vstack([below, above]), marker="o", capsize=3, label=mode,
                color=MODE_COLOURS[mode])


def _mode_legend(figure) -> None:
    """One legend of the modes drawn in any panel, above the panels."""
    handles = {name: handle for panel in figure.axes for handle, name in zip(*panel.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), title="mode", loc="outside upper center", ncols=len(handles),
                  fontsize="small")


def _sweep(figure, results: pd.DataFrame, axis: str, label: str, query_s: float | None = None) -> Drawn:
    """Top-1 against one condition axis (``gain_db`` of the gain sweep, ``length_s`` of the
    length sweep, where the plain phone-in-room level is the point at the suite's ``query_s``):
    one panel per family (its first point), one line per mode, with 95% Wilson intervals."""
    rows = family_points(results)
    rows = rows[(rows["metric"] == "top1") & (rows["stage"] == "")].copy()
    conditions = rows["level"].map(QueryCondition.parse)
    rows["x"] = [getattr(c, axis) for c in conditions]
    if axis == "length_s":
        plain = (rows["level"] == Level.PHONE_IN_ROOM.value) & rows["x"].isna()
        rows.loc[plain, "x"] = query_s
    rows = rows.dropna(subset=["x"])
    if rows["x"].nunique() < 2:
        return False
    for ax, part_rows in _family_panels(figure, rows):
        for mode in [m for m in MODE_ORDER if m in set(part_rows["mode"])]:
            part = part_rows[part_rows["mode"] == mode].sort_values("x")
            _top1_errorbar(ax, part["x"].to_numpy(), part, mode)
    figure.supxlabel(label)
    _mode_legend(figure)
    return True


def _length_cost(figure, results: pd.DataFrame, latency: pd.DataFrame, query_s: float) -> Drawn:
    """Per encrypted family (its first point): the length sweep's segments per query times the
    seconds of one encrypted one-segment query at the levels; log y axis."""
    segments = family_points(results)
    segments = segments[segments["metric"] == "segments_per_query"].drop_duplicates(["family", "level"]).copy()
    segments["x"] = [QueryCondition.parse(level).length_s for level in segments["level"]]
    segments.loc[(segments["level"] == Level.PHONE_IN_ROOM.value), "x"] = query_s
    segments = segments.dropna(subset=["x"])
    ax, zero = None, []
    for family, part in segments.groupby("family", sort=False):
        seconds = encrypted_query_seconds(results, latency, family)
        if seconds is None or part["x"].nunique() < 2:
            continue
        if seconds[0] <= 0:
            zero.append(family)
            continue
        ax = ax or figure.add_subplot()
        part = part.sort_values("x")
        ax.plot(part["x"], part["value"] * seconds[0], marker="o" if seconds[1] else "s",
                label=f"{family} ({'measured' if seconds[1] else 'estimated'})")
    if ax is None:
        return _no_seconds(zero) if zero else False
    ax.set_yscale("log")
    ax.set_xlabel("query length (s)")
    ax.set_ylabel("encrypted seconds per query")
    figure.legend(*ax.get_legend_handles_labels(), fontsize="small", loc="outside lower center", ncols=2)
    if zero:
        ax.set_title(f"not drawn, 0 s: {', '.join(zero)}", fontsize="small")
    return True


def _no_seconds(families: list[str]) -> str:
    """Why a log-scale cost figure is empty: every encrypted query of ``families`` costs 0 s."""
    return (f"Not drawn: the seconds of an encrypted query are 0 for {', '.join(families)} (Concrete's cost "
            "model gives 0 s to a circuit without programmable bootstrapping, and no query was timed in fhe "
            "mode), and 0 has no place on a log scale.")


def _pareto(figure, results: pd.DataFrame, latency: pd.DataFrame) -> Drawn:
    """One point per (family, bit width, rounding) and level: fhe-sim top-1 against the seconds
    of one truly encrypted query, measured (median over the levels) or else estimated from
    Concrete's cost model; log x axis."""
    keys = ["family", "bit_width", "rounding_bits", "library"]
    accuracy = at_levels(results)
    accuracy = accuracy[(accuracy["mode"] == "fhe-sim") & (accuracy["metric"] == "top1") & (accuracy["stage"] == "")]
    measured = at_levels(latency)
    measured = measured[(measured["mode"] == "fhe") & (measured["stage"] == "query") & (measured["metric"] == "median_s")]
    estimated = results[(results["mode"] == ESTIMATE_MODE) & (results["metric"] == "server_s")
                        & (results["stage"] == "query")]
    cost = estimated.groupby(keys)["value"].median().rename("estimated").to_frame().join(
        measured.groupby(keys)["value"].median().rename("measured"), how="outer").reset_index()
    points = accuracy.merge(cost, on=keys)
    if points.empty:
        return False
    points["seconds"] = points["measured"].fillna(points["estimated"])
    zero = list(dict.fromkeys(points.loc[~(points["seconds"] > 0), "family"]))
    points = points[points["seconds"] > 0]
    if points.empty:
        return _no_seconds(zero)
    several = points.groupby("family")[["bit_width", "rounding_bits"]].apply(lambda p: len(p.drop_duplicates()) > 1)
    points["label"] = [f"{f} w{b} r{r}" if several[f] else f
                       for f, b, r in zip(points["family"], points["bit_width"], points["rounding_bits"])]
    ax = figure.add_subplot()
    labels = list(dict.fromkeys(points["label"]))
    levels = list(dict.fromkeys(points["level"]))
    colours = dict(zip(labels, sns.color_palette(n_colors=len(labels))))
    markers = dict(zip(levels, "osD^vP*X"))
    for (label, level, is_measured), part in points.groupby(["label", "level", points["measured"].notna()],
                                                             sort=False):
        ax.scatter(part["seconds"], part["value"], marker=markers.get(level, "o"), s=50,
                   facecolors=colours[label] if is_measured else "none", edgecolors=colours[label])
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("seconds per truly encrypted query (log scale)")
    ax.set_ylabel("fhe-sim top-1")
    if zero:
        ax.set_title(f"not drawn, 0 s: {', '.join(zero)}", fontsize="small")
    handles = [ax.scatter([], [], color=colours[label], label=label) for label in labels]
    handles += [ax.scatter([], [], marker=markers.get(level, "o"), color="grey", label=level) for level in levels]
    figure.legend(handles=handles, fontsize="small", loc="outside right upper")
    return True


def _bit_width_sweep(figure, results: pd.DataFrame, latency: pd.DataFrame) -> Drawn:
    """The family swept over bit widths (the two-stage CNN; the run's first family)."""
    if results.empty:
        return False
    family = results["family"].iloc[0]
    results, latency = results[results["family"] == family], latency[latency["family"] == family]
    accuracy = results[(results["mode"] == "fhe-sim") & (results["metric"] == "top1") & (results["stage"] == "")]
    if accuracy.empty:
        return False
    if accuracy["bit_width"].nunique() < 2:
        return (f"Not drawn: the run measured {family}, its first family, at one bit width "
                f"({accuracy['bit_width'].iloc[0]:g}); a suite with several bit_widths sweeps it.")
    ax = figure.add_subplot()
    sns.lineplot(data=accuracy, x="bit_width", y="value", hue="level", style="rounding_bits", marker="o", ax=ax,
                 errorbar=None)
    ax.set_ylabel("fhe-sim top-1")
    ax.set_ylim(0, 1.02)
    handles, labels = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    twin = ax.twinx()
    estimated = results[(results["mode"] == ESTIMATE_MODE) & (results["metric"] == "server_s")
                        & (results["stage"] == "query")]
    estimated = estimated.groupby("bit_width")["value"].median()
    measured = latency[(latency["mode"] == "fhe") & (latency["stage"] == "query") & (latency["metric"] == "median_s")]
    if not estimated.empty:
        handles += twin.plot(estimated.index, estimated.values, "k--", marker="s")
        labels.append("estimated server s / query (right)")
    if not measured.empty:
        by_bits = measured.groupby("bit_width")["value"].median()
        handles += twin.plot(by_bits.index, by_bits.values, "k-", marker="D")
        labels.append("measured FHE s / query (right)")
    twin.set_ylabel("seconds per encrypted query")
    figure.legend(handles, labels, fontsize="small", loc="outside right upper")
    ax.set_xlabel("weight and activation bits")
    return True


def _latency_by_stage(figure, latency: pd.DataFrame) -> Drawn:
    """Each mode's query split into its stages, as shares of the summed stage medians; the
    encrypted stages are split further into encrypt / server / decrypt where measured."""
    split = latency["stage"].str.contains(":")  # encrypted parts: their per-query sums (calls x median per call)
    rows = latency[((~split & (latency["metric"] == "median_s")) | (split & (latency["metric"] == "per_query_s")))
                   & latency["stage"].isin(STACKED_STAGES)]
    staged = set(rows.loc[rows["stage"].isin(["first-stage", "second-stage"]), "family"])
    rows = rows[~(rows["family"].isin(staged) & (rows["stage"] == "query"))]  # there, query = sum of stages
    rows = rows[~((rows["mode"] == "fhe") & rows["stage"].isin(SPLIT_STAGES))]
    if rows.empty:
        return False
    rows = labelled(rows)
    table = rows.pivot_table(index="row", columns="stage", values="value", aggfunc="median")
    rank = {mode: i for i, mode in enumerate(MODE_ORDER)}
    order = rows.drop_duplicates("row").sort_values("mode", key=lambda m: m.map(rank), kind="stable")
    table = table.reindex(index=list(dict.fromkeys(order.sort_values("family", kind="stable")["row"])),
                          columns=[s for s in STACKED_STAGES if s in table.columns])
    totals = table.sum(axis=1)
    figure.set_size_inches(FIGURE_WIDTH, 1.2 + 0.35 * len(table))
    ax = figure.add_subplot()
    (table.div(totals, axis=0)).plot.barh(stacked=True, ax=ax, colormap="tab20", legend=False)
    ax.set_yticks(range(len(table)), [f"{mode} ({totals[mode]:.3g} s)" for mode in table.index])
    ax.invert_yaxis()  # the first family on top, as in the tables
    ax.set_xlabel("share of the summed stage medians (total in brackets)")
    ax.set_ylabel("")
    figure.legend(*ax.get_legend_handles_labels(), title="stage", loc="outside right upper", fontsize="small")
    return True


def _sizes(figure, results: pd.DataFrame) -> Drawn:
    rows = results[results["metric"].isin(SIZE_METRICS)]
    if rows.empty:
        return False
    # one bar per family, bit width, rounding and circuit: families name their circuits alike ("head")
    point = ["family", "bit_width", "rounding_bits", "stage"]
    several = rows.drop_duplicates(["bit_width", "rounding_bits"]).shape[0] > 1
    circuit = [f"{f} w{w:g}" + (f"r{r:g}" if r else "") + f" {s}" if several else f"{f} {s}"
               for f, w, r, s in rows[point].itertuples(index=False)]
    rows = rows.assign(MB=rows["value"] / 1e6, circuit=circuit).drop_duplicates(["circuit", "metric"])
    zero = rows[~(rows["MB"] > 0)]
    rows = rows[rows["MB"] > 0]
    if rows.empty:
        return "Not drawn: every key and ciphertext size of the run is 0 bytes."
    ax = figure.add_subplot()
    sns.barplot(data=rows, x="circuit", y="MB", hue="metric", ax=ax, errorbar=None, legend=True)
    ax.set_yscale("log")
    ax.set_xlabel("" if zero.empty else "0 bytes, not drawn: " + "; ".join(
        f"{c} {m.replace('_bytes', '')}" for c, m in zip(zero["circuit"], zero["metric"])), fontsize="small")
    ax.set_ylabel("MB (log scale)")
    _slanted_bars(figure, ax, 25, "size")
    return True


def _open_set(figure, results: pd.DataFrame) -> Drawn:
    rows = labelled(family_points(results))
    rows = rows[rows["metric"] == "roc_auc"]
    if rows.empty:
        return False
    ax = figure.add_subplot()
    sns.barplot(data=rows, x="row", y="value", hue="level", order=row_order(rows), ax=ax, errorbar=None)
    ax.set_xlabel("")
    ax.set_ylabel("ROC-AUC")
    ax.set_ylim(0, 1.02)
    _slanted_bars(figure, ax, 40, "level")
    return True


def _slanted_bars(figure, ax, rotation: float, legend_title: str) -> None:
    """A bar chart's x labels slanted by ``rotation`` degrees and ending at their bar, and its
    legend moved outside the axes (it covered bars)."""
    ax.tick_params(axis="x", labelrotation=rotation)
    for label in ax.get_xticklabels():
        label.set(ha="right", rotation_mode="anchor")
    handles, labels = ax.get_legend_handles_labels()
    ax.get_legend().remove()
    figure.legend(handles, labels, title=legend_title, loc="outside right upper", fontsize="small")


EXTRAPOLATE_TO = 100_000  # tracks: a design measured at two sizes or more is drawn to here, dashed


def _per_design(results: pd.DataFrame, latency: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per encrypted design and library size: the ledger's answer bytes per segment, and the
    server's seconds per segment (every encrypted stage's measured median, summed)."""
    answers = results[(results["stage"] == "ledger") & (results["metric"] == "bytes_down")
                      & results["mode"].isin(["fhe", "fhe-sim", "fhe-disable"]) & (results["value"] > 0)]
    answers = answers.drop_duplicates(["family", "n_tracks"])[["family", "n_tracks", "value"]]
    server = latency[(latency["mode"] == "fhe") & latency["stage"].astype(str).str.endswith(":server")
                     & (latency["metric"] == "per_query_s")] if not latency.empty else latency
    if not server.empty:
        server = server.groupby(["family", "n_tracks"], as_index=False)["value"].sum()
    return answers.rename(columns={"n_tracks": "tracks"}), \
        (server.rename(columns={"n_tracks": "tracks"}) if not server.empty else server)


def _extrapolated(rows: pd.DataFrame) -> pd.DataFrame:
    """Each design's cost past its largest measured size, to :data:`EXTRAPOLATE_TO` tracks: the
    power law through its two largest measured sizes, its exponent clamped to [0, 1] (flat, up to
    the per-track cost at the largest size: a packed design's shards make steps that a power law
    through two of them would overshoot)."""
    out = []
    for family, measured in rows.groupby("family"):
        measured = measured.sort_values("tracks")
        if len(measured) < 2 or measured["tracks"].iloc[-1] >= EXTRAPOLATE_TO:
            continue
        (n1, v1), (n2, v2) = measured[["tracks", "value"]].iloc[-2:].to_numpy()
        slope = np.log(v2 / v1) / np.log(n2 / n1) if v1 > 0 and v2 > 0 and n2 > n1 else 1.0
        slope = min(max(slope, 0.0), 1.0)  # at most its per-track cost (a packed design's shards step up)
        for n in (n2, EXTRAPOLATE_TO):
            out.append({"family": family, "tracks": n, "value": v2 * (n / n2) ** slope})
    return pd.DataFrame(out)


def _answer_bytes(figure, results: pd.DataFrame, latency: pd.DataFrame) -> Drawn:
    """Answer bytes and server seconds per segment of each encrypted design against the library
    size, log-log, Apple's PNNS point drawn in; past a design's largest measured size (two sizes
    or more), its extrapolation, dashed and marked as an estimate."""
    answers, server = _per_design(results, latency)
    if answers.empty:
        return False
    families = list(dict.fromkeys([*answers["family"], *([] if server.empty else server["family"])]))
    palette = dict(zip(families, sns.color_palette(n_colors=len(families))))
    left, right = figure.subplots(1, 2)
    panels = ((left, answers, "answer_bytes", "bytes the client receives per segment"),
              (right, server, "server_s", "server seconds per segment (fhe)"))
    for ax, rows, anchor, label in panels:
        if not rows.empty:
            for family, measured in rows.groupby("family", sort=False):
                measured = measured.sort_values("tracks")
                ax.plot(measured["tracks"], measured["value"], marker="o", color=palette[family], label=family)
            estimate = _extrapolated(rows)
            for family, line in (estimate.groupby("family", sort=False) if not estimate.empty else ()):
                ax.plot(line["tracks"], line["value"], linestyle="--", marker="o", markerfacecolor="none",
                        color=palette[family], label=f"{family} (estimate)")
        else:
            ax.set_title("no server stage timed in fhe mode", fontsize="small")
        ax.plot([PNNS["tracks"]], [PNNS[anchor]], marker="*", markersize=12, linestyle="none",
                color="black", label="Apple PNNS (BFV, 128-dim)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("library tracks")
        ax.set_ylabel(label)
    handles = {name: handle for ax in (left, right) for handle, name in zip(*ax.get_legend_handles_labels())}
    figure.legend(handles.values(), handles.keys(), fontsize="small", loc="outside lower center", ncols=2)
    return True


def _scaling(figure, results: pd.DataFrame, latency: pd.DataFrame) -> Drawn:
    """fhe-sim (else fp32) top-1 and the encrypted (else clear) query latency per family against
    the library size, on log axes; only for runs that measured a family at several library sizes."""
    results, latency = results.rename(columns={"n_tracks": "tracks"}), latency.rename(columns={"n_tracks": "tracks"})
    accuracy = results[(results["metric"] == "top1") & (results["stage"] == "")]
    if accuracy.empty:
        return False
    if accuracy.groupby("family")["tracks"].nunique().max() < 2:
        return "Not drawn: the run measured each family at one library size; a suite with library_sizes sweeps it."
    accuracy = accuracy[accuracy["mode"] == accuracy.groupby("family")["mode"].transform(
        lambda m: "fhe-sim" if (m == "fhe-sim").any() else "fp32")]
    timing = latency[(latency["stage"] == "query") & (latency["metric"] == "median_s")]
    timing = timing[timing["mode"] == timing.groupby("family")["mode"].transform(
        lambda m: "fhe" if (m == "fhe").any() else "fp32")]
    families = list(dict.fromkeys(results["family"]))
    palette = dict(zip(families, sns.color_palette(n_colors=len(families))))
    left, right = figure.subplots(1, 2)
    sns.lineplot(data=accuracy, x="tracks", y="value", hue="family", style="level", marker="o", ax=left, errorbar=None,
                 palette=palette)
    left.set_xscale("log")
    left.set_ylim(0, 1.02)
    left.set_ylabel("top-1 (fhe-sim; clear families: fp32)")
    handles, labels = left.get_legend_handles_labels()
    left.get_legend().remove()
    if not timing.empty:
        sns.lineplot(data=timing, x="tracks", y="value", hue="family", marker="o", ax=right, errorbar=None,
                     palette=palette, legend=False)
        right.set_yscale("log")
    right.set_xscale("log")
    right.set_ylabel("s / query (fhe; clear families: fp32)")
    for ax in (left, right):
        ax.set_xlabel("library tracks")
    figure.legend(handles, labels, fontsize="small", loc="outside right upper")
    return True
