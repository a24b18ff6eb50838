"""``embedding-prototypes`` and ``ppazam enroll``: a track's prototype is the normalized mean
embedding of its clean enrollment segments, songs are added and removed without training, and
an enrolled model identifies them in every mode."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import write_audio
from ppazam_core.audio.decode import load_audio
from ppazam_core import cli
from ppazam_core.cli import main
from ppazam_core.families import family_segment_s, get_family, train_family
from ppazam_core.families.embedding_prototypes import FAMILY, EmbeddingPrototypes, enrollment_segments
from ppazam_core.families.enrollment import enrolled_manifest
from ppazam_core.queries.features import FrontEnd
from ppazam_core.audio.library import Library, scan_folder, synthetic_distractors
from ppazam_core.models.encoder.references import reference_embeddings
from ppazam_core.recognition import Mode, predict, sample_queries
from test_families import queries_for
from test_identifier import ranked_ids


def load_family(family, folder):
    return get_family(family).load(folder)


def enrolled_track(path, config):
    """The track ``ppazam enroll`` makes of one file."""
    (track,) = scan_folder(path.parent, config.data.segment_s, 1, only=path).tracks
    return track


@pytest.fixture(scope="module")
def prototypes(tiny_library, tiny_config, session_cache):
    config, _ = tiny_config
    return train_family(FAMILY, tiny_library, config, session_cache, workers=1)


@pytest.fixture(scope="module")
def new_songs(tiny_config, session_cache, tmp_path_factory):
    """Two songs the model never saw (the generator under another seed), as files of a folder."""
    config, _ = tiny_config
    folder = tmp_path_factory.mktemp("new-songs")
    for track in synthetic_distractors(config.data.synthetic, 2, session_cache):
        shutil.copy(track.source, folder / f"new_{track.id}.flac")
    return folder


def test_a_prototype_is_the_normalized_mean_embedding_of_clean_segments(prototypes, tiny_library, tiny_config):
    config, _ = tiny_config
    track = tiny_library.tracks[3]
    clips = enrollment_segments(tiny_library.load(track, 16_000), 16_000, config.data.segment_s, 5)
    assert clips.shape == (5, 48_000)
    mean = prototypes.embedder.embed_patches(FrontEnd(prototypes.features)(clips)).mean(axis=0)
    np.testing.assert_allclose(prototypes.prototypes[3], mean / np.linalg.norm(mean), atol=1e-6)
    assert prototypes.enroll_s.shape == (len(tiny_library),) and (prototypes.enroll_s > 0).all()


def test_every_mode_ranks_as_the_clear_layer(prototypes, tiny_library, tiny_config, session_cache):
    config, _ = tiny_config
    queries = queries_for(FAMILY, tiny_library, config, session_cache)
    clear = predict(prototypes, queries, Mode.FP32)
    assert clear.hits(1).mean() >= 0.6  # chance is 1/6
    simulated = predict(prototypes, queries, Mode.FHE_SIM)
    assert np.array_equal(predict(prototypes, queries, Mode.QUANT).ranking[:, 0], simulated.ranking[:, 0])
    assert (simulated.ranking[:, 0] == clear.ranking[:, 0]).mean() >= 0.9  # 8-bit weights and inputs
    encrypted = predict(prototypes, queries, Mode.FHE, sample_queries(queries, seed=0, count=2))
    assert np.array_equal(encrypted.ranking[:, 0], simulated.take(encrypted.rows).ranking[:, 0])


def test_enroll_adds_and_removes_songs_without_training(prototypes, new_songs, tiny_library, tiny_config, session_cache,
                                                       tmp_path, capsys):
    _, toml = tiny_config
    common = ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1"]
    into = tmp_path / "enrolled"
    assert main(["enroll", str(new_songs), "--into", str(into), *common]) == 0
    out = capsys.readouterr().out
    assert "added new_syn00000" in out and "added new_syn00001" in out and "2 track(s) added, 0 removed: 8 tracks" in out
    enrolled = EmbeddingPrototypes(into)
    assert enrolled.track_ids == (*prototypes.track_ids, "new_syn00000", "new_syn00001")
    np.testing.assert_array_equal(enrolled.prototypes[:6], prototypes.prototypes)  # nothing retrained
    manifest = json.loads((into / "model.json").read_text())
    assert [e["id"] for e in manifest["enrolled"]] == ["new_syn00000", "new_syn00001"]
    assert all(e["enroll_s"] > 0 and len(e["sha256"]) == 64 for e in manifest["enrolled"])
    assert manifest["titles"]["syn00000"] == tiny_library.tracks[0].title and len(manifest["sha256"]) == 8

    clip = write_audio(tmp_path / "clip.wav", load_audio(new_songs / "new_syn00001.flac", 16_000)[16_000:80_000],
                       16_000)
    for mode in ("fp32", "fhe-sim", "fhe"):
        assert main(["identify", str(clip), "--model", str(into), "--mode", mode]) == 0
        out = capsys.readouterr().out
        assert ranked_ids(out)[0] == "new_syn00001", out
        assert mode != "fhe" or "ms/PBS" in out  # the cost table of a PBS-free layer

    one_song = new_songs / "new_syn00000.flac"
    assert main(["enroll", str(one_song), "--into", str(into), *common]) == 1
    assert "new_syn00000 are already enrolled" in capsys.readouterr().err
    copy = tmp_path / "copies" / "same_song.flac"
    copy.parent.mkdir()
    shutil.copy(new_songs / "new_syn00001.flac", copy)
    assert main(["enroll", str(copy), "--into", str(into), *common]) == 1
    assert "same_song is the audio of new_syn00001" in capsys.readouterr().err
    shutil.copy(tiny_library.tracks[3].source, copy)  # a song the model was trained on
    assert main(["enroll", str(copy), "--into", str(into), *common]) == 1
    assert "same_song is the audio of syn00003" in capsys.readouterr().err
    silence = write_audio(tmp_path / "quiet" / "silence.wav", np.zeros(16_000 * 4, dtype=np.float32), 16_000)
    assert main(["enroll", str(silence), "--into", str(into), *common]) == 1
    assert "silence are silent" in capsys.readouterr().err
    assert main(["enroll", "--into", str(into), "--remove", "new_syn00000", "--remove", "syn00002", *common]) == 0
    assert EmbeddingPrototypes(into).track_ids == ("syn00000", "syn00001", "syn00003", "syn00004", "syn00005",
                                                   "new_syn00001")
    mixed = tmp_path / "mixed"  # a removed song comes back; a DC-only file beside it is skipped, not blocking
    mixed.mkdir()
    shutil.copy(one_song, mixed / one_song.name)
    write_audio(mixed / "dc.wav", np.full(16_000 * 4, 0.4, dtype=np.float32), 16_000)
    brief = np.zeros(16_000 * 12, dtype=np.float32)  # eighth hunt: a mostly silent file aborted the folder
    brief[:16_000] = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(16_000) / 16_000)
    write_audio(mixed / "brief.wav", brief, 16_000)
    assert main(["enroll", str(mixed), "--into", str(into), *common]) == 0
    out = capsys.readouterr().out
    assert "dc.wav: silent" in out and "brief.wav: only 1 s of it is above the silence level" in out
    assert EmbeddingPrototypes(into).track_ids[-1] == "new_syn00000"


def test_an_enrolled_song_s_file_is_recorded_by_its_absolute_path(prototypes, new_songs, monkeypatch):
    """Was (seventh fault hunt): ``enroll new --into M`` recorded ``new/n100.wav``, so
    ``calibrate --model M`` run from another folder said the song's file was gone."""
    monkeypatch.chdir(new_songs.parent)
    song = scan_folder(Path(new_songs.name), only=Path(new_songs.name) / "new_syn00000.flac").tracks[0]
    assert not Path(song.source).is_absolute()
    manifest = enrolled_manifest(prototypes, Library("new", (song,)), (), [0.1], {"shots": 5},
                                 {"last_enroll_s": 0.1, "last_compile_s": 0.0})
    assert manifest["enrolled"][-1]["source"] == str(new_songs / "new_syn00000.flac")


