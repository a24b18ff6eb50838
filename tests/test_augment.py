import json
import random
import subprocess
import sys
from pathlib import Path

import audiomentations
import numpy as np
import pytest
import soundfile

from ppazam_core.queries.augment import (
    AugmentationPolicy,
    Augmenter,
    Level,
    TransformSpec,
    builtin_policy,
    get_policy,
    load_policies,
)
from ppazam_core.errors import ConfigError
from ppazam_core.audio.noise import NOISE_KINDS, synthetic_noise_bank
from ppazam_core.audio.rooms import RoomBankSpec, room_bank
from ppazam_core.audio.synth import render_track


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory) -> Path:
    return synthetic_noise_bank(tmp_path_factory.mktemp("noise"), duration_s=2.0)


@pytest.fixture(scope="module")
def rooms_dir(tmp_path_factory) -> Path:
    return room_bank(tmp_path_factory.mktemp("rooms"), RoomBankSpec(rooms=4))


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return render_track(0, 1, 3.0, 16_000)[0]


def _params(transform) -> dict:
    return {k: v for k, v in vars(transform).items() if not k.startswith("_") and k != "parameters"}


def test_builtin_levels_reproduce_the_original_policies(noise_dir):
    small = Augmenter(builtin_policy("small"), 16_000, noise_dir)._apply
    (gauss,) = small.transforms
    assert isinstance(gauss, audiomentations.AddGaussianNoise)
    assert (gauss.min_amplitude, gauss.max_amplitude, gauss.p) == (0.001, 0.005, 0.5)

    for level, k, snr in (("medium", 2, (3.0, 10.0)), ("large", 4, (3.0, 30.0))):
        composed = Augmenter(builtin_policy(level), 16_000, noise_dir)._apply
        assert isinstance(composed, audiomentations.SomeOf) and composed.num_transforms == k
        noise, stretch, pitch, shift, background = composed.transforms
        assert (noise.min_amplitude, noise.max_amplitude, noise.p) == (0.001, 0.015, 0.5)
        assert (stretch.min_rate, stretch.max_rate, stretch.p) == (0.8, 1.25, 0.5)
        assert (pitch.min_semitones, pitch.max_semitones, pitch.p) == (-4.0, 4.0, 0.5)
        assert (shift.min_shift, shift.max_shift, shift.shift_unit, shift.p) == (-0.5, 0.5, "fraction", 0.5)
        assert (background.min_snr_db, background.max_snr_db, background.p) == (*snr, 1.0)
        has_inversion = isinstance(background.noise_transform, audiomentations.PolarityInversion)
        assert has_inversion == (level == "large")
    assert Augmenter(builtin_policy(Level.CLEAN), 16_000)._apply is None


@pytest.mark.parametrize("level", ["small", "medium", "large"])
def test_augmentation_is_seeded_and_leaves_global_random_state_alone(noise_dir, clip, level):
    augmenter = Augmenter(builtin_policy(level), 16_000, noise_dir)
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    first = augmenter(clip, seed=42)
    assert (random.random(), np.random.random()) == before
    np.testing.assert_array_equal(first, augmenter(clip, seed=42))
    assert first.shape == clip.shape and first.dtype == np.float32 and np.isfinite(first).all()
    outputs = [augmenter(clip, seed=s) for s in range(12)]
    assert len({o.tobytes() for o in outputs}) > 1
    changed = sum(float(np.abs(o - clip).mean()) > 0 for o in outputs)
    assert changed >= 3  # each transform has its own p, so an occasional clip passes unchanged


_AUGMENT_SCRIPT = """
import hashlib, sys
from pathlib import Path
from ppazam_core.queries.augment import Augmenter, builtin_policy
from ppazam_core.audio.rooms import RoomBankSpec, room_bank
from ppazam_core.audio.synth import render_track
clip = render_track(0, 1, 3.0, 16000)[0]
rooms = room_bank(Path(sys.argv[3]), RoomBankSpec(rooms=4))
augmenter = Augmenter(builtin_policy(sys.argv[2]), 16000, Path(sys.argv[1]), rooms)
print(hashlib.sha256(b"".join(augmenter(clip, s).tobytes() for s in range(8))).hexdigest())
"""


