"""Query augmentation: the original ``augment_policies``, the conditions a user meets, and
custom policies from TOML.

A policy is plain data (:class:`AugmentationPolicy`); :class:`Augmenter` turns it into
audiomentations transforms and applies them under a seed, so ``(seed, track id, index)``
names exactly one noisy clip on every run and machine. Besides the original levels there are
``clean`` (no transform), ``phone-in-room`` (a song played in a room and recorded by a phone,
in the spirit of the Neural Audio Fingerprint protocol: tempo and pitch drift, a simulated room
impulse response, background noise at 0-10 dB SNR, a phone microphone's band and MP3
compression) and ``mixed``, the training policy: each clip is one of clean, large or
phone-in-room, chosen by its seed. audiomentations draws from Python's
``random`` and numpy's global generator; the augmenter seeds both for one call and restores
them afterwards.
"""

from __future__ import annotations

import enum
import inspect
import math
import re
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import audiomentations
import numpy as np

from ppazam_core.errors import ConfigError
from ppazam_core.toml_tables import read_toml

TRANSFORMS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        audiomentations.AddGaussianNoise,
        audiomentations.AddGaussianSNR,
        audiomentations.AddColorNoise,
        audiomentations.AddBackgroundNoise,
        audiomentations.TimeStretch,
        audiomentations.PitchShift,
        audiomentations.Shift,
        audiomentations.PolarityInversion,
        audiomentations.Gain,
        audiomentations.LowPassFilter,
        audiomentations.HighPassFilter,
        audiomentations.BandPassFilter,
        audiomentations.ClippingDistortion,
        audiomentations.TanhDistortion,
        audiomentations.ApplyImpulseResponse,
        audiomentations.Mp3Compression,
    )
}
NOISE_FOLDER_PARAM = "sounds_path"
ROOMS_FOLDER_PARAM = "ir_path"
_FOLDER_PARAMS = {"AddBackgroundNoise": NOISE_FOLDER_PARAM, "ApplyImpulseResponse": ROOMS_FOLDER_PARAM}
FOLDER_TRANSFORMS = tuple(_FOLDER_PARAMS)  # made from the sounds of a folder
POLICY_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a custom policy's name: never a condition (level@gain, level@length)


