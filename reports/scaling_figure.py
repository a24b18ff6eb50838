"""The design-scaling figure: answer bytes and server seconds of every private design against the
library size (log-log), from the rows of ``bench/design_scaling.py`` (:data:`COLUMNS`), with
Apple's PNNS point and the targets of issue 32 drawn in.

``html.py``'s answer-bytes figure draws the bench's own results (the ledger's bytes and the
latency table) and extrapolates them itself; these rows carry their own estimates, each marked,
so they are drawn here: measured points filled on solid lines, estimates hollow on dashed lines
from the design's last measured point, figures reported elsewhere as hollow squares.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

COLUMNS = ("design", "n_tracks", "query_bytes", "answer_bytes", "key_bytes", "server_s", "client_s", "estimate",
           "how")
# Apple's private nearest-neighbour search (swift-homomorphic-encryption, PNNS; BFV, 4,096 rows of
# 128 dimensions), the design point of issue 32: drawn here and in the bench report's size figure
PNNS = {"tracks": 4096, "query_bytes": 28.2e3, "answer_bytes": 52.1e3, "key_bytes": 170e3, "server_s": 0.012}
TARGETS = {"answer_bytes": ((4096, 64e3), (100_000, 1.5e6)), "server_s": ((4096, 0.050), (100_000, 1.5))}
PANELS = (("answer_bytes", "bytes the client receives a query"), ("server_s", "server seconds a query"))


def draw_design_scaling(figure: Figure, rows: pd.DataFrame) -> bool:
    """Draw ``rows`` (:data:`COLUMNS`) on ``figure``: two log-log panels, one line per design.
    ``False`` when no row has a figure to draw."""
    rows = rows.dropna(subset=["n_tracks"]).sort_values(["design", "n_tracks"])
    if rows[["answer_bytes", "server_s"]].isna().all().all():
        return False
    designs = list(dict.fromkeys(rows["design"]))
    palette = dict(zip(designs, sns.color_palette(n_colors=len(designs))))
    axes = figure.subplots(1, 2)
    for ax, (column, label) in zip(axes, PANELS):
        for design, group in rows.groupby("design", sort=False):
            group = group.dropna(subset=[column])
            colour = palette[design]
            measured = group[group["estimate"] == "no"]
            estimated = group[group["estimate"] == "yes"]
            reported = group[group["estimate"] == "reported"]
            if not measured.empty:
                ax.plot(measured["n_tracks"], measured[column].astype(float), marker="o", color=colour)
            if not estimated.empty:
                start = measured.tail(1) if not measured.empty else reported.tail(1)
                line = pd.concat([start, estimated])
                ax.plot(line["n_tracks"], line[column].astype(float), linestyle="--", color=colour)
                ax.plot(estimated["n_tracks"], estimated[column].astype(float), linestyle="none", marker="o",
                        markerfacecolor="white", color=colour)
            if not reported.empty:
                ax.plot(reported["n_tracks"], reported[column].astype(float), linestyle="none", marker="s",
                        markersize=8, markerfacecolor="white", color=colour)
        ax.plot([PNNS["tracks"]], [PNNS[column]], marker="*", markersize=14, linestyle="none", color="black")
        targets = TARGETS[column]
        ax.plot([n for n, _ in targets], [v for _, v in targets], marker="x", markersize=9, linestyle="none",
                color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("library tracks")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=palette[d], marker="o", label=d) for d in designs]
    handles += [Line2D([], [], color="grey", marker="o", label="measured"),
                Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="--", label="estimate"),
                Line2D([], [], color="grey", marker="s", markerfacecolor="white", linestyle="none",
                       label="reported elsewhere"),
                Line2D([], [], color="black", marker="*", markersize=12, linestyle="none",
                       label="Apple PNNS (BFV, 4,096 x 128)"),
                Line2D([], [], color="grey", marker="x", linestyle="none", label="issue 32 targets (packed head)")]
    figure.legend(handles=handles, loc="lower center", ncol=3, fontsize="small", frameon=False)
    figure.subplots_adjust(bottom=0.3, wspace=0.3)
    return True


def save_design_scaling(rows: pd.DataFrame, path: Path) -> Path:
    """Draw ``rows`` into a PNG at ``path`` (8 x 5 inches, 110 dpi, as the report's figures)."""
    figure = Figure(figsize=(8, 5))
    if not draw_design_scaling(figure, rows):
        figure.text(0.5, 0.5, "no design has a figure to draw", ha="center")
    figure.savefig(path, dpi=110)
    return Path(path)
