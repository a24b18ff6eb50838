"""Results pages: one Markdown page per run folder, written by ``ppazam report --pages DIR
[NAME=]RUN_DIR ...`` from the folder's ``results.csv``, ``latency.csv`` and ``run.json`` alone.

A page is stamped with the run's provenance (run id, date, suite, git commit, code hash, library,
machine, the command that made it) and holds the tables of :mod:`reports.tables` that a reader
of the docs wants (headline, per mode, sweeps, open set, enrollment, privacy ledger), each with
the ``n`` behind its cells. No figure on a page is typed by hand, and the page says which command
regenerates it; the same run folder always gives the same page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ppazam_core.errors import ArtifactError, ConfigError
from ppazam_core.results.records import LATENCY_FILE, RESULTS_FILE, RUN_FILE, read_run
from ppazam_core.store import atomic_write_text
from reports.projection import PROJECTION_NOTE, projection_tables
from reports.tables import at_levels, family_points, machine, paper_tables, to_markdown

PAGE_SUFFIX = ".md"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _top1(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[(rows["stage"] == "") & (rows["metric"] == "top1")]


def _sweeps(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["level"].astype(str).str.contains("@")]


def _enrolled(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["stage"].astype(str).str.startswith("enroll:")
                & rows["metric"].isin(["top1_seen", "top1_enrolled", "episode_top1"])]


# table of reports.tables shown -> its heading, and what its cells' n counts and the rows that hold it
# (the privacy ledger's cells are per query segment, counted from the circuits: no n)
SECTIONS = {
    "headline": ("At a glance", "queries per cell", lambda r: _top1(at_levels(family_points(r)))),
    "mode-comparison": ("Accuracy and latency per mode", "queries per cell",
                        lambda r: _top1(at_levels(family_points(r)))),
    "condition-sweeps": ("Condition sweeps", "queries per cell", lambda r: _sweeps(_top1(family_points(r)))),
    "open-set": ("Open set", "queries per cell, library and distractor queries together",
                 lambda r: family_points(r).loc[lambda f: f["metric"] == "roc_auc"]),
    "enrollment": ("Enrollment", "queries or episodes per cell", _enrolled),
    "privacy-ledger": ("Privacy ledger", None, None),
}


def parse_target(argument: str) -> tuple[str | None, Path]:
    """``NAME=RUN_DIR`` or ``RUN_DIR`` of the command line: the page's name (``None``: the run's
    suite name) and the run folder. An existing folder is taken as it is, ``=`` and all.

    Raises:
        ConfigError: NAME is empty or not a plain file name.
    """
    name, separator, folder = argument.partition("=")
    if not separator or Path(argument).is_dir():
        return None, Path(argument)
    if not NAME.match(name):
        raise ConfigError(f"page name {name!r} of {argument!r} is not a plain file name (letters, digits, '.', '-', "
                          "'_'); write NAME=RUN_DIR, e.g. default=reports/<run-id>")
    return name, Path(folder)


def page_command(out: Path, name: str, folder: Path) -> str:
    """The command that writes the page ``name`` of ``folder`` into ``out``."""
    return f"ppazam report --pages {out.as_posix()} {name}={folder.as_posix()}"


def render_page(folder: Path, command: str) -> str:
    """The Markdown page of the run folder ``folder``, saying that ``command`` regenerates it.

    Raises:
        ArtifactError: ``folder`` is not a run folder, or has no ``run.json`` to stamp the page with.
    """
    folder = Path(folder)
    results, latency, run = _read(folder)
    suite = run.get("suite", {})
    env = run.get("environment", {})
    lines = [f"# Results: the {suite.get('name', '?')} suite", "",
             f"Generated from the run folder `{folder.as_posix()}` (its `{RESULTS_FILE}`, `{LATENCY_FILE}` and "
             f"`{RUN_FILE}`) by `{command}`: do not edit this page by hand, run that command again. Columns, "
             "metrics and intervals: docs/results-format.md.", "",
             "| | |", "| --- | --- |",
             f"| run | `{run.get('run_id', '?')}` |",
             f"| date | {run.get('timestamp', '?')} |",
             f"| suite | {suite.get('name', '?')}"
             + (f": {_cell(suite['description'])}" if suite.get("description") else "") + " |",
             f"| git commit | `{run.get('git_commit', '?')}` |",
             f"| code hash | `{run.get('code_hash', '?')}` |",
             f"| library | {_library(run)} |",
             f"| machine | {_cell(machine(run))} |",
             f"| platform | {_cell(env.get('platform', '?'))} |",
             f"| command | `{_cell(run.get('command') or '?')}` |",
             f"| families | {', '.join(dict.fromkeys(results['family'].astype(str))) or '-'} |", ""]
    tables = paper_tables(results, latency)
    for name, (heading, counts, rows) in SECTIONS.items():
        table, caption = tables[name]
        if table.empty:
            continue
        lines += [f"## {heading}", "", f"{caption}.", ""]
        if rows is not None:
            rounds = _rounds(latency) if name == "mode-comparison" else ""
            lines += [f"n: {_span(rows(results)['n'])} {counts}{rounds}.", ""]
        lines += [to_markdown(table), ""]
    projections = projection_tables(run, results, latency)
    if projections:
        lines += ["## Projected cost at full size", "", PROJECTION_NOTE, ""]
        for caption, table in projections:
            lines += [f"{caption}.", "", to_markdown(table), ""]
    lines += _time_spent(run)
    lines += ["The figures of this run are in its `report.html`; `ppazam report RUN_DIR` rebuilds it.", ""]
    return "\n".join(lines)


# a shown stage's title (fixtures/plugin.py, fixtures/stages.py) -> the part of the run it belongs to
STAGE_PARTS = (
    (re.compile(r"^distractor queries \S+ \(.*\)$"), "distractor query datasets"),
    (re.compile(r"^queries \S+ \(.*\)$"), "query datasets (augmentation and front-ends)"),
    (re.compile(r"^(?P<family>\S+) (?P<mode>fp32|quant|fhe-disable|fhe-sim|fhe) queries \(.*\)$"), "{family}: {mode} rankings"),
    (re.compile(r"^(?P<family>\S+): (?P<what>training and compiling|training|loading)$"), "{family}: {what}"),
    (re.compile(r"^(?P<family>\S+) keys for \d+ circuits$"), "{family}: keys"),
    (re.compile(r"^(?P<family>\S+): enrolling .*$"), "{family}: enrollment"),
    (re.compile(r"^library .*$"), "library (rendering or scanning)"),
)


def stage_part(title: str) -> str:
    """The part of a run a shown stage's ``title`` belongs to (conditions and counts dropped)."""
    for pattern, part in STAGE_PARTS:
        found = pattern.match(title)
        if found:
            return part.format(**found.groupdict())
    return re.sub(r" \([^)]*\)$", "", title)