def test_enroll_refuses_what_it_cannot_do(prototypes, new_songs, tiny_config, session_cache, tmp_path, capsys):
    _, toml = tiny_config
    common = ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1"]
    assert main(["enroll", "--into", str(tmp_path / "x"), *common]) == 1
    assert "nothing to do" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["enroll", str(new_songs), "--into", str(tmp_path / "busy"), *common]) == 1
    assert "neither an enrolled model nor a new or empty folder" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert main(["enroll", str(new_songs), "--into", str(prototypes.folder), *common]) == 1  # the store's model
    assert "holds a model enroll did not write" in capsys.readouterr().err
    assert main(["enroll", "--into", str(tmp_path / "y"), "--remove", "nope", *common]) == 1
    assert "cannot remove nope: not enrolled" in capsys.readouterr().err
    assert main(["enroll", "--into", str(tmp_path / "z"), *common, "--remove", "syn00000", "--remove", "syn00001",
                 "--remove", "syn00002", "--remove", "syn00003", "--remove", "syn00004"]) == 1
    assert "at least two tracks" in capsys.readouterr().err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_enroll_into_a_model_refuses_options_naming_another_base(prototypes, new_songs, tiny_config, session_cache,
                                                                   tmp_path, capsys, monkeypatch):
    """Was: ``--family``, ``--config`` and ``--library`` were silently ignored once ``--into``
    held a model, so a user who asked for another family or configuration got the old one; then
    the model's own library was refused too."""
    config, toml = tiny_config
    common = ["--cache-dir", str(session_cache), "--workers", "1"]
    into = tmp_path / "enrolled"
    assert main(["enroll", str(new_songs / "new_syn00000.flac"), "--into", str(into), "--config", str(toml), *common]) == 0
    before = (into / "model.json").read_text()
    other = tmp_path / "other.toml"
    other.write_text(toml.read_text().replace("cluster_top_k = 2", "cluster_top_k = 1"))
    scanned = []
    monkeypatch.setattr(cli, "open_library", lambda *a, **k: scanned.append(a) or pytest.fail("scanned"))
    for options, named in ([["--family", "embedding-knn"], "--family embedding-knn"],
                           [["--config", str(other)], f"--config {other}"],
                           [["--library", str(new_songs)], f"--library {new_songs}"]):  # other songs, too few: not scanned
        assert main(["enroll", str(new_songs / "new_syn00001.flac"), "--into", str(into), *options, *common]) == 1
        err = capsys.readouterr().err
        assert f"already holds an enrolled {FAMILY} model; {named}" in err and "leave them out" in err
        assert (into / "model.json").read_text() == before
    monkeypatch.undo()
    assert not scanned
    # the same family and configuration are what the folder holds (the same settings written
    # otherwise: tables reordered, an integer for a float): accepted
    same = tmp_path / "same.toml"
    same.write_text("[identify]\ncluster_top_k = 2\n" + toml.read_text().replace("[identify]\ncluster_top_k = 2", "")
                    .replace("duration_s = 8.0", "duration_s = 8"))
    assert "duration_s = 8\n" in same.read_text()
    assert main(["enroll", str(new_songs / "new_syn00001.flac"), "--into", str(into), "--family", FAMILY,
                 "--config", str(same), *common]) == 0
    assert EmbeddingPrototypes(into).track_ids[-2:] == ("new_syn00000", "new_syn00001")
    # and so is the library the model was trained on (fifth hunt: it was refused)
    assert main(["enroll", "--into", str(into), "--library", "synthetic", "--remove", "new_syn00000", *common]) == 0
    assert EmbeddingPrototypes(into).track_ids[-1] == "new_syn00001" and "new_syn00000" not in \
        EmbeddingPrototypes(into).track_ids