@pytest.mark.parametrize("level", ["large", "phone-in-room"])
def test_augmentation_is_identical_across_processes(noise_dir, tmp_path, level):
    """Each process simulates its own rooms in its own cache: the clips still match byte for byte."""
    digests = {
        subprocess.run([sys.executable, "-c", _AUGMENT_SCRIPT, str(noise_dir), level, str(tmp_path / f"cache{i}")],
                       capture_output=True, text=True, check=True).stdout.strip()
        for i in range(2)
    }
    assert len(digests) == 1


def test_phone_in_room_is_seeded_and_changes_every_clip(noise_dir, rooms_dir, clip):
    augmenter = Augmenter(builtin_policy(Level.PHONE_IN_ROOM), 16_000, noise_dir, rooms_dir)
    first = augmenter(clip, seed=7)
    np.testing.assert_array_equal(first, augmenter(clip, seed=7))
    assert first.shape == clip.shape and first.dtype == np.float32 and np.isfinite(first).all()
    outputs = [augmenter(clip, seed=s) for s in range(6)]
    assert all(float(np.abs(o - clip).mean()) > 1e-3 for o in outputs)  # room, noise and codec always apply
    assert len({o.tobytes() for o in outputs}) == 6
    with pytest.raises(ConfigError, match="rooms folder"):
        Augmenter(builtin_policy(Level.PHONE_IN_ROOM), 16_000, noise_dir)


def test_room_bank_is_deterministic(tmp_path, rooms_dir):
    again = room_bank(tmp_path, RoomBankSpec(rooms=4))
    assert again.name == rooms_dir.name
    for path in sorted(rooms_dir.glob("*.wav")):
        response, rate = soundfile.read(path)
        assert rate == 16_000 and len(response) <= 16_000 and np.max(np.abs(response)) == pytest.approx(1.0)
        assert (again / path.name).read_bytes() == path.read_bytes()
    rooms = json.loads((rooms_dir / "rooms.json").read_text())["rooms"]
    assert len(rooms) == 4 and all(0.2 <= r["rt60_s"] <= 0.9 and r["distance_m"] >= 0.5 for r in rooms)


def test_mixed_training_policy_draws_each_part_by_seed(noise_dir, rooms_dir, clip):
    mixed = builtin_policy(Level.MIXED)
    assert [p.name for p in mixed.one_of] == ["clean", "large", "phone-in-room"]
    assert mixed.needs_noise and mixed.needs_rooms
    augmenter = Augmenter(mixed, 16_000, noise_dir, rooms_dir)
    parts = [Augmenter(p, 16_000, noise_dir, rooms_dir) for p in mixed.one_of]
    outputs = [augmenter(clip, seed=s) for s in range(12)]
    chosen = [next(i for i, part in enumerate(parts) if np.array_equal(part(clip, seed=s), out))
              for s, out in enumerate(outputs)]
    assert set(chosen) == {0, 1, 2}  # every part is drawn; the clean one leaves the clip as it is
    assert all(np.array_equal(out, clip) for out, c in zip(outputs, chosen) if c == 0)


def test_mixture_policy_from_toml(tmp_path):
    path = tmp_path / "policies.toml"
    path.write_text(POLICIES_TOML + '[policies.mine]\none_of = ["clean", "phone"]\n')
    mine = load_policies(path)["mine"]
    assert [p.name for p in mine.one_of] == ["clean", "phone"] and mine.one_of[1].some_of == 1
    with pytest.raises(ConfigError, match="either transforms or one_of"):
        AugmentationPolicy("x", (TransformSpec.of("Gain", p=1.0),), one_of=(builtin_policy("clean"),))


def test_noise_bank_is_deterministic_and_covers_every_kind(tmp_path, noise_dir):
    again = synthetic_noise_bank(tmp_path, duration_s=2.0)
    names = sorted(p.name for p in noise_dir.glob("*.wav"))
    assert {n.split("_")[0] for n in names} == set(NOISE_KINDS)
    for name in names:
        assert (noise_dir / name).read_bytes() == (again / name).read_bytes()


POLICIES_TOML = """
[policies.phone]
some_of = 1
[[policies.phone.transforms]]
name = "BandPassFilter"
min_center_freq = 800.0
max_center_freq = 1500.0
p = 1.0
[[policies.phone.transforms]]
name = "AddBackgroundNoise"
min_snr_db = 5.0
max_snr_db = 15.0
noise_transform = "PolarityInversion"
p = 1.0
"""


