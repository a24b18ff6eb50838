"""One report folder from tidy rows: CSVs, ``run.json``, ``report.html``, ``tables/`` and,
against a baseline, ``verdict.json``. :func:`rebuild_report` redoes the HTML and tables from
the CSVs alone (``ppazam report RUN_DIR``)."""

from __future__ import annotations

import json
from pathlib import Path

from ppazam_core.store import atomic_write_text
from ppazam_core.errors import PpazamError
from ppazam_core.results.records import RunRecord, read_run
from reports.compare import VERDICT_FILE, Tolerance, compare_runs
from reports.html import render_report
from reports.tables import write_tables

REPORT_FILE = "report.html"
TABLES_DIR = "tables"


def write_report(record: RunRecord, out: Path, compare_to: Path | None = None,
                 tolerance: Tolerance = Tolerance(), allow_different: bool = False) -> dict | None:
    """Write the run's rows and everything derived from them into ``out``; with ``compare_to``,
    the regression verdict too, as :meth:`~reports.compare.Verdict.to_dict` gives it, or ``{"passed": False,
    "error": ...}`` when the baseline cannot be compared with (another suite, a damaged
    folder, ...): the run folder is written all the same.

    Raises:
        ArtifactError: ``out`` cannot hold the run folder (see :meth:`RunRecord.write`).
    """
    record.write(out)
    verdict = None
    if compare_to is not None:
        try:
            verdict = compare_runs(out, compare_to, tolerance, allow_different).to_dict()
        except PpazamError as e:
            verdict = {"passed": False, "error": str(e), "regressions": []}
        atomic_write_text(out / VERDICT_FILE, json.dumps(verdict, indent=2))
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
