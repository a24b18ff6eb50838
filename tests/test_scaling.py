"""The scaling suite's smallest point (100 synthetic tracks, every family it lists) runs end to
end through the bench and writes a report with build costs per family."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

from suites import load_suite

ROOT = Path(__file__).resolve().parents[1]


def test_scaling_suite_smallest_point_runs(tmp_path):
    suite = load_suite("scaling")
    smallest = min(suite.library_sizes)
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider", "--suite", "scaling",
         "--library-sizes", str(smallest), "--fhe-queries", "1", "--out", str(out),
         "--ppazam-cache", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = pd.read_csv(out / "results.csv")
    built = results[results["metric"] == "library_tracks"]
    assert set(built["family"]) == set(suite.families) and set(built["value"]) == {smallest}
    top1 = results[(results["metric"] == "top1") & results["stage"].isna() & (results["mode"] != "fhe")]
    assert set(top1["family"]) == set(suite.families) and (top1["value"] > 10 / smallest).all()  # 10x chance
