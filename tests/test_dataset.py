from dataclasses import replace

import numpy as np
import pytest

import ppazam_core.queries.dataset as dataset_module
from ppazam_core.audio.decode import crop_or_pad, load_audio
from ppazam_core.queries.augment import Augmenter, builtin_policy
from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.conditions import apply_gain
from ppazam_core.queries.dataset import DatasetSpec, build_dataset, build_datasets, clip_gain, clip_offset, dataset_key
from ppazam_core.errors import ConfigError
from ppazam_core.queries.features import FrontEnd, FrontEndConfig
from ppazam_core.audio.noise import synthetic_noise_bank


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    return synthetic_noise_bank(tmp_path_factory.mktemp("noise"), duration_s=2.0)


def _spec(**overrides) -> DatasetSpec:
    return DatasetSpec(**{"policy": builtin_policy("large"), "augmentations_per_track": 4, **overrides})


def test_dataset_shapes_labels_and_metadata(tiny_library, cache_dir, noise_dir):
    dataset = build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1)
    assert dataset.X.shape == (24, 1, 32, 32) and dataset.X.dtype == np.float32
    np.testing.assert_array_equal(dataset.y, np.repeat(np.arange(6), 4))
    assert list(dataset.meta.columns) == ["track_id", "augmentation", "segment", "offset_s", "seed", "gain_db", "policy",
                                          "split", "label"]
    assert dataset.track_ids == tuple(t.id for t in tiny_library)
    assert (dataset.meta["offset_s"] <= 8.0 - 3.0).all()
    assert dataset.normalizer.mean.shape == (32,) and dataset.size_bytes > dataset.X.nbytes


def test_a_row_can_be_rebuilt_from_its_name(tiny_library, cache_dir, noise_dir):
    spec = replace(_spec(), gain_db=(-20.0, 10.0))
    dataset = build_dataset(tiny_library, spec, cache_dir, noise_dir, workers=1)
    row = dataset.meta.iloc[9]
    track = tiny_library.tracks[int(row["label"])]
    audio = load_audio(track.source, 16_000)
    index = int(row["augmentation"])
    assert clip_offset(track, spec, index, audio.shape[0] / 16_000) == pytest.approx(row["offset_s"], abs=1e-4)
    assert clip_gain(track, spec, index) == pytest.approx(row["gain_db"], abs=1e-3)
    clip = crop_or_pad(audio, 48_000, int(round(clip_offset(track, spec, index, 8.0) * 16_000)))
    heard = apply_gain(Augmenter(spec.policy, 16_000, noise_dir)(clip, int(row["seed"])), clip_gain(track, spec, index))
    np.testing.assert_allclose(FrontEnd(spec.features)(heard)[0], dataset.X[9], atol=1e-4)


def test_a_long_query_is_cut_into_half_overlapping_segments(tiny_library, cache_dir, noise_dir):
    spec = replace(_spec(), query_s=6.0)
    dataset = build_dataset(tiny_library, spec, cache_dir, noise_dir, workers=1)
    assert spec.segments == dataset.segments == 3 and dataset.queries == 24 and len(dataset) == 72
    first = dataset.meta.iloc[:3]
    assert first["segment"].tolist() == [0, 1, 2] and first["augmentation"].nunique() == 1
    np.testing.assert_allclose(np.diff(first["offset_s"]), 1.5, atol=1e-3)
    assert (dataset.meta.groupby(["label", "augmentation"])["segment"].count() == 3).all()
    short = build_dataset(tiny_library, replace(_spec(), query_s=1.0), cache_dir, noise_dir, workers=1)
    assert short.segments == 1 and short.X.shape == (24, 1, 32, 32)  # one segment, padded by the front-end


def test_second_build_loads_from_cache(tiny_library, cache_dir, noise_dir, monkeypatch):
    first = build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1)
    monkeypatch.setattr(dataset_module, "_track_rows", lambda job: pytest.fail("rebuilt a cached dataset"))
    again = build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1)
    assert again.folder == first.folder
    np.testing.assert_array_equal(np.asarray(again.X), np.asarray(first.X))


