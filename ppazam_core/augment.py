"""Query augmentation: the original ``augment_policies`` plus custom policies from TOML.

A policy is plain data (:class:`AugmentationPolicy`); :class:`Augmenter` turns it into
audiomentations transforms and applies them under a seed, so ``(seed, track id, index)``
names exactly one noisy clip on every run and machine. audiomentations draws from Python's
``random`` and numpy's global generator; the augmenter seeds both for one call and restores
them afterwards.
"""

from __future__ import annotations

import enum
import inspect
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import audiomentations
import numpy as np

from ppazam_core.errors import ConfigError

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
    )
}
NOISE_FOLDER_PARAM = "sounds_path"


class Level(str, enum.Enum):
    """The built-in augmentation levels."""

    CLEAN = "clean"
    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"

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
    audiomentations' ``SomeOf``), otherwise all are applied in order, each with its own p."""

    name: str
    transforms: tuple[TransformSpec, ...] = ()
    some_of: int | None = None

    def __post_init__(self) -> None:
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
        return any(
            t.name == "AddBackgroundNoise" and NOISE_FOLDER_PARAM not in dict(t.params)
            for t in self.transforms
        )

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> "AugmentationPolicy":
        """Build from a TOML table ``{some_of = k, transforms = [{name = ..., ...}, ...]}``."""
        unknown = set(data) - {"some_of", "transforms"}
        if unknown:
            raise ConfigError.bad_value(f"policies.{name}", sorted(unknown)[0], "some_of, transforms")
        transforms = []
        for i, entry in enumerate(data.get("transforms", [])):
            entry = dict(entry)
            if "name" not in entry:
                raise ConfigError(f"policies.{name}.transforms[{i}] has no 'name'")
            transforms.append(TransformSpec.of(entry.pop("name"), **entry))
        return cls(name, tuple(transforms), data.get("some_of"))


def builtin_policy(level: Level | str) -> AugmentationPolicy:
    """The original system's ``augment_policies``, exactly as DESIGN.md lists them, and ``clean``
    (no transform: a clip cut straight out of the track)."""
    level = _level(level)
    if level is Level.CLEAN:
        return AugmentationPolicy("clean")
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
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read policies from {path}: {e}") from e
    tables = data.get("policies", {})
    clashes = sorted(set(tables) & {level.value for level in Level})
    if clashes:
        raise ConfigError(f"{path}: policy name {clashes[0]!r} is a built-in level; choose another name")
    return {name: AugmentationPolicy.from_dict(name, table) for name, table in tables.items()}


def get_policy(name: str, custom: Mapping[str, AugmentationPolicy] | None = None) -> AugmentationPolicy:
    """A built-in level or one of ``custom``, by name."""
    custom = custom or {}
    if name in custom:
        return custom[name]
    if name in {level.value for level in Level}:
        return builtin_policy(name)
    raise ConfigError.bad_value("policy", name, [level.value for level in Level] + sorted(custom))


class Augmenter:
    """Applies one policy to mono float32 clips under explicit seeds."""

    def __init__(self, policy: AugmentationPolicy, sample_rate: int, noise_dir: Path | None = None) -> None:
        if policy.needs_noise and noise_dir is None:
            raise ConfigError(f"policy {policy.name!r} adds background noise: give a noise folder")
        self.policy = policy
        self.sample_rate = sample_rate
        transforms = [_instantiate(spec, noise_dir) for spec in policy.transforms]
        if not transforms:
            self._apply = None
        elif policy.some_of is None:
            self._apply = audiomentations.Compose(transforms, p=1.0)
        else:
            self._apply = audiomentations.SomeOf(policy.some_of, transforms, p=1.0)

    def __call__(self, audio: np.ndarray, seed: int) -> np.ndarray:
        """The augmented clip; the same ``(audio, seed)`` always gives the same output."""
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
    allowed = set(inspect.signature(TRANSFORMS[spec.name].__init__).parameters) - {"self"}
    for key, value in spec.params:
        if key not in allowed:
            raise ConfigError.bad_value(f"{where}.{key}", value, f"parameters of {spec.name}: {', '.join(sorted(allowed))}")
        if key == "noise_transform" and value not in TRANSFORMS:
            raise ConfigError.bad_value(f"{where}.noise_transform", value, sorted(TRANSFORMS))


def _instantiate(spec: TransformSpec, noise_dir: Path | None) -> Any:
    params = dict(spec.params)
    if "noise_transform" in params:
        params["noise_transform"] = TRANSFORMS[params["noise_transform"]]()
    if spec.name == "AddBackgroundNoise" and NOISE_FOLDER_PARAM not in params:
        params[NOISE_FOLDER_PARAM] = str(noise_dir)
    try:
        return TRANSFORMS[spec.name](**params)
    except (ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"transform {spec.name} with {spec.params}: {e}") from e
