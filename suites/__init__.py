"""Declarative benchmark suites: TOML files beside this module, or any path.

A suite names what to measure; the ``[experiment]`` table holds the experiment configuration
(the tables of :class:`ppazam_core.config.ExperimentConfig`) the suite starts from::

    description = "..."
    library = "synthetic"                  # or a folder
    families = ["two-stage-cnn"]
    modes = ["fp32", "quant", "fhe-sim", "fhe"]
    bit_widths = [4]                        # QAT weight and activation bits, one model each
    rounding_bits = [6]                     # Concrete ML rounding_threshold_bits, one compilation each
    levels = ["small", "medium", "large"]   # augmentation levels of the queries
    queries_per_track = 10
    query_s = 3.0
    fhe_queries = 2                         # truly encrypted queries per level
    latency_rounds = 5                      # repetitions of each timed stage
    seeds = { train = 0, eval = 1 }

Every key is checked; an unknown key or value is an error naming the allowed ones.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ppazam_core.config import ExperimentConfig
from ppazam_core.errors import ConfigError
from ppazam_core.recognition import Mode
from ppazam_core.models import MAX_BITS, MIN_BITS

SUITE_DIR = Path(__file__).resolve().parent
FAMILIES = ("two-stage-cnn",)


@dataclass(frozen=True)
class Suite:
    """What one benchmark run measures."""

    name: str
    description: str = ""
    library: str = "synthetic"
    families: tuple[str, ...] = FAMILIES
    modes: tuple[str, ...] = tuple(m.value for m in Mode)
    bit_widths: tuple[int, ...] = (4,)
    rounding_bits: tuple[int, ...] = (6,)
    levels: tuple[str, ...] = ("small", "medium", "large")
    queries_per_track: int = 10
    query_s: float = 3.0
    fhe_queries: int = 2
    latency_rounds: int = 5
    seeds: Mapping[str, int] = field(default_factory=lambda: {"train": 0, "eval": 1})
    experiment: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _members("families", self.families, FAMILIES)
        _members("modes", self.modes, [m.value for m in Mode])
        _members("bit_widths", self.bit_widths, range(MIN_BITS, MAX_BITS + 1))
        _members("rounding_bits", self.rounding_bits, range(2, 17))
        for key in ("queries_per_track", "latency_rounds"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise ConfigError.bad_value(f"suite {self.name}: {key}", getattr(self, key), "an integer >= 1")
        if not (isinstance(self.fhe_queries, int) and self.fhe_queries >= 0):
            raise ConfigError.bad_value(f"suite {self.name}: fhe_queries", self.fhe_queries, "an integer >= 0")
        if set(self.seeds) != {"train", "eval"}:
            raise ConfigError.bad_value(f"suite {self.name}: seeds", dict(self.seeds), "a table with train and eval")
        base = ExperimentConfig.from_dict(self.experiment)
        for level in self.levels:
            try:
                base.data.policy(level)
            except ConfigError as e:
                raise ConfigError(f"suite {self.name}: levels: {e}") from e
        for bits in self.bit_widths:
            for rounding in self.rounding_bits:
                self.config(bits, rounding)  # seeds and the bit widths against the experiment

    def config(self, bit_width: int, rounding_bits: int) -> ExperimentConfig:
        """The experiment of one (bit width, rounding) point of the suite."""
        base = ExperimentConfig.from_dict(self.experiment)
        data = replace(base.data, eval_levels=self.levels, eval_queries=self.queries_per_track,
                       segment_s=self.query_s, train_seed=self.seeds["train"], eval_seed=self.seeds["eval"])
        model = replace(base.model, weight_bits=bit_width, activation_bits=bit_width)
        return replace(base, data=data, model=model, fhe=replace(base.fhe, rounding_bits=rounding_bits))

    def points(self) -> list[tuple[int, int]]:
        """Every (bit width, rounding bits) pair, in suite order."""
        return [(b, r) for b in self.bit_widths for r in self.rounding_bits]

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> "Suite":
        allowed = {f.name for f in fields(cls)} - {"name"}
        for key in data:
            if key not in allowed:
                raise ConfigError.bad_value(f"suite {name}", key, sorted(allowed))
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(name=name, **values)


def load_suite(name_or_path: str | Path) -> Suite:
    """A suite by name (``quick``, ``default``, ``nightly``, ``paper``) or from a TOML path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = SUITE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError.bad_value("suite", str(name_or_path), available_suites() + ["a path to a .toml file"])
    if not path.is_file():
        raise ConfigError(f"suite file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"suite file {path} is not valid TOML: {e}") from e
    return Suite.from_dict(path.stem, data)


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.toml"))


def _members(key: str, values: tuple, allowed: Any) -> None:
    allowed = list(allowed)
    if not values:
        raise ConfigError(f"suite key {key} is empty; allowed: {', '.join(map(str, allowed))}")
    for value in values:
        if value not in allowed:
            raise ConfigError.bad_value(f"suite key {key}", value, allowed)
