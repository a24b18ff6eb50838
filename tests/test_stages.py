"""The bench's stage builder on the tiny library (the quick suite's library)."""

import json
import shutil

import numpy as np

from conftest import tone, write_audio
from fixtures import stages as stages_module
from fixtures.prediction_store import STORED_MODES, prediction_folder
from fixtures.stages import Stages
from ppazam_core.recognition import Mode
from suites import load_suite


def test_query_tracks_queries_the_same_seeded_choice_of_tracks(tiny_library, session_cache):
    config = load_suite("quick").config(4, 6)
    every = Stages("synthetic", session_cache, workers=1).queries("embedding-head", config, "small")
    capped = [Stages("synthetic", session_cache, workers=1, query_tracks=2).queries("embedding-head", config, "small")
              for _ in range(2)]
    queried = np.unique(capped[0].y)
    assert len(queried) == 2 and len(capped[0]) == 2 * config.data.eval_queries
    assert capped[0].track_ids == every.track_ids == tuple(t.id for t in tiny_library)
    np.testing.assert_array_equal(capped[0].y, capped[1].y)
    np.testing.assert_array_equal(np.asarray(capped[0].X), np.asarray(every.X[np.isin(every.y, queried)]))


def test_a_conditions_clips_are_augmented_once_for_every_front_end_of_the_suite(tiny_library, tmp_path, monkeypatch):
    config = load_suite("quick").config(4, 6)
    built = []
    real = stages_module.build_datasets
    monkeypatch.setattr(stages_module, "build_datasets", lambda library, specs, *a: built.append(len(specs)) or
                        real(library, specs, *a))
    stages = Stages("synthetic", tmp_path, workers=1,
                    families=("embedding-head", "mfcc-logreg", "embedding-prototypes", "embedding-knn"))
    logmel = stages.queries("embedding-head", config, "clean")
    mfcc = stages.queries("mfcc-logreg", config, "clean")
    # one build of the clips: the embedding families share a front-end, mfcc-logreg has its own, and
    # embedding-knn cuts the same clips into the encoder's 1-s windows
    assert built == [3]
    assert "the same clips through 2 more front-ends" in stages.log[-1].detail
    assert stages.queries("embedding-prototypes", config, "clean") is logmel
    assert logmel.X.shape[2:] != mfcc.X.shape[2:] and np.array_equal(logmel.y, mfcc.y)
    windows = stages.queries("embedding-knn", config, "clean")
    assert built == [3] and windows.segments == 5 and logmel.segments == 1
    assert np.array_equal(windows.y[::windows.segments], logmel.y)


def test_a_later_session_reads_the_rankings_of_modes_that_encrypt_nothing_from_the_store(trained, clean_queries,
                                                                                          tmp_path, monkeypatch):
    made = []
    real = stages_module.predict
    monkeypatch.setattr(stages_module, "predict", lambda model, queries, mode, *a: made.append(mode) or
                        real(model, queries, mode, *a))
    first = Stages("synthetic", tmp_path, workers=1)
    rankings = {mode: first.predict(trained, clean_queries, mode) for mode in (Mode.FP32, Mode.QUANT)}
    outside = first.predict(trained, clean_queries, Mode.FP32, in_library=False)  # as for distractors: no truth
    assert (first.predictions_made, first.predictions_read, len(made)) == (3, 0, 3)

    later = Stages("synthetic", tmp_path, workers=1)
    for mode, ranked in rankings.items():
        read = later.predict(trained, clean_queries, mode)
        for name in ("rows", "truth", "ranking", "confidence", "cluster_truth", "cluster_predicted", "seconds"):
            np.testing.assert_array_equal(getattr(read, name), getattr(ranked, name))
    read = later.predict(trained, clean_queries, Mode.FP32, in_library=False)
    assert read.cluster_truth is None and outside.cluster_truth is None
    np.testing.assert_array_equal(read.cluster_predicted, outside.cluster_predicted)
    assert (later.predictions_made, later.predictions_read, len(made)) == (0, 3, 3)

    later.predict(trained, clean_queries, Mode.FP32, np.array([0, 1]))  # other rows: other predictions
    assert (later.predictions_made, len(made)) == (1, 4)
    refreshing = Stages("synthetic", tmp_path, workers=1, refresh=True)
    refreshing.predict(trained, clean_queries, Mode.FP32)
    assert (refreshing.predictions_made, refreshing.predictions_read, len(made)) == (1, 0, 5)

    folder = prediction_folder(tmp_path, trained, clean_queries, Mode.FP32, None, True)
    about = json.loads((folder / "about.json").read_text())  # what the folder ranks, for whoever looks
    assert (about["family"], about["mode"], about["queries"]) == (trained.family, "fp32", clean_queries.folder.name)
    (folder / "predictions.npz").write_bytes(b"not a numpy archive")
    damaged = Stages("synthetic", tmp_path, workers=1)
    again = damaged.predict(trained, clean_queries, Mode.FP32)
    np.testing.assert_array_equal(again.ranking, rankings[Mode.FP32].ranking)
    assert damaged.predictions_made == 1
    assert [(e.action, e.detail.split(": ")[0]) for e in damaged.log] == [("damaged", str(folder / "predictions.npz"))]
    subset = prediction_folder(tmp_path, trained, clean_queries, Mode.FP32, np.array([0, 1]), True)
    shutil.copy(folder / "predictions.npz", subset / "predictions.npz")  # readable, but another query set
    damaged.predict(trained, clean_queries, Mode.FP32, np.array([0, 1]))
    assert damaged.predictions_made == 2 and "not the 2 asked for" in damaged.log[-1].detail
    assert Mode.FHE not in STORED_MODES  # truly encrypted queries are measured in every run


def test_a_folder_librarys_skipped_files_and_copies_are_kept_for_the_report(tmp_path):
    music = tmp_path / "music"
    write_audio(music / "a.flac", tone(440, 4.0, 16_000), 16_000)
    write_audio(music / "b.flac", tone(550, 4.0, 16_000), 16_000)
    shutil.copy(music / "a.flac", music / "c.flac")
    (music / "d.wav").write_bytes(b"")
    stages = Stages(str(music), tmp_path / "cache", workers=1)
    library = stages.library(load_suite("quick").config(4, 6))
    assert stages.library_warnings == {library.name: [f"skipped {music / 'd.wav'}: empty file (0 bytes)",
                                                      "tracks a, c are identical files: no family can tell them apart"]}
