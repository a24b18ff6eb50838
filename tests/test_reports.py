"""Report writers on a small results table: CSV -> HTML -> tables, rebuilt from the CSVs alone; the
figures keep their titles and labels apart and say why when they have nothing to draw."""

import math
import re
import shutil
import subprocess
import tempfile

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ppazam_core.cli import main
from ppazam_core.errors import ArtifactError
from ppazam_core.results.records import Condition, RunRecord, frame, read_run, wilson_interval
from reports.html import FIGURE_WIDTH, _accuracy_by_level, _sweep, render_report
from reports.writer import REPORT_FILE, write_report

FIGURES = ("pareto", "accuracy-by-level", "gain-sweep", "length-sweep", "length-cost", "bit-width-sweep",
           "latency-by-stage", "sizes", "answer-bytes", "open-set", "scaling")
SWEEPS = (("clean@-20dB", 170), ("clean@+10dB", 150), ("phone-in-room", 140), ("phone-in-room@1s", 90),
          ("phone-in-room@10s", 190))


def cond(family: str, mode: str, bits: int, rounding: int, level: str = "", stage: str = "", library: str = "lib",
         tracks: int = 64) -> Condition:
    return Condition("r1", "t", "abc", "code", "unit", library, tracks, family, mode, bits, rounding, level, stage,
                     config_hash=f"{family}-{tracks}")