def test_a_dataset_of_some_tracks_holds_their_clips_of_the_whole_dataset(tiny_library, cache_dir, noise_dir):
    whole = build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1)
    some = build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1, tracks=[4, 1])
    assert some.folder != whole.folder and some.track_ids == whole.track_ids
    np.testing.assert_array_equal(some.y, np.repeat([1, 4], 4))
    rows = np.flatnonzero(np.isin(whole.y, [1, 4]))
    np.testing.assert_array_equal(np.asarray(some.X), np.asarray(whole.X[rows]))
    assert some.meta["track_id"].tolist() == whole.meta["track_id"].iloc[rows].tolist()
    assert some.info["tracks_drawn_from"] == 2


@pytest.mark.parametrize("tracks", [[], [6], [-1]])
def test_dataset_tracks_outside_the_library_are_refused(tiny_library, cache_dir, noise_dir, tracks):
    with pytest.raises(ConfigError, match="positions 0 to 5"):
        build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1, tracks=tracks)


def test_worker_pool_gives_identical_rows(tiny_library, tmp_path, noise_dir):
    serial = build_dataset(tiny_library, _spec(), tmp_path / "a", noise_dir, workers=1)
    pooled = build_dataset(tiny_library, _spec(), tmp_path / "b", noise_dir, workers=2)
    np.testing.assert_array_equal(np.asarray(serial.X), np.asarray(pooled.X))
    assert serial.meta.equals(pooled.meta)


def test_front_ends_built_together_see_the_clips_each_would_see_alone(tiny_library, tmp_path, noise_dir, monkeypatch):
    """Two front-ends, and the same 3-s clips cut into 1-s segments (a kNN family's), built
    together: each track augmented once, each dataset what it would be alone."""
    mfcc = replace(_spec(), features=FrontEndConfig(kind="mfcc", patch_width=120, hop_length=400))
    windows = replace(_spec(), segment_s=1.0, query_s=3.0, features=FrontEndConfig(patch_width=11, hop_length=1536))
    specs = (_spec(), mfcc, windows)
    alone = [build_dataset(tiny_library, spec, tmp_path / "alone", noise_dir, workers=1) for spec in specs]
    augmented = []
    original = dataset_module._track_rows
    monkeypatch.setattr(dataset_module, "_track_rows", lambda job: augmented.append(job) or original(job))
    together = build_datasets(tiny_library, [*specs, _spec()], tmp_path / "together", noise_dir, workers=1)
    assert len(augmented) == len(tiny_library)  # each track's clips cut and augmented once for every spec
    assert together[0] is together[3] and together[2].segments == windows.segments > 1
    assert len(together[2].X) == windows.segments * len(together[0].X)
    for one, other in zip(alone, together):
        assert one.folder.name == other.folder.name
        np.testing.assert_array_equal(np.asarray(one.X), np.asarray(other.X))
        assert one.meta.equals(other.meta)
    with pytest.raises(ValueError, match="same clips"):
        build_datasets(tiny_library, [_spec(), replace(_spec(), seed=1)], tmp_path, noise_dir, workers=1)
    with pytest.raises(ValueError, match="one sample rate"):
        build_datasets(tiny_library, [_spec(), replace(_spec(), features=FrontEndConfig(sample_rate=8000, f_max=4000))], tmp_path,
                       noise_dir, workers=1)


def test_interrupted_build_leaves_nothing_trusted(tiny_library, cache_dir, noise_dir, monkeypatch):
    calls = []

    def dies_on_third_track(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(job)

    original = dataset_module._track_rows
    monkeypatch.setattr(dataset_module, "_track_rows", dies_on_third_track)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1)
    assert not (cache_dir / "datasets").exists() or list((cache_dir / "datasets").iterdir()) == []
    monkeypatch.setattr(dataset_module, "_track_rows", original)
    assert len(build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1)) == 24


