import builtins
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import ppazam_launcher
from conftest import tone, write_audio
from ppazam_core.cli import _parser, main
from ppazam_core.cli_reference import reference
from ppazam_core.results.records import read_run


def test_library_info_synthetic(cache_dir, capsys):
    assert main(["library", "info", "synthetic", "--n-tracks", "3", "--duration", "4",
                 "--cache-dir", str(cache_dir), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "synthetic-3x4s-seed0" in out and "tracks" in out and "0h 00m 12s" in out


def test_library_info_takes_its_defaults_from_the_config(cache_dir, tmp_path, capsys):
    config = tmp_path / "lib.toml"
    config.write_text("[synthetic]\nn_tracks = 3\nduration_s = 4.0\nseed = 5\n")
    assert main(["library", "info", "synthetic", "--config", str(config), "--seed", "0", "--json",
                 "--cache-dir", str(cache_dir), "--workers", "1"]) == 0  # an explicit option wins
    assert json.loads(capsys.readouterr().out)["name"] == "synthetic-3x4s-seed0"


def test_help_lists_each_command_on_one_line_and_shows_defaults(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out.split("  COMMAND\n")[1].splitlines()
    commands = [line.split()[0] for line in listing]
    assert {"library", "encoder", "export-server", "evaluate", "report", "compare"} <= set(commands)
    assert all(re.match(r"^    [a-z-]+ +\S", line) for line in listing), listing  # name and help on one line
    page = reference()
    assert "(default: 0.01)" in page and "(default: --config's [synthetic] n_tracks, else 64)" in page
    assert "(default: None)" not in page and "(default: False)" not in page and "(default: [])" not in page


@pytest.mark.parametrize("command", [["export-server", "DIR"], ["compile"]], ids=["export-server", "compile"])
def test_commands_with_circuits_offer_only_families_with_an_encrypted_mode(command, capsys):
    parser = _parser()
    assert parser.parse_args([*command, "--family", "embedding-head"]).family == "embedding-head"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--family", "landmark-fp"])  # clear text only
    assert "invalid choice: 'landmark-fp'" in capsys.readouterr().err


def test_commands_print_no_cuda_runtime_chatter(tmp_path):
    # torch.utils.cpp_extension printed it once per process, the spawned workers included
    ppazam = Path(sys.executable).with_name("ppazam")
    done = subprocess.run([str(ppazam), "library", "info", "synthetic", "--n-tracks", "4", "--duration", "4",
                           "--cache-dir", str(tmp_path), "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "synthetic-4x4s-seed0" in done.stdout
    assert "CUDA" not in done.stdout and "CUDA" not in done.stderr


def test_ctrl_c_while_the_command_line_imports_is_one_error_line(monkeypatch, capsys):
    """Was (sixth and seventh fault hunts): a Ctrl-C in the first seconds of a command, while
    torch and Concrete ML import, printed Python's ``KeyboardInterrupt`` traceback, or was lost
    in torch's C initialisation and the command ran on."""
    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "ppazam_core.cli":
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, while the import runs
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    monkeypatch.setattr("ppazam_core.cli.main", lambda: pytest.fail("the command ran on after Ctrl-C"))
    before = signal.getsignal(signal.SIGINT)
    assert ppazam_launcher.main() == 130
    assert capsys.readouterr().err == "error: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before  # Python's own handler back for the command


def test_library_info_folder_lists_skipped_files_as_json(tmp_path, capsys):
    write_audio(tmp_path / "music" / "a.flac", tone(440, 4.0, 16_000), 16_000)
    (tmp_path / "music" / "b.wav").write_bytes(b"")
    assert main(["library", "info", str(tmp_path / "music"), "--json", "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_tracks"] == 1
    assert summary["skipped"] == [{"path": str(tmp_path / "music" / "b.wav"), "reason": "empty file (0 bytes)"}]
    assert summary["same_audio"] == []
    shutil.copy(tmp_path / "music" / "a.flac", tmp_path / "music" / "c [live].flac")  # rich markup stays text
    assert main(["library", "info", str(tmp_path / "music"), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "identical files" in out and "a = c [live]" in out


def test_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert main(["library", "info", str(tmp_path / "nothing-here")]) == 1
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[data]\nepochs = 3\n")
    assert main(["prepare", "--config", str(bad), "--cache-dir", str(tmp_path)]) == 1
    assert "epochs" in capsys.readouterr().err
    # a missing clip is named before any model is looked for (the cache here holds none)
    assert main(["identify", str(tmp_path / "no-clip.wav"), "--cache-dir", str(tmp_path)]) == 1
    assert "no-clip.wav: no such file or folder" in capsys.readouterr().err


def test_prepare_builds_the_data_path_and_writes_a_report(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text("[synthetic]\nn_tracks = 4\nduration_s = 6.0\n"
                      "[data]\ntrain_augmentations = 3\neval_queries = 2\neval_levels = [\"small\", \"large\"]\n")
    out = tmp_path / "report"
    assert main(["prepare", "--config", str(config), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--workers", "1"]) == 0
    report = json.loads((out / "prepare.json").read_text())
    assert [(d["split"], d["policy"], d["rows"]) for d in report["datasets"]] == [
        ("train", "mixed", 60), ("eval", "small", 8), ("eval", "large", 8)]  # 6-s tracks at 150 clips a minute: 15
    assert report["library"]["n_tracks"] == 4 and len(report["config_hash"]) == 16
    assert report["environment"]["packages"]["concrete-ml"] == "1.9.0"
    assert "datasets" in capsys.readouterr().out


def test_prepare_names_the_files_it_skipped(tmp_path, capsys):
    folder = tmp_path / "music"
    for i, hz in enumerate((220.0, 330.0)):
        write_audio(folder / f"song{i}.wav", tone(hz, 6.0, 16000), 16000)
    (folder / "broken.wav").write_bytes(b"not audio at all" * 64)
    config = tmp_path / "small.toml"
    config.write_text("[data]\ntrain_augmentations = 2\ntrain_clips_per_minute = 0\neval_queries = 1\n"
                      "eval_levels = [\"small\"]\n")
    assert main(["prepare", "--library", str(folder), "--config", str(config), "--out", str(tmp_path / "report"),
                 "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]) == 0
    assert f"skipped {folder / 'broken.wav'}:" in capsys.readouterr().out


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
    results, _, run = read_run(out)
    assert run["family"] == "mfcc-logreg" and list(results.loc[results["metric"] == "top1", "mode"]) == ["fp32", "fhe-sim"]
    assert "cluster_accuracy" not in set(results["metric"]) and run["circuits"]["head"]["pbs_count"] == 0
    assert main(["compile", "--family", "mfcc-logreg", *common]) == 0  # compiled by evaluate: its costs, no PBS
    printed = capsys.readouterr().out
    assert "circuits of mfcc-logreg for synthetic-6x8s-seed7" in printed and "head" in printed
    assert "calibrating" not in printed
    assert main(["evaluate", "--family", "landmark-fp", "--mode", "fhe", *common]) == 1
    assert "allowed: fp32" in capsys.readouterr().err
