"""Results pages and what a person reads in a terminal: ``ppazam report --pages`` writes a stamped
Markdown page per run folder whose figures are the run's own, the same page every time, and
refuses a folder without ``run.json``; ``ppazam report`` prints the headline table fitted to the
terminal; ``ppazam compare`` records no verdict of a run against itself and keeps the one a run
already holds against another baseline."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ppazam_core.cli import main
from ppazam_core.results.records import PREDICTION_COLUMNS, Condition, RunRecord, frame
from reports.compare import VERDICT_FILE
from reports.tables import headline, to_markdown, to_terminal
from reports.writer import REPORT_FILE
from test_reports import cells, small_run

STAMP = {"run_id": "r1", "timestamp": "2026-01-01T00:00:00Z", "git_commit": "abc", "code_hash": "c0de",
         "command": "pytest bench --suite unit.toml"}


@pytest.fixture
def run(tmp_path):
    """A run folder of :func:`small_run`, stamped like the bench stamps one (its CSVs and
    ``run.json``: all a page reads)."""
    record = small_run()
    record.provenance = {**record.provenance, **STAMP, "libraries": {"lib": "f1ng3r"},
                         "environment": {**record.provenance["environment"], "cpu": "AMD EPYC",
                                         "platform": "Linux-x86_64"}}
    record.write(tmp_path / "run")
    return tmp_path / "run"


def test_a_page_is_stamped_and_its_headline_is_the_runs_results(run, tmp_path, capsys):
    pages = tmp_path / "pages"
    assert main(["report", "--pages", str(pages), f"unit-page={run}"]) == 0
    page = (pages / "unit-page.md").read_text()
    assert f"wrote {pages / 'unit-page.md'}" in capsys.readouterr().out
    stamp = {row[0]: row[1] for row in cells(page.split("## ")[0])[2:]}
    assert stamp["run"] == "`r1`" and stamp["date"] == "2026-01-01T00:00:00Z" and stamp["suite"] == "unit"
    assert stamp["git commit"] == "`abc`" and stamp["code hash"] == "`c0de`"
    assert stamp["machine"].startswith("AMD EPYC (x86_64), 2 cores, Python 3.11; concrete-ml 1.9.0")
    assert stamp["command"] == "`pytest bench --suite unit.toml`" and "f1ng3r" in stamp["library"]
    regenerate = f"ppazam report --pages {pages.as_posix()} unit-page={run.as_posix()}"
    assert f"by `{regenerate}`: do not edit this page by hand" in page

    results = pd.read_csv(run / "results.csv", keep_default_na=False)
    top1 = results[(results["stage"] == "") & (results["metric"] == "top1") & (results["mode"] == "fhe-sim")]
    glance = page.split("## At a glance")[1].split("## ")[0]
    assert "n: 200 queries per cell." in glance
    table = cells(glance)
    levels = table[0][2:4]
    assert levels == ["small", "large"] and len(table) == 4
    for family, mode, *figures in table[2:]:
        first = top1[top1["family"] == family].iloc[0]  # the family's first point: its bit width and library
        point = top1[(top1["family"] == family) & (top1["bit_width"] == first["bit_width"])
                     & (top1["n_tracks"] == first["n_tracks"])].set_index("level")["value"]
        assert mode == "fhe-sim" and figures[:2] == [f"{point[level]:.2f}" for level in levels], family
    for heading in ("Accuracy and latency per mode", "Condition sweeps", "Open set", "Privacy ledger"):
        assert f"## {heading}" in page
    assert "the latency is the median of 2 to 5 timed rounds" in page


def test_a_page_says_where_the_runs_time_went(run, tmp_path):
    timeline = [{"stage": "library synthetic (rendering or scanning)", "seconds": 15.5, "outcome": "done"},
                {"stage": "two-stage-cnn: training and compiling", "seconds": 214.3, "outcome": "done"},
                {"stage": "queries clean (two-stage-cnn)", "seconds": 6.0, "outcome": "done"},
                {"stage": "queries phone-in-room@10s (two-stage-cnn)", "seconds": 25.7, "outcome": "done"},
                {"stage": "two-stage-cnn fhe-sim queries (clean)", "seconds": 4.0, "outcome": "done"},
                {"stage": "two-stage-cnn fhe-sim queries (phone-in-room)", "seconds": 17.7, "outcome": "done"},
                {"stage": "two-stage-cnn keys for 6 circuits", "seconds": 49.5, "outcome": "done"}]
    provenance = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**provenance, "wall_s": 1000.0, "timeline": timeline}))
    assert main(["report", "--pages", str(tmp_path / "pages"), f"timed={run}"]) == 0
    section = (tmp_path / "pages" / "timed.md").read_text().split("## Where the time went")[1].split("## ")[0]
    assert "The run took 1,000 s (16.7 min)" in section and "7 stages of it shown" in section
    rows = {row[0]: row[1:] for row in cells(section)[2:]}
    assert rows["two-stage-cnn: training and compiling"] == ["1", "214", "21%"]
    assert rows["query datasets (augmentation and front-ends)"] == ["2", "32", "3%"]
    assert rows["two-stage-cnn: fhe-sim rankings"] == ["2", "22", "2%"]
    assert rows["two-stage-cnn: keys"][1] == "50" and rows["library (rendering or scanning)"][1] == "16"
    assert list(rows)[0] == "two-stage-cnn: training and compiling"  # the largest part first
    assert rows["the rest: fp32 and quant rankings, checks, latency rounds, reports"] == ["", "667", "67%"]


def test_writing_a_page_twice_gives_the_same_page_and_leaves_the_run_alone(run, tmp_path):
    before = {path.name: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    pages = tmp_path / "pages"
    assert main(["report", "--pages", str(pages), str(run)]) == 0
    first = (pages / "unit.md").read_bytes()  # named after the suite
    assert main(["report", "--pages", str(pages), str(run)]) == 0
    assert (pages / "unit.md").read_bytes() == first and [p.name for p in pages.iterdir()] == ["unit.md"]
    assert {path.name: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


def test_a_run_folder_without_run_json_is_a_clear_error(run, tmp_path, capsys):
    (run / "run.json").unlink()
    assert main(["report", "--pages", str(tmp_path / "pages"), f"x={run}"]) == 1
    err = capsys.readouterr().err
    assert "has no run.json: a results page is stamped from it" in " ".join(err.split())
    assert not (tmp_path / "pages").exists()


def test_page_names_are_checked(run, tmp_path, capsys):
    twin = shutil.copytree(run, tmp_path / "twin")
    assert main(["report", "--pages", str(tmp_path / "pages"), str(run), str(twin)]) == 1  # both "unit.md"
    assert "name the pages, NAME=RUN_DIR" in capsys.readouterr().err
    assert main(["report", "--pages", str(tmp_path / "pages"), f"../up={run}"]) == 1
    assert "is not a plain file name" in capsys.readouterr().err
    assert main(["report", f"x={run}"]) == 1  # a page name without --pages
    assert "add --pages DIR" in " ".join(capsys.readouterr().err.split())


def test_the_headline_fits_an_80_column_terminal(run, capsys):
    record = small_run()
    record.results += [
        Condition("r1", "t", "abc", "code", "unit", "lib", 64, f"a-family-with-a-long-name-{i}", "fp32", 8, 0,
                  level).proportion("top1", 150, 200) for i in range(3) for level in ("small", "large", "clean@-20dB",
                                                                                     "clean@+10dB", "phone-in-room@1s",
                                                                                     "phone-in-room@10s")]
    table = headline(frame(record.results), frame(record.latency))
    assert max(len(line) for line in to_markdown(table).splitlines()) > 80  # what the bench prints
    text = to_terminal(table, 80)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    parts = text.split("\n\n")
    assert len(parts) > 1 and all(len(cells(part)) == len(table) + 2 for part in parts)
    assert sum(len(cells(part)[0]) - 1 for part in parts) == len(table.columns)  # every column, once
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"rebuilt {run / REPORT_FILE}" in out and "two-stage-cnn" in out
    assert max(len(line) for line in out.splitlines() if line.startswith("|")) <= 80


def gate_run(folder, run_id: str):
    """A run folder the gate can pair: 64 queries of one condition, 48 right."""
    record = RunRecord({"run_id": run_id, "suite": {"name": "unit"}, "libraries": {"lib": "fingerprint"}})
    condition = Condition(run_id, "t", "c", "code", "unit", "lib", 64, "embedding-head", "fp32", 8, 0, "clean",
                          config_hash="cfg")
    right = np.arange(64) % 4 != 0
    record.results.append(condition.proportion("top1", right.sum(), right.size))
    record.predictions = [pd.DataFrame({**condition.keys(), "track_id": [f"t{i}" for i in range(64)], "split": "eval",
                                        "clip": 0, "offset_s": 1.5, "seed": np.arange(64), "gain_db": 0.0,
                                        "query_s": 3.0, "truth": "t", "top1_id": "t", "top2_id": "u", "top3_id": "v",
                                        "top1": right, "top3": right, "cluster_correct": np.nan, "confidence": 1.0,
                                        "seconds": 0.02})[list(PREDICTION_COLUMNS)]]
    record.write(folder)
    return folder


def test_compare_records_no_verdict_against_the_run_itself_and_keeps_an_earlier_one(tmp_path, capsys):
    run = gate_run(tmp_path / "run", "r-now")
    copy = shutil.copytree(run, tmp_path / "copy")
    for baseline in (run, copy):  # the folder itself, and a copy of it: one run id
        assert main(["compare", str(run), str(baseline)]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "passed" in out and "not recorded" in out and "the baseline is the run itself (run id r-now)" in out
        assert not (run / VERDICT_FILE).exists() and not (run / REPORT_FILE).exists()  # nothing rebuilt

    older = gate_run(tmp_path / "older", "r-older")
    assert main(["compare", str(run), str(older)]) == 0
    verdict = json.loads((run / VERDICT_FILE).read_text())
    assert verdict["baseline_run_id"] == "r-older" and "(run <code>r-older</code>)" in (run / REPORT_FILE).read_text()
    capsys.readouterr()
    oldest = gate_run(tmp_path / "oldest", "r-oldest")
    assert main(["compare", str(run), str(oldest)]) == 0
    assert "holds the run's verdict against" in " ".join(capsys.readouterr().out.split())
    assert json.loads((run / VERDICT_FILE).read_text()) == verdict  # kept
    assert main(["compare", str(run), str(older)]) == 0  # the same baseline again: recorded
    assert "recorded in" in capsys.readouterr().out
