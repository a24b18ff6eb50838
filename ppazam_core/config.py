"""The data-path configuration, loadable from TOML.

A file may hold any of these tables; every key is optional and unknown keys are errors::

    [synthetic]             # SyntheticSpec: seed, n_tracks, duration_s, sample_rate
    [features]              # FrontEndConfig
    [data]                  # segment_s, train_policy, train_augmentations, eval_levels, ...
    [policies.NAME]         # custom augmentation policies (see ppazam_core.augment)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ppazam_core.augment import AugmentationPolicy, get_policy
from ppazam_core.dataset import DatasetSpec
from ppazam_core.errors import ConfigError
from ppazam_core.features import FrontEndConfig
from ppazam_core.library import SyntheticSpec
from ppazam_core.seeding import Split


@dataclass(frozen=True)
class DataConfig:
    """Library, front-end and the training and evaluation datasets built from them."""

    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    features: FrontEndConfig = field(default_factory=FrontEndConfig)
    segment_s: float = 3.0
    train_policy: str = "large"
    train_augmentations: int = 150
    eval_levels: tuple[str, ...] = ("small", "medium", "large")
    eval_queries: int = 10
    train_seed: int = 0
    eval_seed: int = 1
    policies: tuple[AugmentationPolicy, ...] = ()

    def __post_init__(self) -> None:
        for name in (self.train_policy, *self.eval_levels):
            self.policy(name)  # raises a ConfigError naming the allowed policies
        if self.train_seed == self.eval_seed:
            raise ConfigError.bad_value("data.eval_seed", self.eval_seed, f"any seed but train_seed ({self.train_seed})")

    def policy(self, name: str) -> AugmentationPolicy:
        return get_policy(name, {p.name: p for p in self.policies})

    def train_spec(self) -> DatasetSpec:
        return DatasetSpec(self.policy(self.train_policy), self.train_augmentations, self.segment_s,
                           self.features, self.train_seed, Split.TRAIN.value)

    def eval_spec(self, level: str) -> DatasetSpec:
        return DatasetSpec(self.policy(level), self.eval_queries, self.segment_s, self.features,
                           self.eval_seed, Split.EVAL.value)

    @classmethod
    def from_toml(cls, path: str | Path) -> "DataConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataConfig":
        _only(data, {"synthetic", "features", "data", "policies"}, "top-level table")
        data_table = dict(data.get("data", {}))
        scalar_keys = {f.name for f in fields(cls)} - {"synthetic", "features", "policies"}
        _only(data_table, scalar_keys, "data")
        if "eval_levels" in data_table:
            data_table["eval_levels"] = tuple(data_table["eval_levels"])
        synthetic = dict(data.get("synthetic", {}))
        _only(synthetic, {f.name for f in fields(SyntheticSpec)}, "synthetic")
        return cls(
            synthetic=SyntheticSpec(**synthetic),
            features=FrontEndConfig.from_dict(data.get("features", {})),
            policies=tuple(AugmentationPolicy.from_dict(name, table)
                           for name, table in data.get("policies", {}).items()),
            **data_table,
        )


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError.bad_value(where, key, sorted(allowed))
