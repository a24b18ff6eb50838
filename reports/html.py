"""``report.html``: one self-contained page (figures embedded as PNG data), no network needed.

Sections: provenance, the library's warnings (skipped files, silent tracks, identical files),
summary table (every family side by side), the Pareto figure (fhe-sim
top-1 against encrypted seconds per query, one point per family, bit width and rounding),
accuracy against augmentation level per mode, top-1 against recording gain and against query
length, bit-width curves (accuracy and encrypted latency on two axes), latency per stage
(stacked bars), key and ciphertext sizes, open-set rejection, cost and accuracy against library
size (log axes), and the regression verdict when a baseline was given.
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
from reports.tables import (ESTIMATE_MODE, MODE_ORDER, at_levels, encrypted_query_seconds, family_points, glossary,
                            headline, labelled, mode_comparison, open_set, privacy_ledger, row_order)

FIGURE_IDS = ("pareto", "accuracy-by-level", "gain-sweep", "length-sweep", "length-cost", "bit-width-sweep",
              "latency-by-stage", "sizes", "answer-bytes", "open-set", "scaling")
SIZE_METRICS = ("evaluation_key_bytes", "input_ciphertext_bytes", "output_ciphertext_bytes")
STACKED_STAGES = ("features", "first-stage", "first-stage:encrypt", "first-stage:server", "first-stage:decrypt",
                  "second-stage", "second-stage:encrypt", "second-stage:server", "second-stage:decrypt",
                  "query", "head:encrypt", "head:server", "head:decrypt")
SPLIT_STAGES = ("first-stage", "second-stage", "query")  # in fhe mode, shown as encrypt / server / decrypt
MODE_COLOURS = dict(zip(MODE_ORDER, sns.color_palette(n_colors=len(MODE_ORDER))))

TEMPLATE = jinja2.Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ppazam report {{ run.run_id }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5rem 0; } img { max-width: 100%; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } code { font-size: 0.85rem; }
</style></head><body>
<h1>ppazam: {{ suite }} suite</h1>
<p>Run <code>{{ run.run_id }}</code>, commit <code>{{ run.git_commit }}</code>, library <code>{{ run.library }}</code>,
started {{ run.timestamp }}{% if run.command %}, command <code>{{ run.command }}</code>{% endif %}. {{ machine }}</p>
{% for name, warnings in (run.library_warnings or {}).items() %}<p class="fail">Library <code>{{ name | e }}</code> as opened:
{{ warnings | length }} warning(s) (skipped files are left out of every figure; silent tracks and identical files cap top-1).</p>
<ul>{% for line in warnings %}<li>{{ line | e }}</li>{% endfor %}</ul>{% endfor %}
<h2>At a glance</h2>
<p>Each family in its most private mode: top-1 per level, its spread over the gain sweep, top-1
at the shortest and longest query, and seconds per truly encrypted query (~: estimated).</p>
{{ glance }}
<h2>Summary</h2>
{{ summary }}
{% if open_set %}<h2>Open-set rejection</h2>
<p>ROC-AUC / PR-AUC of the confidence for library vs distractor queries, and top-1 at 1% false accepts,
interpolated between the two fixed thresholds that bracket 1%; in brackets the false-accept rate the
fixed threshold at or below 1% achieved on the distractor queries.</p>
{{ open_set }}{% endif %}
{% if ledger %}<h2 id="privacy">Privacy ledger</h2>
<p>Per query segment, for each family's clear design (the query is sent in the clear) and its encrypted
design (fhe-disable and fhe-sim evaluate it): bits about the song the server learns from which circuits
a query calls, encrypted calls, scores the client decrypts, ciphertext kilobytes up and down,
evaluation-key megabytes uploaded once, the security level of the FHE parameters, and the probability
that at least one table lookup of a query is off by a quantization step. Definitions: docs/privacy-and-serving.md.</p>
{{ ledger }}{% endif %}
{% if verdict %}
<h2 id="verdict">Regression check</h2>
{% if verdict.error %}<p class="fail">NOT COMPARED: {{ verdict.error }}</p>{% else %}
<p class="{{ 'pass' if verdict.passed else 'fail' }}">{{ 'PASSED' if verdict.passed else 'REGRESSED' }}:
{{ verdict.compared }} paired tests against <code>{{ verdict.baseline }}</code> on {{ verdict.paired_queries }}
queries matched by key (max accuracy drop {{ verdict.tolerance.max_accuracy_drop }}, max latency growth
{{ verdict.tolerance.max_latency_growth }}, significance {{ verdict.tolerance.significance }} Holm-adjusted);
{{ verdict.regressions | length }} regressed, {{ verdict.untested }} tests could not reach significance (no discordant query, too few rounds) and were not counted.</p>{% endif %}
{% if verdict.regressions %}<table><tr><th>condition</th><th>metric</th><th>baseline</th><th>run</th><th>why</th></tr>
{% for r in verdict.regressions %}<tr><td>{{ r.condition }}</td><td>{{ r.metric }}</td><td>{{ '%.4g' % r.baseline }}</td>
<td>{{ '%.4g' % r.current }}</td><td>{{ r.reason }}</td></tr>{% endfor %}</table>{% endif %}
{% endif %}
{% for figure in figures %}
<figure id="{{ figure.id }}"><h2>{{ figure.title }}</h2>
{% if figure.png %}<img alt="{{ figure.title }}" src="data:image/png;base64,{{ figure.png }}">
{% else %}<p>No rows for this figure in this run.</p>{% endif %}</figure>
{% endfor %}
<h2>All accuracy rows</h2>
{{ details }}
<h2 id="metrics">Metrics</h2>
<p>Every metric of this run: its unit, which way is better, and what the interval columns of its rows hold
(wilson: 95% Wilson interval over n queries; t: 95% t-interval over n episodes; spread: minimum and maximum
of the n observations of a median).</p>
{{ metrics }}
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
        {"id": "pareto", "title": "Accuracy against encrypted cost: fhe-sim top-1 per level against seconds per "
                                  "truly encrypted query (filled: measured, hollow: Concrete's cost estimate)",
         "png": _png(_pareto, results, latency)},
        {"id": "accuracy-by-level", "title": "Top-1 accuracy by augmentation level and mode",
         "png": _png(_accuracy_by_level, results)},
        {"id": "gain-sweep", "title": "Top-1 against recording gain (clean queries)",
         "png": _png(lambda f, r: _sweep(f, r, "gain_db", "recording gain (dB)"), results)},
        {"id": "length-sweep", "title": "Top-1 against query length (phone-in-room queries)",
         "png": _png(lambda f, r: _sweep(f, r, "length_s", "query length (s)", query_s), results)},
        {"id": "length-cost", "title": "Encrypted seconds per query against query length: segments per query "
                                       "x the seconds of a one-segment encrypted query (measured, else estimated)",
         "png": _png(lambda f, r, l: _length_cost(f, r, l, query_s), results, latency)},
        {"id": "bit-width-sweep", "title": "Bit-width sweep: fhe-sim top-1 and encrypted latency",
         "png": _png(_bit_width_sweep, results, latency)},
        {"id": "latency-by-stage", "title": "Latency per stage (median of rounds)",
         "png": _png(_latency_by_stage, latency)},
        {"id": "sizes", "title": "Key and ciphertext sizes per circuit", "png": _png(_sizes, results)},
        {"id": "answer-bytes", "title": "Answer bytes (privacy ledger) and server seconds per query segment against "
                                        "library size, per encrypted design, with Apple's PNNS point (star); dashed, "
                                        "hollow: extrapolated past the largest measured size (an estimate)",
         "png": _png(_answer_bytes, results, latency)},
        {"id": "open-set", "title": "Open-set rejection: ROC-AUC of the confidence, library vs distractor queries",
         "png": _png(_open_set, results)},
        {"id": "scaling", "title": "Cost and accuracy against library size",
         "png": _png(_scaling, results, latency)},
    ]
    return TEMPLATE.render(run=run, suite=run.get("suite", {}).get("name", "?"), machine=_machine(run),
                           verdict=verdict, figures=figures,
                           glance=glance.to_html(border=0) if not glance.empty else "<p>No accuracy rows.</p>",
                           open_set=None if rejection.empty else rejection.to_html(border=0),
                           ledger=None if privacy.empty else privacy.to_html(border=0),
                           summary=summary.to_html(border=0) if not summary.empty else "<p>No accuracy rows.</p>",
                           details=details.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}"),
                           metrics=glossary(results, latency).to_html(border=0))


def _machine(run: dict) -> str:
    env = run.get("environment", {})
    packages = env.get("packages", {})
    versions = ", ".join(f"{name} {packages[name]}" for name in ("concrete-ml", "torch", "brevitas") if packages.get(name))
    return (f"Machine: {env.get('processor', '?')}, {env.get('cpu_count', '?')} cores, Python {env.get('python', '?')}"
            + (f"; {versions}." if versions else "."))


def _png(draw, *frames: pd.DataFrame) -> str | None:
    """Run ``draw`` on a fresh figure; the PNG as base64, or None when it had nothing to draw."""
    figure = Figure(figsize=(9, 4.5))
    if not draw(figure, *frames):
        return None
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _accuracy_by_level(figure, results: pd.DataFrame) -> bool:
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
        ax.set_xticks(range(len(levels)), levels, fontsize="small", rotation=40, ha="right")
    return True


def _family_panels(figure, rows: pd.DataFrame) -> list:
    """One panel per family of ``rows`` (sharing the top-1 axis, with the modes' legend on the
    last one); the (axis, the family's rows) pairs to draw into."""
    families = list(dict.fromkeys(rows["family"]))
    axes = np.atleast_1d(figure.subplots(1, len(families), sharey=True))
    for ax, family in zip(axes, families):
        ax.set_title(family, fontsize="small")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("top-1 (95% Wilson CI)")
    return [(ax, rows[rows["family"] == family]) for ax, family in zip(axes, families)]


def _top1_errorbar(ax, x, part: pd.DataFrame, mode: str) -> None:
    """``part``'s top-1 at ``x`` with its 95% Wilson interval, in the mode's colour; the legend
    of the modes drawn so far goes to the figure's last panel."""
    below = (part["value"] - part["ci_low"]).fillna(0).clip(lower=0).to_numpy()
    above = (part["ci_high"] - part["value"]).fillna(0).clip(lower=0).to_numpy()
    ax.errorbar(x, part["value"].to_numpy(), yerr=np.vstack([below, above]), marker="o", capsize=3, label=mode,
                color=MODE_COLOURS[mode])
    axes = ax.figure.axes
    handles = {name: handle for panel in axes for handle, name in zip(*panel.get_legend_handles_labels())}
    axes[-1].legend(handles.values(), handles.keys(), title="mode", fontsize="small")


def _sweep(figure, results: pd.DataFrame, axis: str, label: str, query_s: float | None = None) -> bool:
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
        ax.set_xlabel(label, fontsize="small")
    return True


def _length_cost(figure, results: pd.DataFrame, latency: pd.DataFrame, query_s: float) -> bool:
    """Per encrypted family (its first point): the length sweep's segments per query times the
    seconds of one encrypted one-segment query at the levels; log y axis."""
    segments = family_points(results)
    segments = segments[segments["metric"] == "segments_per_query"].drop_duplicates(["family", "level"]).copy()
    segments["x"] = [QueryCondition.parse(level).length_s for level in segments["level"]]
    segments.loc[(segments["level"] == Level.PHONE_IN_ROOM.value), "x"] = query_s
    segments = segments.dropna(subset=["x"])
    ax = None
    for family, part in segments.groupby("family", sort=False):
        seconds = encrypted_query_seconds(results, latency, family)
        if seconds is None or part["x"].nunique() < 2:
            continue
        ax = ax or figure.add_subplot()
        part = part.sort_values("x")
        ax.plot(part["x"], part["value"] * seconds[0], marker="o" if seconds[1] else "s",
                label=f"{family} ({'measured' if seconds[1] else 'estimated'})")
    if ax is None:
        return False
    ax.set_yscale("log")
    ax.set_xlabel("query length (s)")
    ax.set_ylabel("encrypted seconds per query (log scale)")
    ax.legend(fontsize="small")
    return True


def _pareto(figure, results: pd.DataFrame, latency: pd.DataFrame) -> bool:
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
    points["label"] = [f"{f} w{b} r{r}" if f == points["family"].iloc[0] else f
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
    handles = [ax.scatter([], [], color=colours[label], label=label) for label in labels]
    handles += [ax.scatter([], [], marker=markers.get(level, "o"), color="grey", label=level) for level in levels]
    ax.legend(handles=handles, fontsize="x-small", bbox_to_anchor=(1.01, 1), loc="upper left")
    return True


def _bit_width_sweep(figure, results: pd.DataFrame, latency: pd.DataFrame) -> bool:
    """The family swept over bit widths (the two-stage CNN; the run's first family)."""
    if results.empty:
        return False
    family = results["family"].iloc[0]
    results, latency = results[results["family"] == family], latency[latency["family"] == family]
    accuracy = results[(results["mode"] == "fhe-sim") & (results["metric"] == "top1") & (results["stage"] == "")]
    if accuracy.empty:
        return False
    ax = figure.add_subplot()
    sns.lineplot(data=accuracy, x="bit_width", y="value", hue="level", style="rounding_bits", marker="o", ax=ax,
                 errorbar=None)
    ax.set_ylabel("fhe-sim top-1")
    ax.set_ylim(0, 1.02)
    twin = ax.twinx()
    estimated = results[(results["mode"] == ESTIMATE_MODE) & (results["metric"] == "server_s")
                        & (results["stage"] == "query")]
    estimated = estimated.groupby("bit_width")["value"].median()
    measured = latency[(latency["mode"] == "fhe") & (latency["stage"] == "query") & (latency["metric"] == "median_s")]
    if not estimated.empty:
        twin.plot(estimated.index, estimated.values, "k--", marker="s", label="estimated server s / query")
    if not measured.empty:
        by_bits = measured.groupby("bit_width")["value"].median()
        twin.plot(by_bits.index, by_bits.values, "k-", marker="D", label="measured FHE s / query")
    twin.set_ylabel("seconds")
    twin.legend(loc="lower right")
    ax.set_xlabel("weight and activation bits")
    return True


def _latency_by_stage(figure, latency: pd.DataFrame) -> bool:
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
    ax = figure.add_subplot()
    (table.div(totals, axis=0)).plot.barh(stacked=True, ax=ax, colormap="tab20")
    ax.set_yticks(range(len(table)), [f"{mode} ({totals[mode]:.3g} s)" for mode in table.index])
    ax.set_xlabel("share of the summed stage medians (total in brackets)")
    ax.set_ylabel("")
    ax.legend(title="stage", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    return True


def _sizes(figure, results: pd.DataFrame) -> bool:
    rows = results[results["metric"].isin(SIZE_METRICS)]
    if rows.empty:
        return False
    # one bar per family, bit width, rounding and circuit: families name their circuits alike ("head")
    point = ["family", "bit_width", "rounding_bits", "stage"]
    several = rows.drop_duplicates(["bit_width", "rounding_bits"]).shape[0] > 1
    circuit = [f"{f} w{w:g}" + (f"r{r:g}" if r else "") + f" {s}" if several else f"{f} {s}"
               for f, w, r, s in rows[point].itertuples(index=False)]
    ax = figure.add_subplot()
    sns.barplot(data=rows.assign(MB=rows["value"] / 1e6, circuit=circuit).drop_duplicates(["circuit", "metric"]),
                x="circuit", y="MB", hue="metric", ax=ax, errorbar=None)
    ax.set_yscale("log")
    ax.set_xlabel("")
    ax.set_ylabel("MB (log scale)")
    ax.tick_params(axis="x", labelrotation=30)
    return True


def _open_set(figure, results: pd.DataFrame) -> bool:
    rows = labelled(family_points(results))
    rows = rows[rows["metric"] == "roc_auc"]
    if rows.empty:
        return False
    ax = figure.add_subplot()
    sns.barplot(data=rows, x="row", y="value", hue="level", order=row_order(rows), ax=ax, errorbar=None)
    ax.set_xlabel("")
    ax.set_ylabel("ROC-AUC")
    ax.set_ylim(0, 1.02)
    ax.tick_params(axis="x", labelrotation=30)
    return True


# Apple's private nearest-neighbour search (swift-homomorphic-encryption, PNNS; BFV, 4,096 rows of
# 128 dimensions): the design point a packed design must reach (docs/design-notes.md)
PNNS_ANCHOR = {"tracks": 4096, "answer_bytes": 52.1e3, "server_s": 0.012}
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


def _answer_bytes(figure, results: pd.DataFrame, latency: pd.DataFrame) -> bool:
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
        ax.plot([PNNS_ANCHOR["tracks"]], [PNNS_ANCHOR[anchor]], marker="*", markersize=12, linestyle="none",
                color="black", label="Apple PNNS (BFV, 128-dim)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("library tracks")
        ax.set_ylabel(label)
        ax.legend(fontsize="x-small")
    return True


def _scaling(figure, results: pd.DataFrame, latency: pd.DataFrame) -> bool:
    """fhe-sim (else fp32) top-1 and the encrypted (else clear) query latency per family against
    the library size, on log axes; only for runs over several library sizes."""
    if results["n_tracks"].nunique() < 2:
        return False
    results, latency = results.rename(columns={"n_tracks": "tracks"}), latency.rename(columns={"n_tracks": "tracks"})
    accuracy = results[(results["metric"] == "top1") & (results["stage"] == "")]
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
    left.legend(fontsize="x-small")
    if not timing.empty:
        sns.lineplot(data=timing, x="tracks", y="value", hue="family", marker="o", ax=right, errorbar=None,
                     palette=palette)
        right.set_yscale("log")
        right.legend(fontsize="x-small")
    right.set_xscale("log")
    right.set_ylabel("s / query (fhe; clear families: fp32)")
    for ax in (left, right):
        ax.set_xlabel("library tracks")
    return True
