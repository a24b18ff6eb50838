"""Query conditions: names, gains, and the datasets built under them."""

import numpy as np
import pytest

from ppazam_core.queries.conditions import QueryCondition, apply_gain, gain_sweep
from ppazam_core.config import DataConfig
from ppazam_core.queries.dataset import build_dataset
from ppazam_core.errors import ConfigError


def test_condition_names_round_trip():
    assert QueryCondition.parse("small") == QueryCondition("small")
    assert QueryCondition.parse("clean@-20dB") == QueryCondition("clean", -20.0)
    assert QueryCondition.parse("clean@+10dB").name == "clean@+10dB"
    assert gain_sweep("clean", (-20, 0, 10)) == ("clean@-20dB", "clean@+0dB", "clean@+10dB")
    for bad in ("clean@loud", "clean@-90dB", "clean@10"):
        with pytest.raises(ConfigError, match="condition"):
            QueryCondition.parse(bad)


def test_gain_amplifies_then_clips_like_a_device():
    clip = np.array([0.05, -0.2, 0.5], dtype=np.float32)
    np.testing.assert_allclose(apply_gain(clip, 20.0), [0.5, -1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(apply_gain(clip, -20.0), clip / 10, rtol=1e-6)


def test_config_specs_carry_the_gain():
    data = DataConfig(query_gain_db=(-20.0, 10.0))
    assert data.eval_spec("small").gain_db == (-20.0, 10.0)
    assert data.eval_spec("clean@-10dB").gain_db == (-10.0, -10.0)
    assert data.eval_spec("clean@-10dB").policy.name == "clean" and not data.eval_spec("clean").policy.transforms
    with pytest.raises(ConfigError, match="data.query_gain_db"):
        DataConfig(query_gain_db=(10.0, -20.0))
    with pytest.raises(ConfigError, match="policy"):
        DataConfig(eval_levels=("loud@+3dB",))


def test_queries_are_heard_at_seeded_gains(tiny_library, cache_dir):
    data = DataConfig(eval_queries=3, query_gain_db=(-20.0, 10.0))
    random = build_dataset(tiny_library, data.eval_spec("clean"), cache_dir, workers=1)
    again = build_dataset(tiny_library, data.eval_spec("clean"), cache_dir / "again", workers=1)
    gains = random.meta["gain_db"].to_numpy()
    assert ((-20.0 <= gains) & (gains <= 10.0)).all() and len(set(gains.round(3))) == len(gains)
    np.testing.assert_array_equal(gains, again.meta["gain_db"].to_numpy())
    np.testing.assert_array_equal(np.asarray(random.X), np.asarray(again.X))
    quiet = build_dataset(tiny_library, data.eval_spec("clean@-20dB"), cache_dir, workers=1)
    plain = build_dataset(tiny_library, data.eval_spec("clean@+0dB"), cache_dir, workers=1)
    assert (quiet.meta["gain_db"] == -20.0).all()
    # the front-end levels every clip: 20 dB quieter is the same patch (a clean clip never clips)
    np.testing.assert_allclose(np.asarray(quiet.X), np.asarray(plain.X), atol=0.05)  # dB, float32 rounding
