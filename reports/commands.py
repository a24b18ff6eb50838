"""``ppazam report`` and ``ppazam compare``: the harness's subcommands of the ``ppazam`` command.

They reach the command through the ``ppazam.commands`` entry point group (see
``pyproject.toml``), so the core package never imports the harness.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from ppazam_core.store import atomic_write_text
from reports.compare import VERDICT_FILE, Tolerance, compare_runs, gate_options
from reports.writer import rebuild_report

console = Console()


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``compare`` to the ``ppazam`` command."""
    report = commands.add_parser("report", help="rebuild a run folder's report.html and tables/",
                                 description="Rebuild report.html and tables/ of a run folder from its CSVs.")
    report.add_argument("run_dir", type=Path, help="a report folder written by the bench")
    report.set_defaults(run=_report)

    compare = commands.add_parser("compare", help="compare a run with a baseline; exit 1 on regression")
    compare.add_argument("run_dir", type=Path, help="the run to check")
    compare.add_argument("baseline_dir", type=Path, help="the baseline run")
    for flag, options in gate_options():
        compare.add_argument(flag, **options)
    compare.set_defaults(run=_compare)


def _report(args: argparse.Namespace) -> int:
    page = rebuild_report(args.run_dir)
    console.print(f"rebuilt {page} and {args.run_dir / 'tables'}", highlight=False, soft_wrap=True)
    return 0


def _compare(args: argparse.Namespace) -> int:
    tolerance = Tolerance(args.max_accuracy_drop, args.max_latency_growth, args.significance)
    verdict = compare_runs(args.run_dir, args.baseline_dir, tolerance, args.allow_different)
    atomic_write_text(args.run_dir / VERDICT_FILE, json.dumps(verdict.to_dict(), indent=2))
    rebuild_report(args.run_dir)
    status = "[green]passed[/]" if verdict.passed else f"[bold red]REGRESSED[/] ({len(verdict.regressions)} metrics)"
    console.print(f"{args.run_dir} vs {args.baseline_dir}: {status}; {verdict.compared} paired tests on "
                  f"{verdict.paired_queries} queries matched by key, {verdict.untested} tests that could not reach "
                  f"significance, {verdict.only_in_run} only in the run, {verdict.only_in_baseline} only in the baseline",
                  highlight=False, soft_wrap=True)
    for r in verdict.regressions:
        console.print(f"  {r.condition} {r.metric}: {r.reason}", highlight=False, soft_wrap=True)
    return 0 if verdict.passed else 1