def small_run(top1_scale: float = 1.0, latency_scale: float = 1.0) -> RunRecord:
    """A plausible run: two modes, two levels, a gain and a length sweep, two bit widths, per-cluster
    rows, latencies, sizes."""
    record = RunRecord({"run_id": "r1", "timestamp": "2026-01-01T00:00:00Z", "git_commit": "abc", "library": "lib",
                        "suite": {"name": "unit"},
                        "environment": {"processor": "x86_64", "cpu_count": 2, "python": "3.11",
                                        "packages": {"concrete-ml": "1.9.0", "torch": "2.3.1", "brevitas": "0.10.2"}}})
    for bits in (3, 4):
        for mode in ("fp32", "fhe-sim"):
            for level, correct in (("small", 180), ("large", 120)):
                c = cond("two-stage-cnn", mode, bits, 6, level)
                hits = int(correct * top1_scale * (0.9 if mode == "fhe-sim" else 1.0))
                record.results += [c.proportion("top1", hits, 200), c.proportion("top3", min(200, hits + 15), 200)]
                for cluster in (0, 1):
                    per = cond("two-stage-cnn", mode, bits, 6, level, f"cluster:{cluster}")
                    record.results.append(per.proportion("top1", hits // 2, 100))
                    record.results.append(per.proportion("top3", min(100, hits // 2 + 7), 100))
            for level, correct in SWEEPS:
                c = cond("two-stage-cnn", mode, bits, 6, level)
                record.results += [c.proportion("top1", int(correct * top1_scale), 200),
                                   c.row("segments_per_query", 5 if level.endswith("@10s") else 1, 200)]
            for stage, seconds in (("features", 0.002), ("first-stage", 0.01), ("second-stage", 0.01),
                                   ("query", 0.03)):
                c = cond("two-stage-cnn", mode, bits, 6, stage=stage)
                record.latency.append(c.row("median_s", seconds * latency_scale * (10 if mode == "fhe-sim" else 1), 5))
        circuit = cond("two-stage-cnn", "fhe", bits, 6, stage="cluster")
        record.results += [circuit.row("pbs_count", 100 * bits, 1),
                           cond("two-stage-cnn", "fhe-estimate", bits, 6, stage="cluster").row("server_s", 1.6 * bits, 1),
                           cond("two-stage-cnn", "fhe-estimate", bits, 6, stage="query").row("server_s", 4.8 * bits, 1),
                           circuit.row("evaluation_key_bytes", 2e8, 1),
                           circuit.row("input_ciphertext_bytes", 2.5e4, 1)]
    for tracks, library in ((64, "lib"), (1000, "lib-1000")):  # a second family, at two library sizes
        for mode in ("fp32", "fhe-sim"):
            for level in ("small", "large"):
                c = cond("embedding-head", mode, 8, 0, level, library=library, tracks=tracks)
                record.results += [c.proportion("top1", int(170 * top1_scale), 200), c.proportion("top3", 195, 200),
                                   c.row("roc_auc", 0.93, 400), c.row("pr_auc", 0.95, 400),
                                   c.row("top1_at_far", 0.6, 200), c.row("false_accepts", 0.00625, 160)]
        build = cond("embedding-head", "fp32", 8, 0, stage="build", library=library, tracks=tracks)
        record.results.append(build.row("library_tracks", tracks, 1))
        for mode, bits in (("fp32", 6.0), ("fhe-sim", 0.0)):  # the privacy ledger
            ledger = cond("embedding-head", mode, 8, 0, stage="ledger", library=library, tracks=tracks)
            record.results += [ledger.row("server_learns_bits", bits, 1),
                               ledger.row("bytes_down", 0 if mode == "fp32" else 1e4 * tracks, 1),
                               ledger.row("client_scores", tracks, 1)]
        query = cond("embedding-head", "fhe", 8, 0, stage="query", library=library, tracks=tracks)
        record.latency.append(query.row("median_s", 0.02 * tracks / 64 * latency_scale, 2))
    return record


def cells(markdown: str) -> list[list[str]]:
    """The cells of the Markdown table in ``markdown``, row by row (the header first)."""
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in markdown.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("successes, n, expected", [
    (50, 100, (0.4038, 0.5962)),  # Wald: 0.4020-0.5980
    (0, 10, (0.0, 0.2775)),  # Wald: 0-0
    (10, 10, (0.7225, 1.0)),  # Wald: 1-1
    (8, 10, (0.4902, 0.9433)),  # asymmetric about 0.8; Wald: 0.5521-1
])
def test_wilson_interval_known_values(successes, n, expected):
    """95% Wilson score intervals to 4 decimals, as scipy's
    ``binomtest(k, n).proportion_ci(method="wilson")`` gives them; a Wald interval fails each."""
    assert wilson_interval(successes, n) == pytest.approx(expected, abs=5e-5)
    assert all(math.isnan(bound) for bound in wilson_interval(0, 0))


def test_csv_html_tables_round_trip(tmp_path):
    out = tmp_path / "run"
    assert write_report(small_run(), out) is None
    results, latency, run = read_run(out)
    assert len(results) == len(small_run().results) and run["run_id"] == "r1"
    assert {"run_id", "git_commit", "config_hash", "bit_width", "level", "metric", "ci_low", "ci_high", "n"} <= set(
        results.columns)
    page = (out / REPORT_FILE).read_text()
    for figure in FIGURES:
        assert f'id="{figure}"' in page
    assert page.count("data:image/png;base64,") == len(FIGURES) and "http" not in page.split("<body>")[1]
    mode_table = (out / "tables" / "mode-comparison.md").read_text()
    assert "two-stage-cnn fhe-sim" in mode_table and "0.90 / 0.97 (n=200)" in mode_table
    assert "@" not in mode_table  # the sweeps have a table of their own
    sweeps = (out / "tables" / "condition-sweeps.md").read_text()
    assert "clean@-20dB" in sweeps and "phone-in-room@1s" in sweeps and "0.45" in sweeps
    glance = cells((out / "tables" / "headline.md").read_text())
    # two-stage fhe-sim at bits 3: clean@-20dB 170/200, clean@+10dB 150/200; 1 s 90/200, 10 s 190/200
    assert glance[0][-4:] == ["gain spread", "1 s", "10 s", "s / encrypted query"]
    assert glance[2][0] == "two-stage-cnn" and glance[2][-4:] == ["10 pts", "0.45", "0.95", "~14.4"]  # 4.8 s x 3 bits
    assert "embedding-head fhe-sim" in mode_table and "0.85 / 0.97 (n=200)" in mode_table
    open_set = [line.split("|") for line in (out / "tables" / "open-set.md").read_text().splitlines()]
    assert ["embedding-head fp32", "0.93 / 0.95, 0.60 [0.6%]"] == [cell.strip() for cell in open_set[-2][1:3]]
    ledger = cells((out / "tables" / "privacy-ledger.md").read_text())
    assert ledger[0][:4] == ["", "server learns (bits)", "scores to client", "down (KB)"]
    assert ledger[2:] == [["embedding-head (clear)", "6.00", "64", "0.0"],
                          ["embedding-head (encrypted)", "0.00", "64", "640.0"]]  # as formatted, not re-parsed
    assert 'id="privacy"' in page
    assert "Library <code>" not in page  # no library warnings in this run
    layout = (out / "tables" / "original-layout-fp32.tex").read_text()
    assert r"\toprule" in layout and "Top-1" in layout and "Top-3" in layout and "cluster" not in layout.split(
        r"\midrule")[1].split("\n")[0]
    (out / REPORT_FILE).unlink()
    shutil.rmtree(out / "tables")
    assert main(["report", str(out)]) == 0
    assert (out / REPORT_FILE).read_text().count("data:image/png") == len(FIGURES)
    assert (out / "tables" / "mode-comparison.tex").is_file()


def test_library_warnings_head_the_report(tmp_path):
    record = small_run()
    record.provenance["library_warnings"] = {"my <music>": ["skipped a&b.wav: empty file (0 bytes)",
                                                             "tracks x, y are identical files: no family can tell "
                                                             "them apart"]}
    write_report(record, tmp_path / "run")
    page = (tmp_path / "run" / REPORT_FILE).read_text()
    assert "Library <code>my &lt;music&gt;</code> as opened:\n2 warning(s)" in page
    assert "<li>skipped a&amp;b.wav: empty file (0 bytes)</li>" in page and "<li>tracks x, y are identical" in page


def test_a_reused_out_folder_shows_only_the_new_run(tmp_path):
    out = tmp_path / "run"
    write_report(small_run(), out)
    (out / "verdict.json").write_text('{"passed": false}')  # an older run's verdict and a stray table
    (out / "tables" / "old-table.md").write_text("old")
    newer = small_run(top1_scale=0.5)
    newer.provenance = {**newer.provenance, "run_id": "r2"}
    write_report(newer, out)
    assert not (out / "verdict.json").exists() and not (out / "tables" / "old-table.md").exists()
    assert read_run(out)[2]["run_id"] == "r2"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a run")
    with pytest.raises(ArtifactError, match="not empty and not a ppazam run folder"):
        write_report(small_run(), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a run"


def test_report_of_a_folder_without_csvs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "not a ppazam run folder" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    out = tmp_path / "run"
    write_report(small_run(), out)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000",
               "--dump-dom", (out / REPORT_FILE).as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    for figure in FIGURES:
        assert f'id="{figure}"' in dom
    assert dom.count('src="data:image/png;base64,') == len(FIGURES)
    console_errors = [line for line in done.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    assert not console_errors, console_errors
    assert "Uncaught" not in done.stderr


LONG_FAMILIES = [f"embedding-knn-packed-{i}" for i in range(6)]


def many_families() -> pd.DataFrame:
    """Top-1 rows of six long-named families in two modes at five levels and a gain sweep."""
    rows = [cond(family, mode, 8, 0, level).proportion("top1", 150 + 5 * i, 200)
            for family in LONG_FAMILIES for mode in ("fp32", "fhe-sim")
            for i, level in enumerate(("clean", "small", "medium", "large", "phone-in-room", "clean@-20dB",
                                       "clean@-10dB", "clean@+0dB", "clean@+10dB"))]
    return frame(rows)


def drawn_ticks(ax, axis: str) -> list:
    """The tick labels of ``ax``'s ``axis`` that are drawn: those within its limits."""
    low, high = sorted(getattr(ax, f"get_{axis}lim")())
    return [label for label, at in zip(getattr(ax, f"get_{axis}ticklabels")(), getattr(ax, f"get_{axis}ticks")())
            if low <= at <= high and label.get_visible()]


@pytest.mark.parametrize("draw", [_accuracy_by_level, lambda f, r: _sweep(f, r, "gain_db", "recording gain (dB)")],
                         ids=["accuracy-by-level", "gain-sweep"])
def test_small_multiples_keep_titles_and_labels_apart(draw):
    """Six panels wrap into two rows of three, and no panel title, tick label or axis label of one
    panel runs into another panel's, or into the legend, or out of the figure."""
    figure = Figure(figsize=(FIGURE_WIDTH, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    assert draw(figure, many_families()) is True
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    assert [ax.get_title() for ax in figure.axes] == LONG_FAMILIES
    assert len({round(ax.get_position().y0, 3) for ax in figure.axes}) == 2
    texts = [(i, text) for i, ax in enumerate(figure.axes)
             for text in (ax.title, ax.xaxis.label, *drawn_ticks(ax, "x"), *drawn_ticks(ax, "y")) if text.get_text()]
    boxes = [(i, text.get_text(), text.get_window_extent(renderer)) for i, text in texts]
    clashes = [(a, b) for i, a, box_a in boxes for j, b, box_b in boxes if i < j and box_a.overlaps(box_b)]
    assert not clashes, clashes[:5]
    legend = figure.legends[0].get_window_extent(renderer)
    assert not [text for _, text, box in boxes if box.overlaps(legend)]
    outside = [text for _, text, box in boxes if not figure.bbox.contains(box.x0, box.y0)
               or not figure.bbox.contains(box.x1, box.y1)]
    assert not outside, outside


def test_a_figure_with_nothing_to_draw_says_why(tmp_path):
    """One bit width, one library size, and encrypted queries Concrete's cost model puts at 0 s
    (circuits without bootstrapping): no empty log-scale axes, a sentence each instead."""
    results, latency = frame(small_run().results), frame(small_run().latency)
    results = results[(results["family"] == "two-stage-cnn") & (results["bit_width"] == 3)].copy()
    results.loc[results["mode"] == "fhe-estimate", "value"] = 0.0
    latency = latency[(latency["family"] == "two-stage-cnn") & (latency["bit_width"] == 3)]
    page = render_report(results, latency, {"run_id": "r0", "suite": {"name": "unit"}})
    figures = re.findall(r'<figure id="([^"]+)">(.*?)</figure>', page, flags=re.S)
    said = {figure: " ".join(note[0].split()) for figure, body in figures
            for note in [re.findall(r'<p class="note">(.*?)</p>', body)] if note}
    assert said.keys() == {"pareto", "length-cost", "bit-width-sweep", "answer-bytes", "open-set", "scaling"}
    assert said["pareto"].startswith("Not drawn: the seconds of an encrypted query are 0 for two-stage-cnn")
    assert said["length-cost"] == said["pareto"] and "log scale" in said["pareto"]
    assert "at one bit width (3)" in said["bit-width-sweep"] and "one library size" in said["scaling"]
    assert said["open-set"] == "No rows for this figure in this run."
    assert page.index('id="glance"') < page.index('id="pareto"') < page.index('id="accuracy-by-level"') \
        < page.index('id="summary"')  # the figures come right after the headline table
