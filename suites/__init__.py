"""Declarative benchmark suites: TOML files beside this module, or any path.

A suite names what to measure; the ``[experiment]`` table holds the experiment configuration
(the tables of :class:`ppazam_core.config.ExperimentConfig`) the suite starts from::

    description = "..."
    library = "synthetic"                  # or a folder
    families = ["two-stage-cnn"]           # also embedding-head, mfcc-logreg, landmark-fp, embedding-knn
    modes = ["fp32", "quant", "fhe-sim", "fhe"]  # also fhe-disable (the circuit run in the clear)
    bit_widths = [4]                        # QAT weight and activation bits, one model each
    rounding_bits = [6]                     # Concrete ML rounding_threshold_bits, one compilation each
    levels = ["clean", "small", "medium", "large", "phone-in-room"]  # augmentation levels, random gains
    gains = [-20, -10, 0, 10]               # a fixed-gain sweep (dB) of clean queries: clean@-20dB, ...
    query_lengths = [1, 2, 3, 5, 10]        # a length sweep (s) of phone-in-room queries: phone-in-room@1s, ...
    fhe_sweeps = false                      # the sweeps in fhe too (else fhe-sim stands for them)
    queries_per_track = 10
    query_tracks = 0                        # query this many tracks (a seeded choice); 0: every track
    query_s = 3.0
    fhe_budget_s = 60                       # seconds of truly encrypted queries per family (0: none)
    latency_rounds = 10                     # repetitions of each timed stage (the gate needs ~10)
    seeds = { train = 0, eval = 1 }
    distractor_tracks = 0                   # tracks held out of training, for open-set rejection
    enroll_tracks = 0                       # tracks held out of training, enrolled afterwards (families that enroll)
    shots = [1, 3, 5, 10]                   # enrollment segments per enrolled track (k of n-way k-shot)
    episode_ways = [5]                      # n of the n-way k-shot episodes among the enrolled tracks
    library_sizes = []                      # synthetic track counts to scale over (scaling suite)
    size_families = []                      # only these families at library_sizes, the suite's library too (empty: all, instead of it)
    project_tracks = 0                      # project the measured costs to this many tracks (reports/projection.py; 0: none)
    project_nodes = [1, 4, 16]              # ... on this many nodes
    project_cores = 16                      # ... of this many cores each

The bit widths and rounding bits sweep the two-stage CNN; the linear heads use the ``n_bits`` of
their ``[head]``/``[mfcc]`` tables and the clear-text families run once, in ``fp32``.

Every key is checked; an unknown key or value is an error naming the allowed ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ppazam_core.queries.augment import Level
from ppazam_core.queries.conditions import QueryCondition, gain_sweep, length_sweep
from ppazam_core.config import ExperimentConfig
from ppazam_core.toml_tables import read_toml, table_values
from ppazam_core.errors import ConfigError
from ppazam_core.families import family_names
from ppazam_core.models.cnn import MAX_BITS, MIN_BITS
from ppazam_core.recognition import Mode

SUITE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Suite:
    """What one benchmark run measures."""

    name: str
    description: str = ""
    library: str = "synthetic"
    families: tuple[str, ...] = field(default_factory=lambda: family_names()[:1])  # the default family
    modes: tuple[str, ...] = tuple(m.value for m in Mode)
    bit_widths: tuple[int, ...] = (4,)
    rounding_bits: tuple[int, ...] = (6,)
    levels: tuple[str, ...] = ("clean", "small", "medium", "large", "phone-in-room")
    gains: tuple[float, ...] = ()  # a fixed-gain sweep (dB) of clean queries: conditions clean@GAINdB
    query_lengths: tuple[float, ...] = (1, 2, 3, 5, 10)  # a length sweep (s) of phone-in-room queries: phone-in-room@Ls
    fhe_sweeps: bool = False  # whether the gain and length sweeps run truly encrypted too (fhe-sim always)
    queries_per_track: int = 10
    query_tracks: int = 0
    query_s: float = 3.0
    fhe_budget_s: float = 60.0  # seconds of truly encrypted queries per family, shared by its fhe conditions
    latency_rounds: int = 10
    seeds: Mapping[str, int] = field(default_factory=lambda: {"train": 0, "eval": 1})
    distractor_tracks: int = 0
    enroll_tracks: int = 0
    shots: tuple[int, ...] = (1, 3, 5, 10)
    episode_ways: tuple[int, ...] = (5,)
    library_sizes: tuple[int, ...] = ()
    size_families: tuple[str, ...] = ()
    project_tracks: int = 0
    project_nodes: tuple[int, ...] = (1, 4, 16)
    project_cores: int = 16
    experiment: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _members("families", self.families, family_names())
        _members("modes", self.modes, [m.value for m in Mode])
        _members("bit_widths", self.bit_widths, range(MIN_BITS, MAX_BITS + 1))
        _members("rounding_bits", self.rounding_bits, range(2, 17))
        for key in ("queries_per_track", "latency_rounds"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise ConfigError.bad_value(f"suite {self.name}: {key}", getattr(self, key), "an integer >= 1")
        if isinstance(self.fhe_budget_s, bool) or not isinstance(self.fhe_budget_s, (int, float)) \
                or not self.fhe_budget_s >= 0:
            raise ConfigError.bad_value(f"suite {self.name}: fhe_budget_s", self.fhe_budget_s, "seconds >= 0")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.shots) or not self.shots:
            raise ConfigError.bad_value(f"suite {self.name}: shots", self.shots, "integers >= 1")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in self.episode_ways):
            raise ConfigError.bad_value(f"suite {self.name}: episode_ways", self.episode_ways, "integers >= 2")
        for key in ("distractor_tracks", "query_tracks", "enroll_tracks", "project_tracks"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 0):
                raise ConfigError.bad_value(f"suite {self.name}: {key}", getattr(self, key), "an integer >= 0")
        if any(not isinstance(n, int) or n < 2 for n in self.library_sizes):
            raise ConfigError.bad_value(f"suite {self.name}: library_sizes", self.library_sizes, "integers >= 2")
        if not isinstance(self.project_cores, int) or isinstance(self.project_cores, bool) or self.project_cores < 1:
            raise ConfigError.bad_value(f"suite {self.name}: project_cores", self.project_cores, "an integer >= 1")
        if not self.project_nodes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                         for n in self.project_nodes):
            raise ConfigError.bad_value(f"suite {self.name}: project_nodes", self.project_nodes, "integers >= 1")
        if self.size_families:
            _members("size_families", self.size_families, self.families)
        if self.size_families and not self.library_sizes:
            raise ConfigError.bad_value(f"suite {self.name}: size_families", self.size_families,
                                        "families measured at library_sizes: give library_sizes too")
        if self.library_sizes and self.library != "synthetic":
            raise ConfigError.bad_value(f"suite {self.name}: library_sizes", self.library_sizes,
                                        "only with library = \"synthetic\"")
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0 for s in self.query_lengths):
            raise ConfigError.bad_value(f"suite {self.name}: query_lengths", self.query_lengths, "seconds > 0")
        if any(isinstance(g, bool) or not isinstance(g, (int, float)) for g in self.gains):
            raise ConfigError.bad_value(f"suite {self.name}: gains", self.gains, "numbers of dB")
        if not isinstance(self.fhe_sweeps, bool):
            raise ConfigError.bad_value(f"suite {self.name}: fhe_sweeps", self.fhe_sweeps, "true or false")
        if set(self.seeds) != {"train", "eval"}:
            raise ConfigError.bad_value(f"suite {self.name}: seeds", dict(self.seeds), "a table with train and eval")
        base = ExperimentConfig.from_dict(self.experiment)
        for level in self.conditions:
            try:
                base.data.policy(QueryCondition.parse(level).level)
            except ConfigError as e:
                raise ConfigError(f"suite {self.name}: levels: {e}") from e
        for bits in self.bit_widths:
            for rounding in self.rounding_bits:
                self.config(bits, rounding)  # seeds and the bit widths against the experiment

    def with_tracks(self, n_tracks: int) -> "Suite":
        """This suite on a synthetic library of ``n_tracks`` instead of its own size (``pytest
        bench --tracks``: a reduced run whose costs :mod:`reports.projection` multiplies out).

        Raises:
            ConfigError: the suite's library is not the generator, or it sweeps library sizes.
        """
        if self.library != "synthetic" or self.library_sizes:
            raise ConfigError.bad_value(f"suite {self.name}: --tracks", n_tracks,
                                        "only for a suite of the synthetic library without library_sizes")
        experiment = {**self.experiment, "synthetic": {**self.experiment.get("synthetic", {}), "n_tracks": n_tracks}}
        return replace(self, experiment=experiment)

    def config(self, bit_width: int, rounding_bits: int, n_tracks: int | None = None) -> ExperimentConfig:
        """The experiment of one (bit width, rounding, library size) point of the suite."""
        base = ExperimentConfig.from_dict(self.experiment)
        synthetic = base.data.synthetic if n_tracks is None else replace(base.data.synthetic, n_tracks=n_tracks)
        data = replace(base.data, eval_levels=self.conditions, eval_queries=self.queries_per_track, synthetic=synthetic,
                       segment_s=self.query_s, train_seed=self.seeds["train"], eval_seed=self.seeds["eval"])
        model = replace(base.model, weight_bits=bit_width, activation_bits=bit_width)
        return replace(base, data=data, model=model, fhe=replace(base.fhe, rounding_bits=rounding_bits))

    @property
    def conditions(self) -> tuple[str, ...]:
        """The query conditions measured: every level at random gains, then the gain sweep, then
        the length sweep (less the suite's own query length when phone-in-room is a level:
        that level measures it)."""
        measured = self.query_s if Level.PHONE_IN_ROOM.value in self.levels else None
        lengths = tuple(s for s in self.query_lengths if s != measured)
        return self.levels + gain_sweep(Level.CLEAN.value, self.gains) + length_sweep(Level.PHONE_IN_ROOM.value, lengths)

    def fhe_conditions(self) -> tuple[str, ...]:
        """The conditions measured truly encrypted: the levels, and the sweeps when ``fhe_sweeps``."""
        if Mode.FHE.value not in self.modes or self.fhe_budget_s == 0:
            return ()
        return self.conditions if self.fhe_sweeps else self.levels

    def is_sweep(self, condition: str) -> bool:
        """Whether ``condition`` is a point of the gain or length sweep rather than a level."""
        return condition not in self.levels

    def points(self) -> list[tuple[int, int]]:
        """Every (bit width, rounding bits) pair, in suite order."""
        return [(b, r) for b in self.bit_widths for r in self.rounding_bits]

    def sizes(self) -> tuple[int | None, ...]:
        """The synthetic library sizes to run (``None``: the suite's library as it is): the
        suite's library and then ``library_sizes`` when ``size_families`` names the families
        measured at those sizes, else ``library_sizes`` instead of it."""
        if self.size_families:
            return (None, *self.library_sizes)
        return self.library_sizes or (None,)

    def families_at(self, n_tracks: int | None) -> tuple[str, ...]:
        """The families measured at library size ``n_tracks`` (a value of :meth:`sizes`)."""
        return self.size_families if self.size_families and n_tracks is not None else self.families

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> "Suite":
        """The suite ``name`` of a suite file's keys, each type-checked (:func:`table_values`).

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or one the suite refuses.
        """
        return cls(name=name, **table_values(data, cls, f"suite {name}", {f.name for f in fields(cls)} - {"name"}))


def load_suite(name_or_path: str | Path) -> Suite:
    """A suite by name (one of :func:`available_suites`) or from a TOML path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = SUITE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError.bad_value("suite", str(name_or_path), available_suites() + ["a path to a .toml file"])
    return Suite.from_dict(path.stem, read_toml(path, "suite file"))


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.toml"))


def _members(key: str, values: tuple, allowed: Any) -> None:
    allowed = list(allowed)
    if not values:
        raise ConfigError(f"suite key {key} is empty; allowed: {', '.join(map(str, allowed))}")
    for value in values:
        if value not in allowed:
            raise ConfigError.bad_value(f"suite key {key}", value, allowed)
