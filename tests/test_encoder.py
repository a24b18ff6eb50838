"""The fingerprint encoder: its shipped weights against their manifest, ``ppazam encoder train``
end to end, a corpus streamed to disk and resumed, training resumed after an interruption, and
a corpus that never holds an evaluated library's songs."""

from __future__ import annotations

import json
import shutil
import tomllib
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import ppazam_core.models.encoder.corpus as corpus_module
import ppazam_core.models.encoder.training as training_module
from conftest import TINY_TOML
from ppazam_core.cli import main
from ppazam_core.config import ExperimentConfig
from ppazam_core.audio.debian import MUSIC_PACKAGES, NOISE_PACKAGE
from ppazam_core.models.encoder.corpus import (AUDIO_FILE, CORPUS_PACKAGES, CorpusReader, CorpusSpec, build_corpus,
                                        corpus_seed, music_files)
from ppazam_core.models.encoder.model import FingerprintEncoder, load_encoder
from ppazam_core.models.encoder.shipped import SHIPPED_FOLDER, encoder_folder, verify_encoder, weights_sha256
from ppazam_core.models.encoder.training import EncoderTrainConfig, train_encoder, work_folder
from ppazam_core.errors import ConfigError, DamagedArtifactError
from ppazam_core.families import train_family
from ppazam_core.audio.library import SyntheticSpec
from ppazam_core.seeding import derive_seed
from ppazam_core.audio.synth import render_track

SUITES = Path(__file__).resolve().parents[1] / "suites"
SMALL = EncoderTrainConfig(corpus=CorpusSpec(generated_songs=12, song_s=4.0, packages=()), steps=6, batch=8,
                           rooms=2, checkpoint_every=2, warmup_steps=2)


def test_the_shipped_weights_match_their_manifest():
    manifest = verify_encoder(SHIPPED_FOLDER)
    assert manifest["weights_sha256"] == weights_sha256(SHIPPED_FOLDER)
    for key in ("corpus", "front_end", "architecture", "training", "git_commit", "code_hash", "seeds", "machine",
                "training_s"):
        assert key in manifest, key
    corpus = manifest["corpus"]
    assert corpus["generator"]["seed"] == corpus_seed(manifest["seeds"]["corpus"])
    assert corpus["generator"]["songs"] >= 1000 and corpus["hours"] > 0
    assert set(corpus["debian"]["packages"]) <= set(CORPUS_PACKAGES)
    assert all(f["id"].split("/")[0] in CORPUS_PACKAGES for f in corpus["debian"]["files"])
    assert (SHIPPED_FOLDER / "encoder.pt").stat().st_size < 8 * 2**20  # a few MB of package data
    encoder = load_encoder(encoder_folder("shipped"))
    assert encoder.architecture.dimension == manifest["architecture"]["dimension"]


