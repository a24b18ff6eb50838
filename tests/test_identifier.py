"""A tiny synthetic library trained end to end, then identified, reloaded and mistreated."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TINY_SPEC, TINY_TOML, tone, write_audio
from ppazam_core.cli import main
from ppazam_core.config import ExperimentConfig
from ppazam_core.errors import ArtifactError, AudioError, ConfigError
from ppazam_core.identifier import Identifier
from ppazam_core.recognition import evaluate
from ppazam_core.pipeline import train_identifier


@pytest.mark.parametrize("mode", ["fp32", "quant"])
def test_tiny_library_is_identified_well_above_chance(trained, clean_queries, mode):
    result = evaluate(trained, clean_queries, mode)
    assert result.n == 30 and result.cluster_top_k == 2
    assert result.top1 >= 0.5  # chance is 1/6
    assert result.top3 >= result.top1 and 0.0 <= result.cluster_accuracy <= 1.0


def test_reloading_gives_identical_predictions(trained, clean_queries):
    again = Identifier(trained.folder)
    for mode in ("fp32", "quant"):
        np.testing.assert_array_equal(trained.scores(clean_queries.X, mode).track_scores,
                                      again.scores(clean_queries.X, mode).track_scores)


def test_second_training_run_loads_from_the_store(trained, tiny_library, tiny_config, session_cache, monkeypatch):
    import ppazam_core.pipeline as pipeline

    monkeypatch.setattr(pipeline, "train_classifier", lambda *a, **k: pytest.fail("retrained a stored model"))
    config, _ = tiny_config
    assert train_identifier(tiny_library, config, session_cache) == trained.folder


def test_another_bit_width_trains_only_qat_twins(trained, tiny_library, tiny_config, session_cache, monkeypatch):
    import ppazam_core.pipeline as pipeline

    trained_now = []
    real = pipeline.train_classifier
    monkeypatch.setattr(pipeline, "train_classifier",
                        lambda model, X, y, config, description: trained_now.append(description) or
                        real(model, X, y, config, description))
    config, _ = tiny_config
    other = Identifier(train_identifier(tiny_library, replace(config, model=replace(config.model, weight_bits=3)),
                                        session_cache))
    assert other.folder != trained.folder
    assert trained_now and all(d.startswith("quant-w3") for d in trained_now)
    np.testing.assert_array_equal(other.assignment, trained.assignment)
    for name in ("cluster", "intra_000"):
        for key, value in torch.load(trained.folder / "fp32" / f"{name}.pt", weights_only=True).items():
            torch.testing.assert_close(torch.load(other.folder / "fp32" / f"{name}.pt", weights_only=True)[key], value)
    assert json.loads((other.folder / "identifier.json").read_text())["timings"]["fp32_s"] > 0


def test_cluster_top_k_widens_the_search(trained, clean_queries):
    narrow = trained.scores(clean_queries.X, "fp32", cluster_top_k=1).track_scores
    wide = trained.scores(clean_queries.X, "fp32", cluster_top_k=2).track_scores
    assert np.isinf(narrow).sum() > 0 and np.isinf(wide).sum() == 0


def test_long_queries_combine_segments(trained, tiny_library):
    audio = tiny_library.load(tiny_library.tracks[2], 16_000, offset_s=1.0, duration_s=6.5)
    matches = trained.identify(audio, "fp32")
    assert len(matches) == 3 and matches[0].score >= matches[1].score >= matches[2].score
    segment_scores = trained.scores(trained.front_end(audio[:96_000].reshape(2, 48_000))).track_scores
    assert matches[0].track_id == trained.track_ids[int(np.maximum(segment_scores, -1e3).mean(0).argmax())]


def test_majority_vote_breaks_ties_by_mean_score(trained):
    ids = trained.track_ids
    scores = np.full((3, 6), -5.0)
    scores[0, 1], scores[1, 4], scores[2, 4] = -0.1, -0.2, -0.3  # track 4 has two votes, track 1 the best mean
    assert [m.track_id for m in trained.combine(scores, rule="majority-vote")][:2] == [ids[4], ids[1]]
    assert trained.combine(scores, rule="mean-log-prob")[0].track_id == ids[4]
    tie = np.full((2, 6), -5.0)
    tie[0, 1], tie[1, 3] = -0.1, -0.4  # one vote each: the better mean wins
    tie[1, 1] = -1.0
    winner = trained.combine(tie, rule="majority-vote")[0]
    assert (winner.track_id, winner.votes) == (ids[1], 1)
    with pytest.raises(ConfigError, match="combine"):
        trained.combine(tie, rule="loudest")


def test_bad_queries_are_clear_errors(trained):
    with pytest.raises(AudioError, match="at least 1 s"):
        trained.identify(np.zeros(8_000, dtype=np.float32) + 0.1)
    with pytest.raises(AudioError, match="silent"):
        trained.identify(np.zeros(16_000 * 4, dtype=np.float32))


def test_missing_or_incomplete_model_folder(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        Identifier(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(ArtifactError, match="incomplete"):
        Identifier(tmp_path / "half")


def test_cli_train_and_identify(trained, tiny_config, session_cache, tmp_path, capsys):
    _, toml = tiny_config
    common = ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1"]
    assert main(["train", *common]) == 0
    assert main(["evaluate", *common, "--mode", "fp32", "--mode", "quant", "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert [(r["mode"], r["level"], r["n"]) for r in report["results"]] == [("fp32", "clean", 30), ("quant", "clean", 30)]
    assert report["config_hash"] == trained.folder.name
    assert report["training"]["cluster_sizes"] == trained.manifest["cluster_sizes"]
    assert "git_commit" in report and (tmp_path / "report" / "evaluation.csv").is_file()
    clips = tmp_path / "clips"
    write_audio(clips / "short.wav", tone(440, 0.5, 16_000), 16_000)
    from ppazam_core.library import synthetic_library

    audio = synthetic_library(TINY_SPEC, session_cache).load(synthetic_library(TINY_SPEC, session_cache).tracks[0], 16_000)
    write_audio(clips / "query.flac", audio[16_000:16_000 * 5], 16_000)
    assert main(["identify", str(clips), *common]) == 0
    out = capsys.readouterr().out
    assert "short.wav: skipped" in out and "query.flac" in out
    ranked = [line.split()[1] for line in out.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert len(ranked) == 3 and set(ranked) <= set(trained.track_ids)
    untrained = tmp_path / "other.toml"
    untrained.write_text(TINY_TOML.replace("epochs = 12", "epochs = 13"))
    assert main(["identify", str(clips / "query.flac"), "--config", str(untrained), "--cache-dir",
                 str(session_cache)]) == 1
    assert "ppazam train" in capsys.readouterr().err


def test_training_is_reproducible_from_scratch(trained, tiny_library, tiny_config, tmp_path, clean_queries):
    config, _ = tiny_config
    again = Identifier(train_identifier(tiny_library, config, tmp_path / "fresh-cache", workers=1))
    assert again.folder.name == trained.folder.name
    np.testing.assert_array_equal(again.assignment, trained.assignment)
    for mode in ("fp32", "quant"):
        np.testing.assert_array_equal(again.scores(clean_queries.X, mode).track_scores,
                                      trained.scores(clean_queries.X, mode).track_scores)


def test_a_config_file_keeps_the_defaults_of_keys_it_leaves_out(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text("[qat]\nepochs = 3\n[model]\nweight_bits = 3\n")
    config = ExperimentConfig.from_toml(path)
    default = ExperimentConfig()
    assert config.qat.epochs == 3 and config.qat.learning_rate == default.qat.learning_rate
    assert config.model.weight_bits == 3 and config.model.blocks == default.model.blocks
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert ExperimentConfig.from_toml(empty).trained_parts() == default.trained_parts()


def test_queries_are_cut_as_the_bench_cuts_them(trained, tiny_library):
    """1 s: one segment, its frames repeated; 3 s: one; 6 s: three, every half segment."""
    audio = tiny_library.load(tiny_library.tracks[2], 16_000, offset_s=0.5, duration_s=6.0)
    assert [trained.patches(audio[: int(s * 16_000)]).shape[0] for s in (1.0, 3.0, 4.4, 6.0)] == [1, 1, 1, 3]
    np.testing.assert_array_equal(trained.patches(audio)[1], trained.patches(audio[24_000:72_000])[0])
    assert trained.identify(audio[:16_000])[0].track_id in trained.track_ids
