"""The projection of a reduced run to a suite's full size (reports/projection.py): each step's
cost per unit multiplied out, the parallel steps spread over the nodes, the others not."""

from __future__ import annotations

import pytest

from ppazam_core.cli import main
from ppazam_core.errors import ConfigError
from ppazam_core.results.records import RunRecord, read_run
from reports.projection import project
from suites import load_suite
from test_reports import cond
from test_results_pages import STAMP

SUITE = {"name": "unit-scale", "project_tracks": 800, "project_nodes": [1, 4], "project_cores": 16,
         "levels": ["small"], "queries_per_track": 1, "query_tracks": 0, "fhe_budget_s": 60}


def reduced_run() -> RunRecord:
    """A two-stage CNN measured at 80 tracks in 2 clusters of 40 (3 circuits) on 2 cores."""
    record = RunRecord({**STAMP, "library": "lib", "suite": SUITE,
                        "environment": {"processor": "x86_64", "cpu_count": 2, "python": "3.11", "packages": {}},
                        "stages": [{"stage": "library", "action": "opened", "seconds": 10.0, "detail": ""}],
                        "points": [{"id": "p", "config": {"clusters": {"tracks_per_cluster": 40}}}]})
    build = cond("two-stage-cnn", "fp32", 4, 7, stage="build", tracks=80)
    record.results += [build.row("library_tracks", 80, 1), build.row("train_s", 200.0, 1),
                       build.row("train_s:dataset", 40.0, 1), build.row("train_s:fp32", 60.0, 1),
                       build.row("train_s:quant-w4a4i8", 100.0, 1)]
    for circuit in ("cluster", "intra_000", "intra_001"):
        record.results.append(cond("two-stage-cnn", "fhe", 4, 7, stage=circuit, tracks=80).row("compile_s", 2.0, 1))
        record.latency.append(cond("two-stage-cnn", "fhe", 4, 7, stage=f"keys:{circuit}", tracks=80).row("keys_s", 5.0, 1))
    record.latency.append(cond("two-stage-cnn", "fhe", 4, 7, "small", stage="query", tracks=80).row("median_s", 30.0, 1))
    return record


def test_each_step_is_its_cost_per_unit_multiplied_out(tmp_path):
    reduced_run().write(tmp_path / "run")
    results, latency, run = read_run(tmp_path / "run")
    (p,) = project(run, results, latency)
    assert (p.tracks, p.full_tracks, p.clusters, p.full_clusters, p.queries) == (80, 800, 2, 20, 800)
    steps = {step.name: step for step in p.steps}
    # core-seconds at 800 tracks: render and datasets held both cores, the rest 2 (the artifact threads)
    assert steps["render"].core_s == pytest.approx(10 * 2 * 10) and steps["datasets"].core_s == pytest.approx(800)
    assert steps["train"].core_s == pytest.approx(160 * 2 * 10)
    assert steps["compile"].core_s == pytest.approx(6 * 2 * 21 / 3)  # 21 circuits: 20 clusters and the router
    assert steps["keys"].core_s == pytest.approx(15 * 2 * 21 / 3)
    assert steps["encrypted queries"].core_s == pytest.approx(30 * 2 * 800)
    # more nodes shrink the parallel steps only
    assert steps["render"].wall_s(4, 16) == pytest.approx(200 / 64) and steps["train"].wall_s(4, 16) == 1600
    assert p.wall_hours(1, 16) * 3600 == pytest.approx(12.5 + 50 + 1600 + 42 + 105 + 24000)
    assert p.cpu_hours() == pytest.approx((200 + 800 + 3200 + 84 + 210 + 48000) / 3600)


def test_a_page_states_the_projection_and_a_run_without_one_says_nothing(tmp_path):
    record = reduced_run()
    record.write(tmp_path / "run")
    assert main(["report", "--pages", str(tmp_path / "pages"), f"scale={tmp_path / 'run'}"]) == 0
    section = (tmp_path / "pages" / "scale.md").read_text().split("## Projected cost at full size")[1]
    assert "measured at 80 tracks in 2 clusters, projected to 800 tracks in 20 clusters and 800 encrypted" in section
    total = next(line for line in section.splitlines() if line.startswith("| total"))
    assert [cell.strip() for cell in total.strip("|").split("|")][-3:] == ["14.6", "7.17", "7.16"]
    record.provenance["suite"] = {**SUITE, "project_tracks": 0}
    record.write(tmp_path / "plain")
    assert main(["report", "--pages", str(tmp_path / "pages"), f"plain={tmp_path / 'plain'}"]) == 0
    assert "Projected cost" not in (tmp_path / "pages" / "plain.md").read_text()


def test_the_ppazam_scale_suite_is_run_reduced_with_tracks():
    suite = load_suite("ppazam-scale")
    config = suite.config(4, 7)
    assert config.data.synthetic.n_tracks == 8000 and config.clusters.resolve(8000) == 80
    reduced = suite.with_tracks(800).config(4, 7)
    assert reduced.data.synthetic.n_tracks == 800 and reduced.clusters.resolve(800) == 8
    with pytest.raises(ConfigError, match="n_tracks = 0 is not allowed"):
        suite.with_tracks(0)
    with pytest.raises(ConfigError, match="only for a suite of the synthetic library without library_sizes"):
        load_suite("scaling").with_tracks(800)


@pytest.mark.parametrize("key, value, message", [
    ("project_nodes", [], "project_nodes"), ("project_nodes", [0], "project_nodes"),
    ("project_cores", 0, "project_cores"), ("project_tracks", -1, "project_tracks")])
def test_projection_keys_are_checked(tmp_path, key, value, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"{key} = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=message):
        load_suite(path)


def test_tracks_per_cluster_goes_without_n_clusters():
    from ppazam_core.models.clustering import ClusterConfig
    assert ClusterConfig(tracks_per_cluster=100).resolve(8000) == 80
    with pytest.raises(ConfigError, match="no value beside n_clusters"):
        ClusterConfig(n_clusters=8, tracks_per_cluster=100)
