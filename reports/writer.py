"""One report folder from tidy rows: CSVs, ``run.json``, ``report.html``, ``tables/`` and,
against a baseline, ``verdict.json``. :func:`rebuild_report` redoes the HTML and tables from
the CSVs alone (``ppazam report RUN_DIR``)."""

from __future__ import annotations

import json
from pathlib import Path

from ppazam_core.store import atomic_write_text
from reports.compare import VERDICT_FILE, Tolerance, Verdict, compare_runs
from reports.html import render_report
from reports.tables import write_tables
from ppazam_core.results import RunRecord, read_run

REPORT_FILE = "report.html"
TABLES_DIR = "tables"


def write_report(record: RunRecord, out: Path, compare_to: Path | None = None,
                 tolerance: Tolerance = Tolerance(), allow_different: bool = False) -> Verdict | None:
    """Write the run's rows and everything derived from them into ``out``; with ``compare_to``,
    the regression verdict too (:func:`~reports.compare.compare_runs` raises when the runs
    cannot be compared; the run folder is written first all the same)."""
    record.write(out)
    verdict = None
    if compare_to is not None:
        verdict = compare_runs(out, compare_to, tolerance, allow_different)
        atomic_write_text(out / VERDICT_FILE, json.dumps(verdict.to_dict(), indent=2))
    rebuild_report(out)
    return verdict


def rebuild_report(folder: Path) -> Path:
    """Render ``report.html`` and ``tables/`` of ``folder`` from its CSVs (and verdict, if any)."""
    results, latency, run = read_run(folder)
    verdict_file = folder / VERDICT_FILE
    verdict = json.loads(verdict_file.read_text()) if verdict_file.is_file() else None
    write_tables(results, latency, folder / TABLES_DIR)
    atomic_write_text(folder / REPORT_FILE, render_report(results, latency, run, verdict))
    return folder / REPORT_FILE