def test_train_and_eval_splits_draw_different_clips(tiny_library, cache_dir, noise_dir):
    train = build_dataset(tiny_library, _spec(), cache_dir, noise_dir, workers=1)
    evaluation = build_dataset(tiny_library, _spec(split="eval"), cache_dir, noise_dir, workers=1)
    assert not set(train.meta["seed"]) & set(evaluation.meta["seed"])
    assert not np.array_equal(np.asarray(train.X), np.asarray(evaluation.X))


def test_key_changes_with_every_input(tiny_library, noise_dir):
    keys = {
        dataset_key(tiny_library, _spec(), noise_dir),
        dataset_key(tiny_library, _spec(seed=1), noise_dir),
        dataset_key(tiny_library, _spec(segment_s=2.0), noise_dir),
        dataset_key(tiny_library, _spec(features=FrontEndConfig(kind="mfcc")), noise_dir),
        dataset_key(tiny_library, _spec(policy=builtin_policy("medium")), noise_dir),
    }
    assert len(keys) == 5


def test_bad_dataset_spec_values():
    with pytest.raises(ConfigError, match="augmentations_per_track"):
        _spec(augmentations_per_track=0)
    with pytest.raises(ConfigError, match="split"):
        _spec(split="test")
    with pytest.raises(ConfigError, match="clips_per_minute"):
        _spec(clips_per_minute="dense")


def test_a_long_track_gets_clips_in_proportion_to_its_length(tiny_library, tmp_path, noise_dir):
    fixed = build_dataset(tiny_library, _spec(), tmp_path, noise_dir, workers=1)
    dense = build_dataset(tiny_library, _spec(clips_per_minute=60.0), tmp_path, noise_dir, workers=1)
    assert _spec(clips_per_minute=60.0).clips_for(8.0) == 8 and _spec(clips_per_minute=15.0).clips_for(8.0) == 4
    assert dense.X.shape[0] == 6 * 8 and np.bincount(dense.y).tolist() == [8] * 6
    first = dense.meta["augmentation"].to_numpy() < 4  # a track's first clips are the fixed-count dataset's
    np.testing.assert_array_equal(np.asarray(dense.X)[first], np.asarray(fixed.X))
    assert dense.meta[first].drop(columns="label").reset_index(drop=True).equals(fixed.meta.drop(columns="label"))


def test_data_config_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[synthetic]\nn_tracks = 8\n[features]\nkind = "mfcc"\ndeltas = 1\n'
        '[data]\neval_levels = ["small", "quiet"]\ntrain_augmentations = 5\n'
        '[policies.quiet]\n[[policies.quiet.transforms]]\nname = "Gain"\nmin_gain_db = -20.0\nmax_gain_db = -10.0\n'
    )
    config = ExperimentConfig.from_toml(path).data
    assert config.synthetic.n_tracks == 8 and config.features.kind == "mfcc"
    assert config.eval_spec("quiet").policy.transforms[0].name == "Gain"
    assert config.train_spec().augmentations_per_track == 5 and config.train_spec().split == "train"
    assert config.eval_spec("small").seed != config.train_spec().seed


@pytest.mark.parametrize(
    "toml, message",
    [("[data]\nepochs = 3\n", "epochs"), ("[trainer]\n", "trainer"), ('[data]\neval_levels = ["loud"]\n', "loud"),
     ("[data]\neval_seed = 0\n", "eval_seed"), ("[synthetic]\ntracks = 3\n", "tracks"), ("[data\n", "not valid TOML"),
     ('[data]\ntrain_augmentations = "many"\n', "train_augmentations"), ("[data]\ntrain_clips_per_minute = -1\n",
                                                                        "train_clips_per_minute"),
     ("[data]\neval_queries = true\n", "eval_queries"), ("[data]\ntrain_clips_per_minute = inf\n",
                                                          "train_clips_per_minute"),
     ("data = 5\n", "data must be a table"), ('synthetic = "x"\n', "synthetic must be a table")],
)
def test_bad_data_config_names_the_key(tmp_path, toml, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        ExperimentConfig.from_toml(path).data
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig.from_toml(tmp_path / "missing.toml").data
