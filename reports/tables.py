"""Paper tables in Markdown and LaTeX (booktabs), built from the tidy rows alone.

* ``original-layout``: the original system's layout, rows Top-1 / Top-3, columns cluster x
  level (the first column of each level is all clusters together), one table per mode;
* ``mode-comparison``: rows modes (of every family, side by side), columns levels, cells
  ``top-1 / top-3`` and the median latency of one query in that mode;
* ``open-set``: rows modes of every family, columns levels, cells ROC-AUC / PR-AUC of the
  confidence for library vs distractor queries and the top-1 at 1% false accepts;
* ``condition-sweeps``: rows modes of every family, columns the gain and length sweeps'
  conditions (``clean@-20dB``, ``phone-in-room@1s``, ...), cells top-1;
* ``enrollment``: rows mode and shots of every family that enrolls tracks after training,
  columns levels, cells top-1 on the tracks seen in training / on the enrolled ones, and the
  n-way k-shot episodes' top-1 among the enrolled tracks;
* ``metrics``: the metric table (:mod:`ppazam_core.results.metrics`) of the metrics the run holds:
  unit, which way is better, the interval its rows carry, what it measures;
* ``headline``: one row per family, the one-screen summary the bench prints: top-1 per level in
  its most private mode, its spread over the gain sweep, top-1 at the shortest and longest
  query, and the seconds of one truly encrypted query.

The level tables hold the suite's levels; its sweeps (conditions named ``LEVEL@...``) have a
table and figures of their own. :func:`paper_tables` names them all: ``tables/`` and the results
pages (:mod:`reports.pages`) show the same tables; :func:`to_terminal` splits one to a terminal's
width.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ppazam_core.queries.augment import Level
from ppazam_core.queries.conditions import QueryCondition
from ppazam_core.results.metrics import metric
from ppazam_core.recognition import Mode
from ppazam_core.store import atomic_write_text

CLUSTER_STAGE = "cluster:"
MODE_ORDER = tuple(m.value for m in Mode)
ESTIMATE_MODE = "fhe-estimate"  # rows of Concrete's cost model, calibrated on the run's machine: never measured


def at_levels(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of the suite's levels, not of its gain or length sweeps (conditions ``LEVEL@...``)."""
    return rows[~rows["level"].astype(str).str.contains("@")]


def original_layout(results: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Rows Top-1 / Top-3, columns (level, cluster) for one mode of the first suite point."""
    rows = at_levels(first_point(results))
    rows = rows[(rows["mode"] == mode) & rows["metric"].isin(["top1", "top3"])]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(cluster=rows["stage"].map(lambda s: s.removeprefix(CLUSTER_STAGE) if s else "all"))
    table = rows.pivot_table(index="metric", columns=["level", "cluster"], values="value", aggfunc="first")
    clusters = sorted({c for c in rows["cluster"] if c != "all"}, key=lambda c: int(c) if c.isdigit() else c)
    order = [(level, cluster) for level in _level_order(rows) for cluster in ["all", *clusters]
             if (level, cluster) in table.columns]
    table = table[order]
    table.index = table.index.map({"top1": "Top-1", "top3": "Top-3"})
    return table.applymap(lambda v: f"{v:.2f}")


def mode_comparison(results: pd.DataFrame, latency: pd.DataFrame) -> pd.DataFrame:
    """Rows modes (``family mode`` when the run holds several families), columns levels:
    ``top-1 / top-3`` and the median seconds of one query, at each family's first point."""
    rows = labelled(at_levels(family_points(results)))
    rows = rows[(rows["stage"] == "") & rows["metric"].isin(["top1", "top3"])]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index="row", columns=["level", "metric"], values="value", aggfunc="first")
    n = rows[rows["metric"] == "top1"].pivot_table(index="row", columns="level", values="n", aggfunc="first")
    query = labelled(family_points(latency, results))
    seconds = query[(query["stage"] == "query") & (query["metric"] == "median_s")].groupby("row")["value"].median()
    cells = {}
    for level in _level_order(rows):
        cells[level] = {row: " / ".join(f"{table.loc[row, (level, metric)]:.2f}" for metric in ("top1", "top3")
                                        if (level, metric) in table.columns and pd.notna(table.loc[row, (level, metric)]))
                        + (f" (n={int(n.loc[row, level])})" if pd.notna(n.loc[row, level]) else "-")
                        for row in table.index}
    frame = pd.DataFrame(cells)
    frame["latency / query"] = [f"{seconds[r]:.3g} s" if r in seconds else "-" for r in frame.index]
    return frame.loc[row_order(rows)]


