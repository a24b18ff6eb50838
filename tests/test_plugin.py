"""The bench plugin's collection: each suite point's tests run together, in suite order."""

import re
import subprocess
import sys
from pathlib import Path

from fixtures.plugin import suite_points
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
