"""Paper tables in Markdown and LaTeX (booktabs), built from the tidy rows alone.

* ``original-layout``: the original system's layout, rows Top-1 / Top-3, columns cluster x
  level (the first column of each level is all clusters together), one table per mode;
* ``mode-comparison``: rows modes, columns levels, cells ``top-1 / top-3`` and the median
  latency of one query in that mode.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ppazam_core.store import atomic_write_text

CLUSTER_STAGE = "cluster:"
MODE_ORDER = ("fp32", "quant", "fhe-sim", "fhe")


def original_layout(results: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Rows Top-1 / Top-3, columns (level, cluster) for one mode of the first suite point."""
    rows = first_point(results)
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
    """Rows modes, columns levels: ``top-1 / top-3`` and the median seconds of one query."""
    rows = first_point(results)
    rows = rows[(rows["stage"] == "") & rows["metric"].isin(["top1", "top3"])]
    if rows.empty:
        return pd.DataFrame()
    table = rows.pivot_table(index="mode", columns=["level", "metric"], values="value", aggfunc="first")
    n = rows[rows["metric"] == "top1"].pivot_table(index="mode", columns="level", values="n", aggfunc="first")
    query = latency[(latency["stage"] == "query") & (latency["metric"] == "median_s")]
    seconds = query.groupby("mode")["value"].median()
    cells = {}
    for level in _level_order(rows):
        cells[level] = {mode: " / ".join(f"{table.loc[mode, (level, metric)]:.2f}" for metric in ("top1", "top3")
                                         if (level, metric) in table.columns and pd.notna(table.loc[mode, (level, metric)]))
                        + f" (n={int(n.loc[mode, level])})" for mode in table.index}
    frame = pd.DataFrame(cells)
    frame["latency / query"] = [f"{seconds[m]:.3g} s" if m in seconds else "-" for m in frame.index]
    order = [m for m in MODE_ORDER if m in frame.index] + [m for m in frame.index if m not in MODE_ORDER]
    return frame.loc[order]


def to_markdown(table: pd.DataFrame) -> str:
    flat = _flatten(table)
    return flat.to_markdown() if not flat.empty else "(no rows)"


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


def write_tables(results: pd.DataFrame, latency: pd.DataFrame, folder: Path) -> list[Path]:
    """Write every table as ``.md`` and ``.tex`` into ``folder``; returns the files."""
    written = []
    tables = {"mode-comparison": (mode_comparison(results, latency), "Top-1 / top-3 and latency per mode")}
    for mode in [m for m in MODE_ORDER if m in set(results["mode"])]:
        tables[f"original-layout-{mode}"] = (original_layout(results, mode),
                                             f"Top-1 and top-3 per cluster and level ({mode})")
    for name, (table, caption) in tables.items():
        for suffix, text in ((".md", f"# {caption}\n\n{to_markdown(table)}\n"), (".tex", to_latex(table, caption))):
            path = folder / f"{name}{suffix}"
            atomic_write_text(path, text)
            written.append(path)
    return written


def first_point(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of the suite's first (family, bit width, rounding) point: the tables' subject."""
    if results.empty:
        return results
    first = results.iloc[0]
    return results[(results["family"] == first["family"]) & (results["bit_width"] == first["bit_width"])
                   & (results["rounding_bits"] == first["rounding_bits"])]


def _level_order(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["level"]))


def _flatten(table: pd.DataFrame) -> pd.DataFrame:
    if isinstance(table.columns, pd.MultiIndex):
        table = table.copy()
        table.columns = [" ".join(str(part) for part in column) for column in table.columns]
    return table


def _tex(value: object) -> str:
    text = str(value)
    for raw, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(raw, escaped)
    return text