class Level(str, enum.Enum):
    """The built-in augmentation levels."""

    CLEAN = "clean"
    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"
    PHONE_IN_ROOM = "phone-in-room"
    MIXED = "mixed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TransformSpec:
    """One audiomentations transform by class name, with its keyword arguments."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, name: str, **params: Any) -> "TransformSpec":
        return cls(name, tuple(sorted(params.items())))


@dataclass(frozen=True)
class AugmentationPolicy:
    """A named list of transforms; ``some_of=k`` applies k of them chosen at random (as
    audiomentations' ``SomeOf``), otherwise all are applied in order, each with its own p.
    A mixture instead names other policies in ``one_of``: each clip gets one of them, chosen
    uniformly by its seed."""

    name: str
    transforms: tuple[TransformSpec, ...] = ()
    some_of: int | None = None
    one_of: tuple["AugmentationPolicy", ...] = ()

    def __post_init__(self) -> None:
        if self.one_of and (self.transforms or self.some_of is not None):
            raise ConfigError(f"policies.{self.name}: give either transforms or one_of, not both")
        for spec in self.transforms:
            _check_transform(self.name, spec)
        if self.some_of is not None and not 1 <= self.some_of <= len(self.transforms):
            raise ConfigError.bad_value(
                f"policies.{self.name}.some_of", self.some_of,
                f"an integer from 1 to the number of transforms ({len(self.transforms)})",
            )

    @property
    def needs_noise(self) -> bool:
        """Whether a background-noise folder must be supplied to apply the policy."""
        return self._needs("AddBackgroundNoise", NOISE_FOLDER_PARAM)

    @property
    def needs_rooms(self) -> bool:
        """Whether a folder of room impulse responses must be supplied to apply the policy."""
        return self._needs("ApplyImpulseResponse", ROOMS_FOLDER_PARAM)

    def named_folders(self) -> Iterator[tuple[str, str]]:
        """``(key, path)`` of each folder or file of sounds a transform of the policy (or of a
        policy it mixes) names itself, e.g. ``("policies.noisy.transforms.AddBackgroundNoise.sounds_path",
        "/data/noise")``; read when the transform is made, so checked before work starts
        (:mod:`ppazam_core.preflight`)."""
        for spec in self.transforms:
            param = _FOLDER_PARAMS.get(spec.name)
            params = dict(spec.params)
            if param in params:
                yield f"policies.{self.name}.transforms.{spec.name}.{param}", params[param]
        for part in self.one_of:
            yield from part.named_folders()

    def _needs(self, transform: str, folder_param: str) -> bool:
        return (any(t.name == transform and folder_param not in dict(t.params) for t in self.transforms)
                or any(p._needs(transform, folder_param) for p in self.one_of))

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any],
                  known: Mapping[str, "AugmentationPolicy"] | None = None) -> "AugmentationPolicy":
        """Build from a TOML table ``{some_of = k, transforms = [{name = ..., ...}, ...]}`` or
        ``{one_of = ["clean", "large", ...]}`` (built-in levels or the ``known`` policies)."""
        unknown = set(data) - {"some_of", "transforms", "one_of"}
        if unknown:
            raise ConfigError.bad_value(f"policies.{name}", sorted(unknown)[0], "some_of, transforms, one_of")
        if not isinstance(name, str) or not POLICY_NAME.fullmatch(name):
            raise ConfigError.bad_value("policies table name", name, "letters, digits, '-' and '_' (a condition "
                                        "such as clean@+3dB is a level at a gain, not a policy's name)")
        if "one_of" in data:
            if "transforms" in data or "some_of" in data:
                raise ConfigError(f"policies.{name}: give either transforms (and some_of) or one_of, not both")
            if not isinstance(data["one_of"], list) or not all(isinstance(part, str) for part in data["one_of"]):
                raise ConfigError.bad_value(f"policies.{name}.one_of", data["one_of"], "a list of policy names")
            if not data["one_of"]:
                raise ConfigError.bad_value(f"policies.{name}.one_of", [], "one policy or more to choose among")
            try:
                return cls(name, one_of=tuple(get_policy(other, known) for other in data["one_of"]))
            except ConfigError as e:
                raise ConfigError(f"policies.{name}.one_of (a mixture names built-in levels and policies that are "
                                  f"not mixtures): {e}") from e
        entries, some_of = data.get("transforms", []), data.get("some_of")
        if not isinstance(entries, list):
            raise ConfigError.bad_value(f"policies.{name}.transforms", entries, "a list of tables ({ name = ..., ... })")
        if some_of is not None and (isinstance(some_of, bool) or not isinstance(some_of, int)):
            raise ConfigError.bad_value(f"policies.{name}.some_of", some_of, "an integer")
        transforms = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise ConfigError.bad_value(f"policies.{name}.transforms[{i}]", entry, "a table ({ name = ..., ... })")
            entry = dict(entry)
            if "name" not in entry:
                raise ConfigError(f"policies.{name}.transforms[{i}] has no 'name'")
            transforms.append(TransformSpec.of(entry.pop("name"), **entry))
        return cls(name, tuple(transforms), some_of)


def builtin_policy(level: Level | str) -> AugmentationPolicy:
    """The original system's ``augment_policies``, exactly as DESIGN.md lists them, ``clean``
    (no transform: a clip cut straight out of the track), ``phone-in-room`` and the ``mixed``
    training policy (see the module docstring)."""
    level = _level(level)
    if level is Level.CLEAN:
        return AugmentationPolicy("clean")
    if level is Level.PHONE_IN_ROOM:
        return AugmentationPolicy(
            level.value,
            (
                TransformSpec.of("TimeStretch", min_rate=0.95, max_rate=1.05, p=0.5),
                TransformSpec.of("PitchShift", min_semitones=-0.5, max_semitones=0.5, p=0.5),
                TransformSpec.of("ApplyImpulseResponse", p=1.0),
                TransformSpec.of("AddBackgroundNoise", min_snr_db=0.0, max_snr_db=10.0, p=1.0),
                TransformSpec.of("HighPassFilter", min_cutoff_freq=150.0, max_cutoff_freq=400.0, p=1.0),
                TransformSpec.of("LowPassFilter", min_cutoff_freq=3500.0, max_cutoff_freq=7000.0, p=1.0),
                TransformSpec.of("Mp3Compression", min_bitrate=32, max_bitrate=96, p=1.0),
            ),
        )
    if level is Level.MIXED:
        return AugmentationPolicy(level.value, one_of=tuple(builtin_policy(other) for other in
                                                            (Level.CLEAN, Level.LARGE, Level.PHONE_IN_ROOM)))
    if level is Level.SMALL:
        return AugmentationPolicy(
            "small", (TransformSpec.of("AddGaussianNoise", min_amplitude=0.001, max_amplitude=0.005, p=0.5),)
        )
    medium = level is Level.MEDIUM
    return AugmentationPolicy(
        level.value,
        (
            TransformSpec.of("AddGaussianNoise", min_amplitude=0.001, max_amplitude=0.015, p=0.5),
            TransformSpec.of("TimeStretch", min_rate=0.8, max_rate=1.25, p=0.5),
            TransformSpec.of("PitchShift", min_semitones=-4.0, max_semitones=4.0, p=0.5),
            TransformSpec.of("Shift", min_shift=-0.5, max_shift=0.5, shift_unit="fraction", p=0.5),
            TransformSpec.of("AddBackgroundNoise", min_snr_db=3.0, max_snr_db=10.0, p=1.0)
            if medium
            else TransformSpec.of("AddBackgroundNoise", min_snr_db=3.0, max_snr_db=30.0,
                                  noise_transform="PolarityInversion", p=1.0),
        ),
        some_of=2 if medium else 4,
    )


def load_policies(path: str | Path) -> dict[str, AugmentationPolicy]:
    """Custom policies from the ``[policies.NAME]`` tables of a TOML file."""

    path = Path(path)
    try:
        data = read_toml(path, "policies file")
    except (OSError, ConfigError) as e:
        raise ConfigError(f"cannot read policies: {e}") from e
    try:
        return custom_policies(data.get("policies", {}))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def custom_policies(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, AugmentationPolicy]:
    """Policies from ``[policies.NAME]`` tables; a mixture may name built-in levels and the
    tables' policies that are not mixtures themselves.

    Raises:
        ConfigError: a table is named like a built-in level (it would silently change what that
            level's rows measure), or a policy is not valid.
    """
    if not isinstance(tables, Mapping):
        raise ConfigError.bad_value("policies", tables, "tables [policies.NAME]")
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise ConfigError.bad_value(f"policies.{name}", table, "a table [policies.NAME] of transforms or one_of")
    clashes = sorted(set(tables) & {level.value for level in Level})
    if clashes:
        raise ConfigError(f"policy name {clashes[0]!r} is a built-in level; choose another name")
    plain = {name: AugmentationPolicy.from_dict(name, table) for name, table in tables.items() if "one_of" not in table}
    mixtures = {name: AugmentationPolicy.from_dict(name, table, plain) for name, table in tables.items()
                if "one_of" in table}
    built = {**plain, **mixtures}
    return {name: built[name] for name in tables}


def get_policy(name: str, custom: Mapping[str, AugmentationPolicy] | None = None) -> AugmentationPolicy:
    """A built-in level or one of ``custom``, by name."""
    custom = custom or {}
    if name in custom:
        return custom[name]
    if name in {level.value for level in Level}:
        return builtin_policy(name)
    raise ConfigError.bad_value("policy", name, [level.value for level in Level] + sorted(custom))


class Augmenter:
    """Applies one policy to mono float32 clips under explicit seeds. ``noise_dir`` and
    ``rooms_dir`` are the folders of background noise and room impulse responses the policy's
    ``AddBackgroundNoise`` and ``ApplyImpulseResponse`` read when they name none."""

    def __init__(self, policy: AugmentationPolicy, sample_rate: int, noise_dir: Path | None = None,
                 rooms_dir: Path | None = None) -> None:
        if policy.needs_noise and noise_dir is None:
            raise ConfigError(f"policy {policy.name!r} adds background noise: give a noise folder")
        if policy.needs_rooms and rooms_dir is None:
            raise ConfigError(f"policy {policy.name!r} applies room impulse responses: give a rooms folder")
        self.policy = policy
        self.sample_rate = sample_rate
        self._choices = [Augmenter(p, sample_rate, noise_dir, rooms_dir) for p in policy.one_of]
        try:
            transforms = [_instantiate(spec, noise_dir, rooms_dir) for spec in policy.transforms]
        except ConfigError as e:
            raise ConfigError(f"augmentation policy {policy.name} (its [policies.{policy.name}] table, if custom): "
                              f"{e}") from e
        if not transforms:
            self._apply = None
        elif policy.some_of is None:
            self._apply = audiomentations.Compose(transforms, p=1.0)
        else:
            self._apply = audiomentations.SomeOf(policy.some_of, transforms, p=1.0)

    def __call__(self, audio: np.ndarray, seed: int) -> np.ndarray:
        """The augmented clip; the same ``(audio, seed)`` always gives the same output."""
        if self._choices:
            return self._choices[int(np.random.default_rng([seed, 1]).integers(len(self._choices)))](audio, seed)
        if self._apply is None:
            return np.array(audio, dtype=np.float32, copy=True)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed % (2**32))
            out = self._apply(samples=np.ascontiguousarray(audio, dtype=np.float32), sample_rate=self.sample_rate)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        return np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=-1.0).astype(np.float32, copy=False)


def _level(level: Level | str) -> Level:
    try:
        return Level(level)
    except ValueError:
        raise ConfigError.bad_value("level", level, [lv.value for lv in Level]) from None


def _check_transform(policy: str, spec: TransformSpec) -> None:
    where = f"policies.{policy}.transforms.{spec.name}"
    if spec.name not in TRANSFORMS:
        raise ConfigError.bad_value(f"policies.{policy}.transforms.name", spec.name, sorted(TRANSFORMS))
    parameters = inspect.signature(TRANSFORMS[spec.name].__init__).parameters
    allowed = set(parameters) - {"self"}
    for key, value in spec.params:
        if key not in allowed:
            raise ConfigError.bad_value(f"{where}.{key}", value, f"parameters of {spec.name}: {', '.join(sorted(allowed))}")
        if key == "noise_transform" and value not in TRANSFORMS:
            raise ConfigError.bad_value(f"{where}.noise_transform", value, sorted(TRANSFORMS))
        default = parameters[key].default
        if _kind(default) is not None and _kind(value) != _kind(default):
            raise ConfigError.bad_value(f"{where}.{key}", value, f"{_kind(default)} (its default is {default!r})")
        if key == _FOLDER_PARAMS.get(spec.name) and not isinstance(value, str):
            raise ConfigError.bad_value(f"{where}.{key}", value, "the path of a folder or an audio file (a string)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError.bad_value(f"{where}.{key}", value, "a finite number")
    if spec.name not in FOLDER_TRANSFORMS:  # those read their folders when made: their folders are checked before work starts
        _instantiate(spec, None, None, where)


def _kind(value: Any) -> str | None:
    """What a transform parameter's default says its values are: a number, a bool or a string
    (``None``: anything, e.g. a default of ``None``)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return "a string" if isinstance(value, str) else None


def _instantiate(spec: TransformSpec, noise_dir: Path | None, rooms_dir: Path | None, where: str = "") -> Any:
    params = dict(spec.params)
    if "noise_transform" in params:
        params["noise_transform"] = TRANSFORMS[params["noise_transform"]]()
    if spec.name == "AddBackgroundNoise" and NOISE_FOLDER_PARAM not in params:
        params[NOISE_FOLDER_PARAM] = str(noise_dir)
    if spec.name == "ApplyImpulseResponse" and ROOMS_FOLDER_PARAM not in params:
        params[ROOMS_FOLDER_PARAM] = str(rooms_dir)
    try:
        return TRANSFORMS[spec.name](**params)
    except (ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"{where or 'transform ' + spec.name} with {dict(spec.params)}: "
                          f"{str(e) or type(e).__name__ + ' (a value out of the range audiomentations accepts)'}") from e