def test_custom_policy_from_toml(tmp_path, noise_dir, clip):
    path = tmp_path / "policies.toml"
    path.write_text(POLICIES_TOML)
    policies = load_policies(path)
    phone = get_policy("phone", policies)
    assert phone.some_of == 1 and [t.name for t in phone.transforms] == ["BandPassFilter", "AddBackgroundNoise"]
    assert phone.needs_noise
    out = Augmenter(phone, 16_000, noise_dir)(clip, seed=1)
    assert out.shape == clip.shape and not np.array_equal(out, clip)


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[policies.x]\n[[policies.x.transforms]]\nname = "Reverbify"\n', "Reverbify.*allowed: AddBackgroundNoise"),
        ('[policies.x]\n[[policies.x.transforms]]\nname = "Gain"\nloudness = 3\n', "loudness.*parameters of Gain"),
        ('[policies.x]\nsome_of = 3\n[[policies.x.transforms]]\nname = "Gain"\n', "some_of"),
        ('[policies.x]\nsomeof = 1\n', "someof"),
        ('[policies.large]\n', "built-in level"),
        ('[policies.x\n', "cannot read policies"),
    ],
    ids=["unknown-transform", "unknown-parameter", "some-of-too-large", "unknown-key", "clash", "bad-toml"],
)
def test_bad_policy_files_name_the_problem(tmp_path, toml, message):
    path = tmp_path / "p.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_policies(path)


def test_unknown_policy_name_lists_the_allowed_ones():
    with pytest.raises(ConfigError, match="'loud'.*clean, small, medium, large, phone-in-room, mixed"):
        get_policy("loud")


def test_bad_transform_value_and_missing_noise_folder_are_config_errors():
    """A transform's bad value is refused when the policy is made (was: when clips were augmented)."""
    with pytest.raises(ConfigError, match="policies.bad.transforms.TimeStretch with .*min_rate must not be greater"):
        AugmentationPolicy("bad", (TransformSpec.of("TimeStretch", min_rate=2.0, max_rate=1.0),))
    with pytest.raises(ConfigError, match="policies.bad.transforms.Gain.min_gain_db = 'loud' is not allowed; "
                                          "allowed: a number"):
        AugmentationPolicy("bad", (TransformSpec.of("Gain", min_gain_db="loud"),))
    with pytest.raises(ConfigError, match="noise folder"):
        Augmenter(builtin_policy("medium"), 16_000, None)


def test_noise_folder_is_prepared_once_with_bad_files_skipped(tmp_path):
    from conftest import tone, write_audio
    from ppazam_core.errors import LibraryError
    from ppazam_core.audio.noise import prepared_noise_folder

    source = tmp_path / "fx"
    padded = np.concatenate([np.zeros(22_050), tone(900, 0.5, 44_100)[:, 0], np.zeros(22_050)])
    write_audio(source / "door.ogg", padded, 44_100, format="OGG")
    write_audio(source / "sub" / "hum.wav", tone(60, 1.0, 8_000, channels=2), 8_000)
    write_audio(source / "quiet.wav", np.zeros(8_000, dtype=np.float32), 8_000)
    (source / "broken.wav").write_text("nope")
    folder = prepared_noise_folder(source, tmp_path / "cache", 16_000)
    assert sorted(p.name for p in folder.glob("*.wav")) == ["door.wav", "sub__hum.wav"]
    door, rate = soundfile.read(folder / "door.wav")
    assert rate == 16_000 and door.ndim == 1 and abs(door.shape[0] - 8_000) < 200  # silent edges trimmed
    skipped = json.loads((folder / "skipped.json").read_text())
    assert set(skipped) == {"quiet.wav", "broken.wav"} and "silent" in skipped["quiet.wav"]
    assert prepared_noise_folder(source, tmp_path / "cache", 16_000) == folder
    empty = tmp_path / "empty"
    write_audio(empty / "quiet.wav", np.zeros(8_000, dtype=np.float32), 8_000)
    with pytest.raises(LibraryError, match="no usable noise"):
        prepared_noise_folder(empty, tmp_path / "cache", 16_000)
