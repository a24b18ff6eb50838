"""Suite files: the shipped ones load, bad ones are errors naming the key and allowed values."""

import pytest

from ppazam_core.errors import ConfigError
from suites import Suite, available_suites, load_suite


def test_shipped_suites_load():
    assert {"quick", "default", "accurate", "nightly", "paper", "scaling"} <= set(available_suites())
    for name in available_suites():
        suite = load_suite(name)
        assert suite.name == name and suite.points()
        for bits, rounding in suite.points():
            config = suite.config(bits, rounding)
            assert config.model.weight_bits == config.model.activation_bits == bits
            assert config.fhe.rounding_bits == rounding and config.data.eval_levels == suite.conditions
        assert suite.levels[0] == "clean"  # every suite measures queries as a user records them


def test_default_suite_sweeps_the_recording_gain():
    default = load_suite("default")
    assert default.conditions == ("clean", "small", "medium", "large", "phone-in-room",
                                  "clean@-20dB", "clean@-10dB", "clean@+0dB", "clean@+10dB",
                                  "phone-in-room@1s", "phone-in-room@2s", "phone-in-room@5s", "phone-in-room@10s")
    assert default.config(4, 7).data.query_gain_db == (-20.0, 10.0)


def test_paper_suite_sweeps_two_to_eight_bits():
    assert set(range(2, 9)) <= set(load_suite("paper").bit_widths)


def test_accurate_suite_is_a_larger_cnn_without_true_fhe():
    accurate, default = load_suite("accurate"), load_suite("default")
    assert accurate.library == default.library and accurate.levels == default.levels

    def activations(suite):
        config = suite.config(*suite.points()[0])
        return config.model.cnn(12, config.data.features.shape).activation_count()

    assert activations(accurate) == 5744 and activations(default) == 656
    assert "fhe" not in accurate.modes


def test_nightly_suite_uses_the_debian_library():
    assert load_suite("nightly").library != "synthetic"


@pytest.mark.parametrize("text, message", [
    ('modes = ["fp32", "gpu"]', "modes = 'gpu' is not allowed; allowed: fp32, quant, fhe-disable, fhe-sim, fhe"),
    ("bit_widths = [1]", "bit_widths = 1 is not allowed"),
    ('levels = ["loud"]', "levels: policy = 'loud' is not allowed; allowed: clean, small, medium, large"),
    ('gains = [-90]', "query condition gain = (-90.0, -90.0) is not allowed"),
    ('query_lengths = [0]', "query_lengths = (0.0,) is not allowed"),
    ('fhe_sweeps = "yes"', "fhe_sweeps = 'yes' is not allowed"),
    ("queries_per_track = 0", "queries_per_track = 0 is not allowed"),
    ("colour = 1", "'colour' is not allowed; allowed: bit_widths"),
    ('[experiment.model]\nweight_bits = 9', "model.weight_bits = 9"),
    ('families = ["magic"]', "families = 'magic' is not allowed; allowed: two-stage-cnn, two-stage-cnn-oblivious, embedding-head"),
    ("distractor_tracks = -1", "distractor_tracks = -1 is not allowed"),
    ("query_tracks = 2.5", "query_tracks = 2.5 is not allowed"),
    ('library = "music"\nlibrary_sizes = [100]', 'only with library = "synthetic"'),
    ("library_sizes = [1]", "library_sizes = (1,) is not allowed"),
    ('families = ["embedding-head"]\nsize_families = ["embedding-knn"]\nlibrary_sizes = [100]',
     "size_families = 'embedding-knn' is not allowed"),
    ('families = ["embedding-head"]\nsize_families = ["embedding-head"]', "give library_sizes too"),
    ("modes = []", "modes is empty"),
])
def test_bad_suite_files_name_key_and_allowed_values(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as error:
        load_suite(path)
    assert message in str(error.value)


def test_unknown_suite_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="quick"):
        load_suite("nonexistent")


def test_invalid_toml_is_a_config_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("modes = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_suite(path)


def test_suite_defaults_are_a_valid_suite():
    assert Suite(name="defaults").points() == [(4, 6)]


def test_paper_suite_compares_every_family():
    from ppazam_core.families import family_names

    assert set(load_suite("paper").families) == set(family_names())


def test_scaling_suite_sizes_set_the_synthetic_library():
    suite = load_suite("scaling")
    assert suite.sizes() == (100, 1000, 10000)
    assert [suite.config(4, 7, n).data.synthetic.n_tracks for n in suite.sizes()] == [100, 1000, 10000]
    assert all(suite.families_at(n) == suite.families for n in suite.sizes())


def test_size_families_add_library_sizes_beside_the_suite_s_own_library(tmp_path):
    path = tmp_path / "sized.toml"
    path.write_text('families = ["two-stage-cnn", "embedding-head"]\nsize_families = ["embedding-head"]\n'
                    "library_sizes = [200]\n")
    suite = load_suite(path)
    assert suite.sizes() == (None, 200)
    assert suite.families_at(None) == ("two-stage-cnn", "embedding-head")
    assert suite.families_at(200) == ("embedding-head",)
    assert suite.config(4, 6).data.synthetic.n_tracks == 64 and suite.config(4, 6, 200).data.synthetic.n_tracks == 200