def _time_spent(run: dict) -> list[str]:
    """The section on where the run's wall time went: ``run.json``'s ``wall_s`` and the
    ``timeline`` of the stages shown while it ran, summed by :func:`stage_part`."""
    timeline, wall = run.get("timeline") or [], run.get("wall_s")
    if not timeline or not isinstance(wall, (int, float)):
        return []
    frame = pd.DataFrame(timeline)
    frame["part"] = frame["stage"].astype(str).map(stage_part)
    parts = frame.groupby("part", sort=False)["seconds"].agg(["sum", "count"]).sort_values("sum", ascending=False)
    rest = wall - float(frame["seconds"].sum())
    lines = ["## Where the time went", "",
             f"The run took {wall:,.0f} s ({wall / 60:.1f} min) from the bench's start to its report, "
             f"{len(frame)} stages of it shown as they ran (the build log and these stages are in `run.json`).", "",
             "| part | stages | seconds | share |", "| --- | --- | --- | --- |"]
    lines += [f"| {_cell(part)} | {int(row['count'])} | {row['sum']:,.0f} | {row['sum'] / wall:.0%} |"
              for part, row in parts.iterrows()]
    lines += [f"| the rest: fp32 and quant rankings, checks, latency rounds, reports | | {rest:,.0f} | "
              f"{rest / wall:.0%} |", ""]
    return lines


def write_pages(targets: list[tuple[str | None, Path]], out: Path) -> list[Path]:
    """Write one page per ``(name, run folder)`` into ``out`` (``name`` ``None``: the run's suite
    name) and return the pages; the run folders are only read.

    Raises:
        ArtifactError: a folder is not a run folder or has no ``run.json``.
        ConfigError: two run folders would write one page.
    """
    pages: dict[Path, str] = {}
    for name, folder in targets:
        if name is None:
            name = str(_read(folder)[2].get("suite", {}).get("name") or "")
            name = name if NAME.match(name) else folder.resolve().name
        path = out / f"{name}{PAGE_SUFFIX}"
        if path in pages:
            raise ConfigError(f"two run folders would both write {path}: name the pages, NAME=RUN_DIR")
        pages[path] = render_page(folder, page_command(out, name, folder))
    out.mkdir(parents=True, exist_ok=True)
    for path, text in pages.items():
        atomic_write_text(path, text)
    return list(pages)


def _read(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """:func:`~ppazam_core.results.records.read_run`, with a clear word on a folder that has its CSVs but
    no ``run.json`` (a copy that left it out, a run that was killed before writing it)."""
    if (folder / RESULTS_FILE).is_file() and not (folder / RUN_FILE).is_file():
        raise ArtifactError(f"{folder} has no {RUN_FILE}: a results page is stamped from it (run id, commit, suite, "
                            "machine, command); name the folder of a finished run, where the bench and `ppazam "
                            "evaluate` write it")
    return read_run(folder)


def _rounds(latency: pd.DataFrame) -> str:
    """How many timed rounds the latency column's medians are of."""
    rows = latency[(latency["stage"] == "query") & (latency["metric"] == "median_s")]
    return "" if rows.empty else f"; the latency is the median of {_span(rows['n'])} timed rounds"


def _library(run: dict) -> str:
    libraries = run.get("libraries", {})
    named = ", ".join(f"`{name}` (content `{fingerprint}`)" for name, fingerprint in libraries.items())
    return _cell(f"{run.get('library', '?')}" + (f": {named}" if named else ""))


def _span(n: pd.Series) -> str:
    """``n`` of a table's rows: one number, or the smallest and largest."""
    n = pd.to_numeric(n, errors="coerce").dropna()
    if n.empty:
        return "?"
    low, high = int(n.min()), int(n.max())
    return f"{low}" if low == high else f"{low} to {high}"


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")
