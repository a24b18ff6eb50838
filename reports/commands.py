"""``ppazam report`` and ``ppazam compare``: the harness's subcommands of the ``ppazam`` command.

They reach the command through the ``ppazam.commands`` entry point group (see
``pyproject.toml``), so the core package never imports the harness.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from ppazam_core.errors import ConfigError
from ppazam_core.results.records import RUN_FILE, read_run
from ppazam_core.store import atomic_write_text
from reports.compare import VERDICT_FILE, Tolerance, Verdict, compare_runs, gate_options
from reports.pages import parse_target, write_pages
from reports.tables import headline, to_terminal
from reports.writer import rebuild_report

console = Console()


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``report`` and ``compare`` to the ``ppazam`` command."""
    report = commands.add_parser(
        "report", help="rebuild run folders' reports, or write their results pages",
        description="Rebuild report.html and tables/ of each run folder from its CSVs and print its headline "
                    "table; with --pages, write a Markdown results page per run folder instead (stamped with the "
                    "run's provenance, holding its tables), reading the folders only.")
    report.add_argument("run_dirs", nargs="+", metavar="[NAME=]RUN_DIR",
                        help="a run folder written by the bench or `ppazam evaluate`; with --pages, NAME= names "
                             "its page (default: the run's suite name)")
    report.add_argument("--pages", type=Path, metavar="DIR",
                        help="write DIR/NAME.md for each run folder (e.g. docs/results) instead of rebuilding "
                             "report.html and tables/")
    report.set_defaults(run=_report)

    compare = commands.add_parser("compare", help="compare a run with a baseline; exit 1 on regression")
    compare.add_argument("run_dir", type=Path, help="the run to check")
    compare.add_argument("baseline_dir", type=Path, help="the baseline run")
    for flag, options in gate_options():
        compare.add_argument(flag, **options)
    compare.set_defaults(run=_compare)


def _report(args: argparse.Namespace) -> int:
    targets = [parse_target(argument) for argument in args.run_dirs]
    if args.pages is not None:
        for page in write_pages(targets, args.pages):
            console.print(f"wrote {page}", highlight=False, soft_wrap=True)
        return 0
    named = [argument for argument, (name, _) in zip(args.run_dirs, targets) if name is not None]
    if named:
        raise ConfigError(f"NAME=RUN_DIR ({named[0]}) names a results page: add --pages DIR, or give the run "
                          "folder alone")
    for _, folder in targets:
        page = rebuild_report(folder)
        results, latency, _ = read_run(folder)
        console.print(f"rebuilt {page} and {folder / 'tables'}", highlight=False, soft_wrap=True)
        glance = headline(results, latency)
        if not glance.empty:
            console.print("", to_terminal(glance, console.width), "", sep="\n", highlight=False, soft_wrap=True,
                          markup=False)
    return 0


def _compare(args: argparse.Namespace) -> int:
    tolerance = Tolerance(args.max_accuracy_drop, args.max_latency_growth, args.significance)
    verdict = compare_runs(args.run_dir, args.baseline_dir, tolerance, args.allow_different)
    status = "[green]passed[/]" if verdict.passed else f"[bold red]REGRESSED[/] ({len(verdict.regressions)} metrics)"
    console.print(f"{args.run_dir} vs {args.baseline_dir}: {status}; {verdict.compared} paired tests on "
                  f"{verdict.paired_queries} queries matched by key, {verdict.untested} tests that could not reach "
                  f"significance, {verdict.only_in_run} only in the run, {verdict.only_in_baseline} only in the baseline",
                  highlight=False, soft_wrap=True)
    for r in verdict.regressions:
        console.print(f"  {r.condition} {r.metric}: {r.reason}", highlight=False, soft_wrap=True)
    kept = _recorded_elsewhere(args.run_dir, verdict)
    if kept:
        console.print(kept, highlight=False, soft_wrap=True, markup=False)
    else:
        atomic_write_text(args.run_dir / VERDICT_FILE, json.dumps(verdict.to_dict(), indent=2))
        rebuild_report(args.run_dir)
        console.print(f"recorded in {args.run_dir / VERDICT_FILE} and its report.html", highlight=False,
                      soft_wrap=True)
    return 0 if verdict.passed else 1


def _recorded_elsewhere(run_dir: Path, verdict: Verdict) -> str | None:
    """Why the verdict is not written into ``run_dir`` (``None``: it is): the baseline is the run
    itself (its folder or a copy, one run id: it always passes), or the run already holds a
    verdict against another baseline (the bench's ``--compare-to``, an earlier compare), which
    is kept. A verdict that compared nothing ("NOT COMPARED") is replaced."""
    run_id = json.loads((run_dir / RUN_FILE).read_text()).get("run_id")  # compare_runs read it already
    if run_id and run_id == verdict.baseline_run_id:
        return (f"not recorded in {run_dir}: the baseline is the run itself (run id {run_id}), which always passes; "
                "compare with an earlier run")
    existing = run_dir / VERDICT_FILE
    if existing.is_file():
        try:
            earlier = json.loads(existing.read_text())
        except json.JSONDecodeError:
            return None  # a damaged verdict: replaced
        if "error" not in earlier and earlier.get("baseline_run_id", "") != verdict.baseline_run_id:
            return (f"not recorded: {existing} holds the run's verdict against {earlier.get('baseline', '?')}, "
                    "which is kept; delete it to record this one instead")
    return None
