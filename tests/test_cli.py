import json

import pytest

from conftest import tone, write_audio
from ppazam_core.cli import main


def test_library_info_synthetic(cache_dir, capsys):
    assert main(["library", "info", "synthetic", "--n-tracks", "3", "--duration", "4",
                 "--cache-dir", str(cache_dir), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "synthetic-3x4s-seed0" in out and "tracks" in out and "0h 00m 12s" in out


def test_library_info_folder_lists_skipped_files_as_json(tmp_path, capsys):
    write_audio(tmp_path / "music" / "a.flac", tone(440, 4.0, 16_000), 16_000)
    (tmp_path / "music" / "b.wav").write_bytes(b"")
    assert main(["library", "info", str(tmp_path / "music"), "--json", "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_tracks"] == 1
    assert summary["skipped"] == [{"path": str(tmp_path / "music" / "b.wav"), "reason": "empty file (0 bytes)"}]


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert main(["library", "info", str(tmp_path / "nothing-here")]) == 1
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nepochs = 3\n")
    assert main(["prepare", "--config", str(bad), "--cache-dir", str(tmp_path)]) == 1
    assert "epochs" in capsys.readouterr().err


def test_prepare_builds_the_data_path_and_writes_a_report(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text("[synthetic]\nn_tracks = 4\nduration_s = 6.0\n"
                      "[data]\ntrain_augmentations = 3\neval_queries = 2\neval_levels = [\"small\", \"large\"]\n")
    out = tmp_path / "report"
    assert main(["prepare", "--config", str(config), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--workers", "1"]) == 0
    report = json.loads((out / "prepare.json").read_text())
    assert [(d["split"], d["policy"], d["rows"]) for d in report["datasets"]] == [
        ("train", "mixed", 12), ("eval", "small", 8), ("eval", "large", 8)]
    assert report["library"]["n_tracks"] == 4 and len(report["config_hash"]) == 16
    assert report["environment"]["packages"]["concrete-ml"] == "1.9.0"
    assert "datasets" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "library" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["library", "info"])


def test_evaluate_another_family(tiny_config, session_cache, tmp_path, capsys):
    _, config_path = tiny_config
    common = ["--config", str(config_path), "--cache-dir", str(session_cache), "--workers", "1"]
    assert main(["train", "--family", "mfcc-logreg", *common]) == 0
    assert "mfcc-logreg for synthetic-6x8s-seed7" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["evaluate", "--family", "mfcc-logreg", "--mode", "fp32", "--mode", "fhe-sim", "--out", str(out),
                 *common]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["family"] == "mfcc-logreg" and [r["mode"] for r in report["results"]] == ["fp32", "fhe-sim"]
    assert report["results"][0]["cluster_accuracy"] is None and report["circuits"]["head"]["pbs_count"] == 0
    assert main(["evaluate", "--family", "landmark-fp", "--mode", "fhe", *common]) == 1
    assert "allowed: fp32" in capsys.readouterr().err
