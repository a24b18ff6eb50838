"""The bench plugin's collection: each suite point's tests run together, in suite order, and
``run.json`` names the points that ran."""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from fixtures.plugin import RUN_KEY, BenchRun, pytest_collection_modifyitems, suite_points
from reports.compare import Tolerance
from suites import load_suite

ROOT = Path(__file__).resolve().parents[1]


def test_each_suite_point_runs_its_tests_together_in_suite_order():
    done = subprocess.run([sys.executable, "-m", "pytest", "bench", "--suite", "paper", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    points = [p.id for p in suite_points(load_suite("paper"))]
    pattern = re.compile(r"\[(" + "|".join(re.escape(p) for p in points) + r")[-\]]")
    seen = [pattern.search(line).group(1) for line in done.stdout.splitlines() if "::" in line]
    assert len(seen) > len(points)
    runs = [point for i, point in enumerate(seen) if i == 0 or seen[i - 1] != point]
    assert runs == points


def test_run_json_names_the_command_and_only_the_points_left_after_deselection():
    run = BenchRun(load_suite("paper"), "synthetic", "run", Path("out"), 1, SimpleNamespace(log=[]), None,
                   Tolerance(), "pytest bench --suite paper -k w2-r6")
    kept = [p for p in run.points if p.id.endswith("-w2-r6") or p.family != "two-stage-cnn"]
    items = [SimpleNamespace(callspec=SimpleNamespace(params={"ppazam_point": p})) for p in reversed(kept)]
    pytest_collection_modifyitems(SimpleNamespace(stash={RUN_KEY: run}), items)
    provenance = run.provenance()
    assert [p["id"] for p in provenance["points"]] == [p.id for p in run.points if p in kept]
    assert set(provenance["points_not_run"]) == {p.id for p in run.points} - {p.id for p in kept}
    assert provenance["command"] == "pytest bench --suite paper -k w2-r6"
