"""The registry of model families, in the style of lhotse's ``register_extractor`` and
lm-evaluation-harness's task registry: a family is one :class:`Family` record, registered by
the module that implements it, and the CLI, the bench, the reports and ``compare`` know a
family only through it.

Families outside this package register through the entry-point group ``ppazam.families``
(``pyproject.toml``: ``[project.entry-points."ppazam.families"] my-family = "my_pkg.family"``);
loading the entry point's object (a module that calls :func:`register`, or a :class:`Family`)
registers it. A broken entry point is logged and left out; the built-in families still run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ppazam_core.errors import ConfigError
from ppazam_core.modes import Mode

if TYPE_CHECKING:
    from ppazam_core.config import ExperimentConfig
    from ppazam_core.queries.features import FrontEndConfig
    from ppazam_core.audio.library import Library
    from ppazam_core.recognition import Recognizer

ENTRY_POINT_GROUP = "ppazam.families"
BUILT_IN = "ppazam_core.families"  # the package whose import registers the built-in families
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilyTable:
    """A family's settings: the TOML table ``name`` of an experiment config, read into
    ``config`` (a frozen dataclass whose defaults are the family's; it validates itself in
    ``__post_init__``). Two families may share one table (same name, same class)."""

    name: str
    config: type


@dataclass(frozen=True)
class Family:
    """What the harness needs to know of a model family.

    * ``train(library, config, cache_dir, workers, refresh, compiled)`` returns the trained
      :class:`~ppazam_core.recognition.Recognizer`, loaded from the store when it holds it
      (``refresh``: train again), with its compiled circuits when ``compiled``;
    * ``is_trained(library, config, cache_dir, compiled)`` says whether the store holds it;
    * ``modes``: the modes it runs in (clear-text families: ``fp32`` only);
    * ``table``: its config table, if it has one (:meth:`ExperimentConfig.table`);
    * ``front_end(config)``: the front-end of its patches (default: the config's features);
    * ``segment(config)``: the seconds of audio a patch holds, the segment queries are cut into
      (default: ``[data] segment_s``; a query longer than it is cut into segments every half
      segment and their scores averaged);
    * ``bits(config)``: the bit width its model is quantized to (default 32: clear text);
    * ``sweeps_rounding``: a suite makes one model per (bit width, rounding) point, named by
      the config's rounding bits; else one model per suite, named with rounding 0;
    * ``stages``: latency stages beside ``features`` and ``query`` that its models time
      (:meth:`Recognizer.stage_calls`);
    * ``load(folder)``: the model of one folder it wrote (``None``: not loadable on its own,
      e.g. a model whose circuits live apart from it);
    * ``enroll(model, tracks, folder, remove=(), shots=None)``: writes into ``folder`` (atomically)
      and returns the model with the tracks of the library ``tracks`` added without training,
      from ``shots`` segments each (``None``: the family's default), and the track ids
      ``remove`` dropped; its manifest (``model.json``) lists them under ``enrolled`` and ``removed``
      (``None``: the family cannot enroll);
    * ``enroll_shots``: whether ``enroll`` takes a song from ``shots`` segments (the few-shot
      families); ``False``: it takes every song whole, as training does (the kNN families), and
      the bench measures one enrollment (``enroll:song``) instead of one per ``shots``.
    """

    name: str
    train: Callable[["Library", "ExperimentConfig", Path, int | None, bool, bool], "Recognizer"]
    is_trained: Callable[["Library", "ExperimentConfig", Path, bool], bool]
    modes: tuple[Mode, ...] = tuple(Mode)
    table: FamilyTable | None = None
    front_end: Callable[["ExperimentConfig"], "FrontEndConfig"] | None = None
    segment: Callable[["ExperimentConfig"], float] | None = None
    bits: Callable[["ExperimentConfig"], int] | None = None
    sweeps_rounding: bool = False
    stages: tuple[str, ...] = ()
    load: Callable[[Path], "Recognizer"] | None = None
    enroll: Callable[..., "Recognizer"] | None = None
    enroll_shots: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise ConfigError.bad_value("family name", self.name, "lowercase words joined by '-', e.g. 'my-family'")
        if not self.modes or any(not isinstance(m, Mode) for m in self.modes):
            raise ConfigError.bad_value(f"modes of family {self.name}", self.modes, [m.value for m in Mode])

    def features(self, config: "ExperimentConfig") -> "FrontEndConfig":
        return config.data.features if self.front_end is None else self.front_end(config)

    def segment_s(self, config: "ExperimentConfig") -> float:
        return config.data.segment_s if self.segment is None else float(self.segment(config))

    def bit_width(self, config: "ExperimentConfig") -> int:
        return 32 if self.bits is None else int(self.bits(config))

    def rounding_bits(self, config: "ExperimentConfig") -> int:
        """The rounding a bench point of this family is named with (0: no sweep)."""
        return (config.fhe.rounding_bits or 0) if self.sweeps_rounding else 0


_registry: dict[str, Family] = {}
_loaded = False


def register(family: Family) -> Family:
    """Add ``family`` to the registry and return it. A :class:`ConfigError` when another family
    holds its name, or its table's name with another class."""
    held = _registry.get(family.name)
    if held is not None and held != family:
        raise ConfigError(f"family {family.name!r} is registered twice")
    if family.table is not None:
        for other in _registry.values():
            if other.table is not None and other.table.name == family.table.name and other.table != family.table:
                raise ConfigError(f"families {other.name!r} and {family.name!r} both claim config table "
                                  f"[{family.table.name}] with other settings")
    _registry[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family by name: the built-in ones first, then those of entry points."""
    _load()
    return dict(_registry)


def family_names() -> tuple[str, ...]:
    return tuple(families())


def get_family(name: str) -> Family:
    """The family named ``name``; a :class:`ConfigError` listing the registered ones otherwise."""
    known = families()
    if name not in known:
        raise ConfigError.bad_value("family", name, tuple(known))
    return known[name]


def family_tables() -> dict[str, type]:
    """The config tables of the registered families, by table name."""
    return {f.table.name: f.table.config for f in families().values() if f.table is not None}


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_module(BUILT_IN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded: Any = entry.load()
            if isinstance(loaded, Family):
                register(loaded)
        except Exception as e:  # a broken plug-in must not take the built-in families down with it
            logger.warning("family entry point %s (%s) left out: %s: %s", entry.name, entry.value, type(e).__name__, e)