def open_set(results: pd.DataFrame) -> pd.DataFrame:
    """Rows modes of every family, columns levels: ``ROC-AUC / PR-AUC, top-1 at the target
    false-accept rate (interpolated) [the rate a fixed threshold achieved]``."""
    rows = labelled(family_points(results))
    rows = rows[rows["metric"].isin(["roc_auc", "pr_auc", "top1_at_far", "false_accepts"])]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index="row", columns=["level", "metric"], values="value", aggfunc="first")
    cells = {level: {row: f"{table.loc[row, (level, 'roc_auc')]:.2f} / {table.loc[row, (level, 'pr_auc')]:.2f}, "
                          f"{table.loc[row, (level, 'top1_at_far')]:.2f} "
                          f"[{table.loc[row, (level, 'false_accepts')]:.1%}]"
                     if pd.notna(table.loc[row, (level, "roc_auc")]) else "-" for row in table.index}
             for level in _level_order(rows)}
    return pd.DataFrame(cells).loc[row_order(rows)]


def enrollment(results: pd.DataFrame) -> pd.DataFrame:
    """Rows ``family mode, k shots`` (``whole songs`` for the families that enroll a song whole),
    columns levels: ``seen / enrolled`` top-1, then ``n-way top-1`` of the episodes (see
    ``bench/test_enrollment.py``)."""
    rows = results[results["stage"].astype(str).str.startswith("enroll:")]
    if rows.empty:
        return pd.DataFrame()
    how = rows["stage"].str.extract(r"(?:(\d+)-shot|(song))$")
    rows = rows.assign(enrolled_as=[f"{k} shots" if pd.notna(k) else "whole songs" for k in how[0]],
                       ways=rows["stage"].str.extract(r"^enroll:(\d+)-way")[0])
    rows = labelled(rows).assign(row=lambda r: [f"{label}, {k}" for label, k in zip(r["row"], r["enrolled_as"])])
    cells: dict[str, dict[str, str]] = {}
    for (label, level), group in rows.groupby(["row", "level"], sort=False):
        value = {metric: group.loc[group["metric"] == metric, "value"] for metric in ("top1_seen", "top1_enrolled")}
        text = " / ".join(f"{value[m].iloc[0]:.2f}" if len(value[m]) else "-" for m in value)
        episodes = group[group["metric"] == "episode_top1"]
        text += "".join(f", {int(w)}-way {v:.2f}" for w, v in zip(episodes["ways"], episodes["value"]))
        cells.setdefault(level, {})[label] = text
    table = pd.DataFrame(cells).reindex(row_order(rows)).fillna("-")
    return table[sorted(table.columns, key=_level_rank)]  # stable: custom levels keep their run order


LEDGER_COLUMNS = {"server_learns_bits": ("server learns (bits)", "{:.2f}".format),
                  "server_calls": ("calls", "{:.2f}".format),
                  "client_scores": ("scores to client", "{:.0f}".format),
                  "bytes_up": ("up (KB)", lambda v: f"{v / 1e3:.1f}"),
                  "bytes_down": ("down (KB)", lambda v: f"{v / 1e3:.1f}"),
                  "key_bytes_up": ("eval. keys (MB)", lambda v: f"{v / 1e6:.3g}"),
                  "security_bits": ("security (bits)", "{:.0f}".format),
                  "p_error_per_query": ("P(off lookup) / query", "{:.3g}".format),
                  "sizes_measured": ("sizes", lambda v: "measured" if v else "Concrete's")}


