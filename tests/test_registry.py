"""The family registry: built-in families are records like any other, a family installed from
outside the package (``examples/band_energy_family``, through its ``ppazam.families`` entry
point) runs through a bench suite, ``report`` and ``compare``, and bad registrations are clear
errors."""

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_SPEC
from ppazam_core.config import ExperimentConfig
from ppazam_core.errors import ConfigError
from ppazam_core.families import registry
from ppazam_core.families.registry import Family, FamilyTable, family_names, get_family, register
from ppazam_core.recognition import Mode
from ppazam_core.store import canonical_json

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "examples" / "band_energy_family"
TOY_SUITE = f"""
description = "the band-energy example family, installed from outside ppazam"
library = "synthetic"
families = ["band-energy"]
modes = ["fp32", "quant", "fhe-sim", "fhe"]
levels = ["clean"]
gains = [-20]
query_lengths = []
queries_per_track = 2
fhe_budget_s = 10
latency_rounds = 1
distractor_tracks = 2

[experiment.synthetic]
seed = {TINY_SPEC.seed}
n_tracks = {TINY_SPEC.n_tracks}
duration_s = {TINY_SPEC.duration_s}

[experiment.data]
train_augmentations = 24

[experiment.band_energy]
n_bits = 5
"""


def test_the_built_in_families_are_registry_records():
    names = family_names()
    assert names[0] == "two-stage-cnn"  # the default family
    assert {"two-stage-cnn-oblivious", "embedding-head", "embedding-head-top1", "mfcc-logreg", "landmark-fp",
            "embedding-knn"} <= set(names)
    config = ExperimentConfig()
    assert get_family("two-stage-cnn").sweeps_rounding and get_family("two-stage-cnn").stages
    assert get_family("embedding-head").bit_width(config) == config.table("head").n_bits
    assert get_family("landmark-fp").bit_width(config) == 32 and get_family("landmark-fp").modes == (Mode.FP32,)
    with pytest.raises(ConfigError, match="family = 'nope' is not allowed; allowed: two-stage-cnn"):
        get_family("nope")


def test_a_family_table_is_read_from_toml_and_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[head]\nn_bits = 6\n[knn]\nneighbours = 3\n[mfcc]\nn_mfcc = 20\n")
    config = ExperimentConfig.from_toml(path)
    assert config.table("head").n_bits == 6 and config.table("knn").neighbours == 3
    assert config.table("mfcc") == ExperimentConfig().table("mfcc")
    # a table left at its family's defaults is not part of the config (nor of its hash), so a
    # plug-in family installed or removed changes no other configuration
    stored = json.loads(canonical_json(config))
    assert set(stored["tables"]) == {"head", "knn"} and canonical_json(ExperimentConfig()).count("tables\":{}") == 1
    assert ExperimentConfig.from_canonical(stored) == config
    stored["tables"]["uninstalled_family"] = {"x": 1}  # a model trained while a plug-in was installed
    assert ExperimentConfig.from_canonical(stored) == config
    path.write_text("[head]\nbits = 6\n")
    with pytest.raises(ConfigError, match="head = 'bits' is not allowed"):
        ExperimentConfig.from_toml(path)
    path.write_text("[nobody]\nx = 1\n")
    with pytest.raises(ConfigError, match="top-level table = 'nobody' is not allowed; allowed: .*head"):
        ExperimentConfig.from_toml(path)
    with pytest.raises(ConfigError, match="family config table = 'nobody'"):
        config.table("nobody")


@dataclass(frozen=True)
class OtherHead:
    n_bits: int = 3


def _noop(*args):
    raise AssertionError("not called")


def test_bad_registrations_are_refused(monkeypatch):
    monkeypatch.setattr(registry, "_registry", dict(registry.families()))
    with pytest.raises(ConfigError, match="family name = 'Bad Name'"):
        Family("Bad Name", _noop, _noop)
    with pytest.raises(ConfigError, match="modes of family x"):
        Family("x", _noop, _noop, modes=())
    with pytest.raises(ConfigError, match="'embedding-head' is registered twice"):
        register(Family("embedding-head", _noop, _noop))
    with pytest.raises(ConfigError, match=r"both claim config table \[head\]"):
        register(Family("my-head", _noop, _noop, table=FamilyTable("head", OtherHead)))
    assert register(replace(get_family("embedding-head"))) == get_family("embedding-head")  # the same record again


def test_a_broken_entry_point_is_left_out_and_named(monkeypatch, caplog):
    class Broken:
        name, value = "broken", "missing_module:SPEC"

        def load(self):
            raise ModuleNotFoundError("No module named 'missing_module'")

    monkeypatch.setattr(registry, "_registry", {})
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [Broken()])
    monkeypatch.setattr(registry, "import_module", lambda name: None)  # built-ins already imported
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        assert registry.families() == {}
    assert "family entry point broken (missing_module:SPEC) left out: ModuleNotFoundError" in caplog.text


def test_a_family_installed_from_outside_runs_through_the_bench_report_and_compare(tiny_library, session_cache,
                                                                                    tmp_path):
    """pip-installs the example family (its own pyproject.toml and entry point) into a folder on
    PYTHONPATH and runs it as a user would: a suite naming it, then ``report`` and ``compare``."""
    source = shutil.copytree(TOY, tmp_path / "band_energy_family")
    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                                "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site), "PPAZAM_CACHE": str(session_cache)}
    suite = tmp_path / "toy.toml"
    suite.write_text(TOY_SUITE)
    run = tmp_path / "run"
    bench = subprocess.run([sys.executable, "-m", "pytest", "bench", "--suite", str(suite), "--out", str(run), "-q",
                            "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-2000:]
    assert " skipped" not in bench.stdout.splitlines()[-1]
    results = pd.read_csv(run / "results.csv")
    toy = results[results.family == "band-energy"]
    top1 = toy[(toy.metric == "top1") & (toy.level == "clean")].set_index("mode").value
    assert set(top1.index) == {"fp32", "quant", "fhe-sim", "fhe"} and (top1 > 1 / TINY_SPEC.n_tracks).all()
    assert {"roc_auc", "client_scores", "pbs_count"} <= set(toy.metric)  # open set, privacy ledger, circuit
    assert (toy.bit_width == 5).all() and (toy.rounding_bits == 0).all()  # named from its [band_energy] table
    assert [p["id"] for p in json.loads((run / "run.json").read_text())["points"]] == ["band-energy-w5-r0"]
    ppazam = [sys.executable, "-c", "import sys; from ppazam_core.cli import main; sys.exit(main(sys.argv[1:]))"]
    report = subprocess.run([*ppazam, "report", str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "band-energy" in (run / "report.html").read_text() and "band-energy" in \
        (run / "tables" / "privacy-ledger.md").read_text()
    compare = subprocess.run([*ppazam, "compare", str(run), str(run)], env=env, capture_output=True, text=True,
                             timeout=300)
    assert compare.returncode == 0 and "passed" in compare.stdout, compare.stdout[-2000:] + compare.stderr[-2000:]