def test_tampered_or_missing_weights_are_refused(tmp_path):
    copy = tmp_path / "encoder"
    shutil.copytree(SHIPPED_FOLDER, copy)
    data = bytearray((copy / "encoder.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "encoder.pt").write_bytes(bytes(data))
    with pytest.raises(DamagedArtifactError, match="SHA-256"):
        encoder_folder(str(copy))
    with pytest.raises(Exception, match="holds no fingerprint encoder"):
        encoder_folder(str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="embedding.encoder"):
        ExperimentConfig.from_dict({"embedding": {"encoder": 3}})


def test_encoder_train_end_to_end_and_an_embedding_family_uses_it(tmp_path, tiny_library, capsys):
    out = tmp_path / "encoder"
    status = main(["encoder", "train", "--out", str(out), "--songs", "12", "--song-s", "4", "--no-debian",
                   "--steps", "4", "--batch", "8", "--cache-dir", str(tmp_path / "cache"), "--workers", "1"])
    assert status == 0
    manifest = verify_encoder(out)
    assert manifest["training"]["steps"] == 4 and manifest["corpus"]["generator"]["songs"] == 12
    assert manifest["corpus"]["debian"]["tracks"] == 0
    assert [p["step"] for p in json.loads((out / "losses.json").read_text())] == [4]
    assert not work_folder(out).exists()
    assert main(["encoder", "info", str(out)]) == 0
    assert "checked" in capsys.readouterr().out

    table = tomllib.loads(TINY_TOML)
    table["embedding"] = {"encoder": str(out)}
    config = ExperimentConfig.from_dict(table)
    model = train_family("embedding-knn", tiny_library, config, tmp_path / "cache", workers=1)
    assert (model.folder / "embedding" / "encoder.pt").read_bytes() == (out / "encoder.pt").read_bytes()
    assert model.features.n_mels == 64  # the encoder's own front-end, not the CNN's 32 x 32 patch


def _peak_bytes(spec: CorpusSpec, cache: Path) -> tuple[int, int]:
    """Peak bytes Python allocated while building the corpus and drawing windows from it, and
    the corpus's size."""
    tracemalloc.start()
    built = build_corpus(spec, cache)
    reader = CorpusReader(built)
    windows = [reader.draw(np.random.default_rng(i), 8, 16_000) for i in range(3)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(w.shape == (8, 16_000) and np.abs(w).max() > 0 for w in windows)
    return peak, (built.folder / AUDIO_FILE).stat().st_size


def test_a_corpus_streams_to_disk_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    spec = CorpusSpec(generated_songs=40, song_s=8.0, packages=())
    small_peak, small_size = _peak_bytes(spec, tmp_path / "whole")
    large_peak, large_size = _peak_bytes(replace(spec, generated_songs=160), tmp_path / "large")
    assert small_size == 40 * 8 * 16_000 * 2 and large_size == 4 * small_size
    # memory holds a batch of songs, whatever the corpus's size: four times the songs, not four times the memory
    assert large_peak < 1.5 * small_peak and large_peak < large_size / 3, (small_peak, large_peak, large_size)
    whole = build_corpus(spec, tmp_path / "whole")

    original = corpus_module._render_batch
    calls = {"n": 0}

    def dies_on_the_third_batch(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(job)

    monkeypatch.setattr(corpus_module, "_render_batch", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_corpus(spec, tmp_path / "resumed")
    monkeypatch.setattr(corpus_module, "_render_batch", original)
    resumed = build_corpus(spec, tmp_path / "resumed")
    assert [s.id for s in resumed.songs] == [s.id for s in whole.songs]
    assert (resumed.folder / AUDIO_FILE).read_bytes() == (whole.folder / AUDIO_FILE).read_bytes()


def test_training_resumes_after_an_interruption_to_the_same_weights(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    train_encoder(SMALL, tmp_path / "straight", cache)
    original = training_module._train_step

    def interrupted_at_step_3(config, views, encoder, optimizer, step, window, train_s):
        if step == 3:
            raise KeyboardInterrupt
        return original(config, views, encoder, optimizer, step, window, train_s)

    monkeypatch.setattr(training_module, "_train_step", interrupted_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_encoder(SMALL, tmp_path / "resumed", cache)
    assert not (tmp_path / "resumed").exists() and (work_folder(tmp_path / "resumed") / "checkpoint.pt").is_file()
    monkeypatch.setattr(training_module, "_train_step", original)
    with pytest.raises(ConfigError, match="another encoder config"):
        train_encoder(replace(SMALL, steps=7), tmp_path / "resumed", cache)
    train_encoder(SMALL, tmp_path / "resumed", cache)
    assert weights_sha256(tmp_path / "resumed") == weights_sha256(tmp_path / "straight")
    with pytest.raises(ConfigError, match="not empty"):
        train_encoder(SMALL, tmp_path / "resumed", cache)


def _library_seeds() -> set[int]:
    """Every generator seed an evaluated library of the suites (and the default) renders with."""
    seeds = {SyntheticSpec().seed}
    for suite in SUITES.glob("*.toml"):
        table = tomllib.loads(suite.read_text())
        seeds.add(table.get("experiment", {}).get("synthetic", {}).get("seed", SyntheticSpec().seed))
    return seeds | {derive_seed(s, p) for s in seeds for p in ("distractors", "enrolled", "background")}


def test_the_corpus_never_holds_an_evaluated_library_s_songs_or_seeds(tmp_path):
    evaluated = _library_seeds()
    for seed in (0, 1, 7):
        assert corpus_seed(seed) not in evaluated
    corpus_song = render_track(corpus_seed(0), 0, 4.0, 16_000)[0]
    library_song = render_track(SyntheticSpec().seed, 0, 4.0, 16_000)[0]
    assert not np.allclose(corpus_song, library_song)

    assert not set(CORPUS_PACKAGES) & set(MUSIC_PACKAGES + (NOISE_PACKAGE,))
    for package in MUSIC_PACKAGES:
        with pytest.raises(ConfigError, match="must stay unheard"):
            CorpusSpec(packages=(package,))

    unpacked = tmp_path / "pkg"
    for name in ("usr/share/game/music/theme.ogg", "usr/share/game/sounds/boom.ogg", "usr/share/game/base/0music.pk3",
                 "usr/share/game/themes/castle.ogg", "usr/share/doc/readme.txt"):
        (unpacked / name).parent.mkdir(parents=True, exist_ok=True)
        (unpacked / name).write_bytes(b"")
    found = {p.relative_to(unpacked).as_posix() for p in music_files(unpacked)}
    assert found == {"usr/share/game/music/theme.ogg", "usr/share/game/base/0music.pk3",
                     "usr/share/game/themes/castle.ogg"}


def test_the_encoder_embeds_any_length_to_unit_vectors():
    encoder = FingerprintEncoder().eval()
    for frames in (20, 63, 188, 600):
        out = encoder.embed_patches(np.random.default_rng(frames).normal(size=(3, 1, 64, frames)).astype(np.float32))
        assert out.shape == (3, 64) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="log-mel patches"):
        encoder.embed_patches(np.zeros((2, 1, 32, 32), dtype=np.float32))