def privacy_ledger(results: pd.DataFrame) -> pd.DataFrame:
    """Rows each family's clear and encrypted designs (its first point; ``fhe-disable`` and
    ``fhe-sim`` evaluate the ``fhe`` design and are folded into it), columns the ledger of
    :mod:`ppazam_core.results.privacy`, per query segment."""
    rows = family_points(results)
    rows = rows[(rows["stage"] == "ledger") & rows["metric"].isin(list(LEDGER_COLUMNS))]
    if rows.empty:
        return pd.DataFrame()
    encrypted = rows["mode"].isin(["fhe", "fhe-sim", "fhe-disable"])
    rows = rows.assign(design=np.where(encrypted, "encrypted", "clear"))
    rows = rows[~rows.duplicated(["family", "design", "metric"])]
    table = rows.pivot_table(index=["family", "design"], columns="metric", values="value", aggfunc="first")
    families = list(dict.fromkeys(rows["family"]))
    order = sorted(dict.fromkeys(zip(rows["family"], rows["design"])), key=lambda fd: (families.index(fd[0]), fd[1]))
    cells = {label: [fmt(v) if pd.notna(v) else "-" for v in table.loc[order, metric]]
             for metric, (label, fmt) in LEDGER_COLUMNS.items() if metric in table.columns}
    return pd.DataFrame(cells, index=[f"{family} ({design})" for family, design in order])


def condition_sweeps(results: pd.DataFrame) -> pd.DataFrame:
    """Rows modes of every family, columns the sweep conditions in run order, cells top-1."""
    rows = labelled(family_points(results))
    rows = rows[(rows["stage"] == "") & (rows["metric"] == "top1") & rows["level"].astype(str).str.contains("@")]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index="row", columns="level", values="value", aggfunc="first")
    table = table[list(dict.fromkeys(rows["level"]))].loc[row_order(rows)]
    return table.applymap(lambda v: "-" if pd.isna(v) else f"{v:.2f}")


def headline(results: pd.DataFrame, latency: pd.DataFrame) -> pd.DataFrame:
    """One row per family (its first point): the mode shown (``fhe-sim`` where the family has
    it, else ``fp32``), top-1 per level, the spread (max - min, points) of top-1 over the gain
    sweep, top-1 at the shortest and the longest query of the length sweep, and the seconds of
    one truly encrypted query at the levels (measured median, else ``~`` Concrete's estimate)."""
    rows = family_points(results)
    rows = rows[(rows["stage"] == "") & (rows["metric"] == "top1")]
    if rows.empty:
        return pd.DataFrame()
    lines = {}
    for family, part in rows.groupby("family", sort=False):
        mode = "fhe-sim" if (part["mode"] == "fhe-sim").any() else "fp32"
        part = part[part["mode"] == mode].drop_duplicates("level").set_index("level")["value"]
        levels = sorted(at_levels(part.to_frame().reset_index())["level"], key=_level_rank)
        line = {"mode": mode, **{level: f"{part[level]:.2f}" for level in levels}}
        gains = [v for level, v in part.items() if QueryCondition.parse(level).gain_db is not None]
        if gains:
            line["gain spread"] = f"{100 * (max(gains) - min(gains)):.0f} pts"
        lengths = sorted((QueryCondition.parse(level).length_s, v) for level, v in part.items()
                         if QueryCondition.parse(level).length_s is not None)
        if lengths:
            line[f"{lengths[0][0]:g} s"], line[f"{lengths[-1][0]:g} s"] = f"{lengths[0][1]:.2f}", f"{lengths[-1][1]:.2f}"
        seconds = encrypted_query_seconds(results, latency, family)
        line["s / encrypted query"] = "-" if seconds is None else f"{'' if seconds[1] else '~'}{seconds[0]:.3g}"
        lines[family] = line
    return pd.DataFrame.from_dict(lines, orient="index").fillna("-")  # columns in first-seen order