def test_an_enrolled_model_gets_its_own_open_set_rule(prototypes, new_songs, tiny_config, session_cache, tmp_path,
                                                      capsys):
    _, toml = tiny_config
    common = ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1"]
    songs, into = tmp_path / "songs", tmp_path / "enrolled"
    shutil.copytree(new_songs, songs)
    assert main(["enroll", str(songs), "--into", str(into), *common]) == 0
    calibrate = ["calibrate", "--model", str(into), "--mode", "fp32", "--distractor-tracks", "4", *common]
    assert main(calibrate) == 0
    out = capsys.readouterr().out
    # the generated distractors start with the two songs enrolled here: calibrating on them would be wrong
    assert "2 generated distractor track(s) are in the model's library and were left out" in out
    assert f"identify --model {into} --mode fp32" in out
    rule = json.loads((into / "open-set.json").read_text())[f"{FAMILY}/fp32"]
    assert rule["n_library"] > 0 and rule["n_library"] == 4 * rule["n_distractors"]  # 8 tracks against 2
    clip = write_audio(tmp_path / "clip.wav", load_audio(songs / "new_syn00001.flac", 16_000)[16_000:80_000], 16_000)
    assert main(["identify", str(clip), "--model", str(into)]) == 0
    assert "no match at or below confidence" in capsys.readouterr().out
    (songs / "new_syn00000.flac").unlink()
    assert main(calibrate) == 1
    assert "the file of enrolled song new_syn00000" in capsys.readouterr().err
    older = tmp_path / "older"
    older.mkdir()
    (older / "family.json").write_text("{}")
    assert main(["identify", str(clip), "--model", str(older)]) == 1
    assert "written by an older ppazam (family.json, not model.json)" in capsys.readouterr().err


