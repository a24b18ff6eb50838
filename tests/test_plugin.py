"""The bench plugin's collection: each suite point's tests run together, in suite order, and
``run.json`` names the points that ran."""

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fixtures.plugin import RUN_KEY, BenchRun, chosen_suite, pytest_collection_modifyitems, suite_points
from ppazam_core.models.embedding_memo import EmbeddingMemo
from ppazam_core.results.records import RunInfo
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
    # the encrypted breakdown and the privacy ledger (which checks the calls the server saw)
    # summarise their point's encrypted calls: they close the point
    lines = [line for line in done.stdout.splitlines() if "::" in line]
    summary = ("test_encrypted_breakdown[", "test_privacy_ledger[")
    for point in points:
        mine = [line for line, p in zip(lines, seen) if p == point]
        first = min(i for i, line in enumerate(mine) if line.split("::")[1].startswith(summary))
        assert all(line.split("::")[1].startswith(summary) for line in mine[first:]), point
        assert any(line.split("::")[1].startswith("test_accuracy[") for line in mine[:first]), point


def test_run_json_names_the_command_and_only_the_points_left_after_deselection():
    run = BenchRun(load_suite("paper"), "synthetic", RunInfo.start("paper"), Path("out"), None,
                   SimpleNamespace(log=[], fingerprints=dict, fhe_transport="local", predictions_made=0,
                                   predictions_read=0, library_warnings={"music": ["skipped a.wav: empty file"]},
                                   embeddings=EmbeddingMemo()), None, Tolerance(), "pytest bench --suite paper -k w2-r6")
    kept = [p for p in run.points if p.id.endswith("-w2-r6") or p.family != "two-stage-cnn"]
    items = [SimpleNamespace(callspec=SimpleNamespace(params={"ppazam_point": p}), module=SimpleNamespace(),
                             get_closest_marker=lambda name: None) for p in reversed(kept)]
    pytest_collection_modifyitems(SimpleNamespace(stash={RUN_KEY: run}), items)
    provenance = run.provenance()
    assert [p["id"] for p in provenance["points"]] == [p.id for p in run.points if p in kept]
    assert set(provenance["points_not_run"]) == {p.id for p in run.points} - {p.id for p in kept}
    assert provenance["command"] == "pytest bench --suite paper -k w2-r6"
    assert provenance["library_warnings"] == {"music": ["skipped a.wav: empty file"]}


def test_parametrizations_that_can_never_run_are_deselected_not_skipped():
    """Clear-text families have no quant or fhe mode, only the two-stage CNN has first and
    second stages, sweeps run in fhe-sim (``fhe_sweeps = false``), open-set rows skip true FHE:
    the default suite's collection leaves none of these, so that a skip means something."""
    done = subprocess.run([sys.executable, "-m", "pytest", "bench", "--benchmark", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    assert not [c for c in collected if "landmark-fp" in c and ("-quant" in c or "-fhe" in c)]
    assert not [c for c in collected if "stage-" in c and "two-stage-cnn" not in c and "-stage" in c.split("[")[1]]
    assert not [c for c in collected if "test_accuracy" in c and "@" in c and c.endswith("-fhe]")]
    assert not [c for c in collected if "test_open_set" in c and (c.endswith("-fhe]") or "@" in c)]
    deselected = int(re.search(r"(\d+) deselected", done.stdout).group(1))
    assert deselected > 0 and len(collected) > 0


def test_suite_wins_over_benchmark_with_a_warning():
    assert chosen_suite(None, False) == ("quick", None) and chosen_suite(None, True) == ("default", None)
    assert chosen_suite("default", True) == ("default", None) and chosen_suite("paper", False) == ("paper", None)
    assert chosen_suite("quick", True) == ("quick", "--suite quick runs; --benchmark (the default suite) is ignored")


def test_the_bench_takes_cache_dir_and_its_former_name_and_says_which_suite_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pytest", "bench", "--benchmark", "--suite", "quick", "--cache-dir",
                           str(tmp_path / "a"), "--ppazam-cache", str(tmp_path / "b"), "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--suite quick runs; --benchmark (the default suite) is ignored" in done.stdout


def test_an_out_folder_that_is_not_a_run_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "pytest", "bench", "--out", str(tmp_path), "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 4 and "not empty and not a ppazam run folder" in done.stderr
    assert "Traceback" not in done.stderr and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_familys_encrypted_queries_stop_where_its_budget_does():
    suite = replace(load_suite("default"), fhe_budget_s=100.0)
    run = BenchRun(suite, "synthetic", RunInfo.start("default"), Path("out"), None,
                   SimpleNamespace(log=[], fingerprints=dict, fhe_transport="local", predictions_made=0,
                                   predictions_read=0, library_warnings={"music": ["skipped a.wav: empty file"]},
                                   embeddings=EmbeddingMemo()), None, Tolerance(), "pytest bench --benchmark")
    fast, slow, oblivious = run.points[2], run.points[0], run.points[1]
    queries = SimpleNamespace(y=np.repeat(np.arange(4), 3), segments=1)
    levels = suite.fhe_conditions()
    assert len(levels) == 5
    for done, level in enumerate(levels):  # cheap queries: every condition, sharing the budget left
        rows, share = run.fhe_rows(fast, queries, level)
        assert len(rows) == 12 and share == pytest.approx((100.0 - 1.2 * done) / (5 - done))
        run.spent_on_fhe(fast, np.full(12, 0.1))
    shares = []
    for level in levels:  # 30 s a query: one query each while 30 s are left, then skips
        planned = run.fhe_rows(slow, queries, level)
        if planned is None:
            break
        shares.append(planned[1])
        run.spent_on_fhe(slow, np.array([30.0]))
    assert shares == [20.0, 70.0 / 4, 40.0 / 3] and run.fhe_spent(slow) == (90.0, 3)
    steady = run.points[3]  # 4 queries of 5.25 s a condition: the fifth condition has 16 s left, more than
    for level in levels:    # one query at the mean (5.25 s), less than one condition's worth (21 s)
        assert run.fhe_rows(steady, queries, level) is not None
        run.spent_on_fhe(steady, np.full(4, 5.25))
    assert run.fhe_spent(steady) == (105.0, 20)
    assert run.fhe_rows(oblivious, queries, levels[0]) is not None  # the first always runs, whatever it costs
    run.spent_on_fhe(oblivious, np.array([120.0]))
    assert all(run.fhe_rows(oblivious, queries, level) is None for level in levels[1:])