def encrypted_query_seconds(results: pd.DataFrame, latency: pd.DataFrame, family: str) -> tuple[float, bool] | None:
    """Seconds of one truly encrypted one-segment query of ``family`` (its first point) and
    whether they were measured (the median over the levels) rather than estimated from
    Concrete's cost model; ``None`` for a family with no encrypted mode."""
    measured = at_levels(family_points(latency, results))
    measured = measured[(measured["family"] == family) & (measured["mode"] == "fhe") & (measured["stage"] == "query")
                        & (measured["metric"] == "median_s")]
    if not measured.empty:
        return float(measured["value"].median()), True
    estimated = family_points(results)
    estimated = estimated[(estimated["family"] == family) & (estimated["mode"] == ESTIMATE_MODE)
                          & (estimated["metric"] == "server_s") & (estimated["stage"] == "query")]
    return (float(estimated["value"].median()), False) if not estimated.empty else None


def glossary(results: pd.DataFrame, latency: pd.DataFrame) -> pd.DataFrame:
    """Rows the metrics of the run in the order they appear (qualifiers like ``train_s:embedding``
    folded into their metric), columns unit, better (``higher``/``lower``/empty), interval and
    description from :mod:`ppazam_core.results.metrics`; a metric written by a plug-in that is not
    installed here is listed as not registered."""
    rows = {}
    for name in pd.concat([results["metric"], latency["metric"]]).astype(str):
        base = name.split(":", 1)[0]
        if base in rows:
            continue
        try:
            known = metric(base)
            rows[base] = {"unit": known.unit, "better": known.direction, "interval": known.interval.value,
                          "description": known.description}
        except KeyError:
            rows[base] = {"unit": "?", "better": "?", "interval": "?", "description": "(not registered here)"}
    return pd.DataFrame.from_dict(rows, orient="index", columns=["unit", "better", "interval", "description"])


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table, its cells as formatted (``1.00`` stays ``1.00``)."""
    flat = _flatten(table)
    return _markdown(flat) if not flat.empty else "(no rows)"


def _markdown(flat: pd.DataFrame) -> str:
    """``flat`` by tabulate, its cells as they are; columns of figures right-aligned, of words left."""
    figures = [flat[c].astype(str).str.fullmatch(r"[~<>]?-?[\d.].*|-").all() for c in flat.columns]
    return flat.to_markdown(disable_numparse=True, colalign=("left", *("right" if f else "left" for f in figures)))


def to_latex(table: pd.DataFrame, caption: str) -> str:
    """A booktabs ``tabular`` inside a ``table`` float."""
    flat = _flatten(table)
    if flat.empty:
        return f"% {caption}: no rows\n"
    header = " & ".join([""] + [_tex(c) for c in flat.columns]) + r" \\"
    body = [" & ".join([_tex(i)] + [_tex(v) for v in row]) + r" \\" for i, row in zip(flat.index, flat.values)]
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}",
                      rf"\begin{{tabular}}{{l{'r' * len(flat.columns)}}}", r"\toprule", header, r"\midrule",
                      *body, r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def paper_tables(results: pd.DataFrame, latency: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, str]]:
    """Every table of a run by file name, each with its caption: what ``tables/`` holds and
    what a results page (:mod:`reports.pages`) shows."""
    tables = {"mode-comparison": (mode_comparison(results, latency), "Top-1 / top-3 and latency per mode"),
              "open-set": (open_set(results), "Open-set rejection: ROC-AUC / PR-AUC, top-1 at 1% false accepts "
                                              "(interpolated) [the false-accept rate a fixed threshold achieved]"),
              "condition-sweeps": (condition_sweeps(results), "Top-1 against recording gain and query length"),
              "privacy-ledger": (privacy_ledger(results), "Privacy ledger per query segment: what the server learns "
                                                          "about the song, what the client receives, bytes, keys, "
                                                          "security level and error probability"),
              "enrollment": (enrollment(results), "Tracks enrolled after training from k clean segments: top-1 "
                                                  "on tracks seen in training / on enrolled tracks, and n-way "
                                                  "k-shot episodes among the enrolled tracks"),
              "metrics": (glossary(results, latency), "Metrics of this run: unit, which way is better, the "
                                                      "interval its rows carry"),
              "headline": (headline(results, latency), "Each family in its most private mode: top-1 per level, "
                                                       "over gain and length, and encrypted seconds per query")}
    for mode in [m for m in MODE_ORDER if m in set(results["mode"])]:
        tables[f"original-layout-{mode}"] = (original_layout(results, mode),
                                             f"Top-1 and top-3 per cluster and level ({mode})")
    return tables


def write_tables(results: pd.DataFrame, latency: pd.DataFrame, folder: Path) -> list[Path]:
    """Write every table of :func:`paper_tables` as ``.md`` and ``.tex`` into ``folder``; returns the files."""
    written = []
    for name, (table, caption) in paper_tables(results, latency).items():
        for suffix, text in ((".md", f"# {caption}\n\n{to_markdown(table)}\n"), (".tex", to_latex(table, caption))):
            path = folder / f"{name}{suffix}"
            atomic_write_text(path, text)
            written.append(path)
    return written


def to_terminal(table: pd.DataFrame, width: int = 80) -> str:
    """``table`` as Markdown for a terminal ``width`` columns wide: its columns split over
    tables printed one below the other, each repeating the row labels and holding as many
    columns as fit (a part whose labels and one column are wider stays as it is)."""
    flat = _flatten(table)
    if flat.empty:
        return "(no rows)"
    parts, columns = [], []
    for column in flat.columns:
        if columns and _widest(_markdown(flat[[*columns, column]])) > width:
            parts.append(_markdown(flat[columns]))
            columns = []
        columns.append(column)
    parts.append(_markdown(flat[columns]))
    return "\n\n".join(parts)


def _widest(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def machine(run: dict) -> str:
    """The machine of a run's ``run.json`` in one line: CPU model and architecture, cores,
    Python and the versions of the packages float arithmetic depends on most."""
    env = run.get("environment", {})
    packages = env.get("packages", {})
    versions = ", ".join(f"{name} {packages[name]}" for name in ("concrete-ml", "torch", "brevitas") if packages.get(name))
    cpu = " ".join(part for part in (env.get("cpu"), f"({env['processor']})" if env.get("processor") else None) if part)
    return (f"{cpu or '?'}, {env.get('cpu_count', '?')} cores, Python {env.get('python', '?')}"
            + (f"; {versions}" if versions else ""))


def first_point(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of the suite's first (family, bit width, rounding) point: the tables' subject."""
    if results.empty:
        return results
    first = results.iloc[0]
    return results[(results["family"] == first["family"]) & (results["bit_width"] == first["bit_width"])
                   & (results["rounding_bits"] == first["rounding_bits"])]