def test_a_damaged_enrolled_model_says_to_restore_or_enroll_again_not_to_rebuild(prototypes, new_songs, tiny_config,
                                                                                 session_cache, tmp_path, capsys):
    _, toml = tiny_config
    common = ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1"]
    into = tmp_path / "enrolled"
    assert main(["enroll", str(new_songs / "new_syn00000.flac"), "--into", str(into), *common]) == 0
    capsys.readouterr()
    damaged = into / "prototypes.npz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    clip = write_audio(tmp_path / "clip.wav", load_audio(new_songs / "new_syn00001.flac", 16_000)[:64_000], 16_000)
    for command in (["identify", str(clip), "--model", str(into)],
                    ["enroll", str(new_songs / "new_syn00001.flac"), "--into", str(into), *common]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert "prototypes.npz" in err and "restore it from a copy, or enroll its songs again" in err, err
        assert "rebuild" not in err, err
    assert damaged.stat().st_size == 100  # nothing was written over what the user keeps


@pytest.mark.parametrize("family", ["embedding-knn", "embedding-knn-packed"])
def test_a_knn_family_enrolls_a_song_whole_as_it_builds_one(family, new_songs, tiny_library, tiny_config,
                                                            session_cache, tmp_path, capsys):
    config, toml = tiny_config
    common = ["--config", str(toml), "--cache-dir", str(session_cache), "--workers", "1"]
    base = train_family(family, tiny_library, config, session_cache, workers=1)
    into = tmp_path / "enrolled"
    assert main(["enroll", str(new_songs), "--into", str(into), "--family", family, *common]) == 0
    assert "2 track(s) added" in capsys.readouterr().out
    enrolled = load_family(family, into)
    assert enrolled.track_ids == (*base.track_ids, "new_syn00000", "new_syn00001")
    trained_rows = len(base.reference_tracks)
    np.testing.assert_array_equal(enrolled.reference_tracks[:trained_rows], base.reference_tracks)
    song = Library("one", (enrolled_track(new_songs / "new_syn00001.flac", config),))
    knn = config.table("knn" if family == "embedding-knn" else "knnpacked")
    expected, _, offsets, _ = reference_embeddings(base.embedder, song, family_segment_s(family, config), knn.hop_s)
    rows = enrolled.reference_tracks == len(base.track_ids) + 1
    vectors = enrolled.vectors if family == "embedding-knn" else enrolled.head.W
    np.testing.assert_allclose(vectors[rows], expected, atol=1e-6)  # every window, as a library track has
    np.testing.assert_array_equal(enrolled.offsets[rows], offsets)

    clip = write_audio(tmp_path / "clip.wav", load_audio(new_songs / "new_syn00001.flac", 16_000)[16_000:80_000],
                       16_000)
    for mode in enrolled.modes if family == "embedding-knn" else ("fhe-sim", "fhe"):
        assert main(["identify", str(clip), "--model", str(into), "--mode", str(getattr(mode, "value", mode))]) == 0
        assert ranked_ids(capsys.readouterr().out)[0] == "new_syn00001"
    assert main(["enroll", "--into", str(into), "--remove", "syn00002", *common]) == 0
    capsys.readouterr()
    shrunk = load_family(family, into)
    assert "syn00002" not in shrunk.track_ids and len(shrunk.track_ids) == len(base.track_ids) + 1
    assert len(shrunk.reference_tracks) == len(enrolled.reference_tracks) - int((base.reference_tracks == 2).sum())