def family_points(rows: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of each family's first (bit width, rounding, library and its size) point in
    ``reference`` (default: ``rows`` itself): the families side by side."""
    reference = rows if reference is None else reference
    if rows.empty or reference.empty:
        return rows.iloc[:0]
    point = ["family", "bit_width", "rounding_bits", "library", "n_tracks"]
    return rows.merge(reference.drop_duplicates("family")[point], on=point)


def labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a ``row`` label: the mode, prefixed by the family when there are several."""
    several = rows["family"].nunique() > 1
    return rows.assign(row=[f"{f} {m}" if several else m for f, m in zip(rows["family"], rows["mode"])])


def row_order(rows: pd.DataFrame) -> list[str]:
    """Labels by family in run order, then modes in :data:`MODE_ORDER`."""
    rank = {mode: i for i, mode in enumerate(MODE_ORDER)}
    families = list(dict.fromkeys(rows["family"]))
    keys = rows.drop_duplicates("row").set_index("row")
    return sorted(keys.index, key=lambda r: (families.index(keys.loc[r, "family"]), rank.get(keys.loc[r, "mode"], 99)))


def _level_rank(level: str) -> int:
    """Built-in levels in their own order (clean first), custom ones after them."""
    order = [lv.value for lv in Level]
    return order.index(level) if level in order else len(order)


def _level_order(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["level"]))


def _flatten(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with one header row (a column of several levels joined by spaces) and no name
    over its row labels (a pivot's ``row``)."""
    table = table.copy()
    if isinstance(table.columns, pd.MultiIndex):
        table.columns = [" ".join(str(part) for part in column) for column in table.columns]
    return table.rename_axis(index=None, columns=None)


def _tex(value: object) -> str:
    text = str(value)
    for raw, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(raw, escaped)
    return text
