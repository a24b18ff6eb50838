"""Configuration, loadable from TOML.

A file may hold any of these tables; every key is optional and unknown keys are errors::

    [synthetic]             # SyntheticSpec: seed, n_tracks, duration_s, sample_rate
    [features]              # FrontEndConfig
    [data]                  # segment_s, train_policy, train_augmentations, eval_levels, noise_dir, ...
    [policies.NAME]         # custom augmentation policies (see ppazam_core.queries.augment)
    [embedding]             # EmbeddingConfig (contrastive track embeddings; embedder: a HEAR module)
    [clusters]              # ClusterConfig: n_clusters (1 = single stage), balanced, ...
    [model]                 # classifier blocks and bit widths (see ppazam_core.models.cnn)
    [training]              # TrainConfig of the fp32 classifiers
    [qat]                   # TrainConfig of the QAT fine-tuning
    [identify]              # cluster_top_k, combine
    [fhe]                   # FheConfig: rounding_bits, rounding_method, p_error, calibration_rows
    [TABLE]                 # the settings of a registered model family that declares TABLE
                            # (built in: [head], [mfcc], [landmark], [knn]; see ppazam_core.families)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ppazam_core.queries.augment import AugmentationPolicy, custom_policies, get_policy
from ppazam_core.models.clustering import ClusterConfig
from ppazam_core.queries.conditions import QueryCondition, check_gain_range
from ppazam_core.queries.dataset import DatasetSpec
from ppazam_core.models.embeddings import EmbeddingConfig
from ppazam_core.models.encoder.shipped import encoder_identity
from ppazam_core.errors import ConfigError, require_in_range
from ppazam_core.queries.features import FrontEndConfig
from ppazam_core.audio.library import SyntheticSpec
from ppazam_core.models.cnn import DEFAULT_BLOCKS, CNNConfig, ConvBlock, check_bits
from ppazam_core.seeding import Split
from ppazam_core.toml_tables import only_keys, read_table, read_toml, table_values
from ppazam_core.models.training import TrainConfig

DATA_TABLES = {"synthetic", "features", "data", "policies"}
COMBINE_RULES = ("mean-log-prob", "majority-vote")
CORE_TABLES = {"embedding", "clusters", "model", "training", "qat", "identify", "fhe"}
ROUNDING_METHODS = ("approximate", "exact")
MIN_SEGMENT_S, MAX_SEGMENT_S = 0.25, 60.0  # one model input, in seconds (queries are 1 to 10 s)
MAX_CLIPS_PER_TRACK = 100_000  # training clips or queries of one track (64 tracks x 100,000 x 3 s: 1.2 TB of float32)
MAX_CALIBRATION_ROWS = 1_000_000


@dataclass(frozen=True)
class DataConfig:
    """Library, front-end and the training and evaluation datasets built from them."""

    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    features: FrontEndConfig = field(default_factory=FrontEndConfig)
    segment_s: float = 3.0
    # each training clip is clean, large or phone-in-room: the original "large" alone never trains
    # on a clean clip, a room or a codec
    train_policy: str = "mixed"
    train_augmentations: int = 150
    # and more for a long track: a contrastive embedding trained on 150 clips of each 3-minute
    # Debian song identified clean queries within 0.25 s of a training clip's start at 0.79
    # top-1 and those farther at 0.51-0.65 (0.69 in all); 450 clips a song gave 0.90 (nearest
    # prototype, no background songs; 0.79 with 150). 150 a minute leaves a 30-s track at 150
    train_clips_per_minute: float = 150.0
    eval_levels: tuple[str, ...] = ("clean", "small", "medium", "large", "phone-in-room")  # query conditions
    eval_queries: int = 10
    train_seed: int = 0
    eval_seed: int = 1
    noise_dir: str | None = None
    policies: tuple[AugmentationPolicy, ...] = ()
    # recording gains (dB), drawn per clip: a phone's level is arbitrary, and +10 dB clips loud tracks
    train_gain_db: tuple[float, float] = (-20.0, 10.0)
    query_gain_db: tuple[float, float] = (-20.0, 10.0)

    def __post_init__(self) -> None:
        for key in ("train_gain_db", "query_gain_db"):
            object.__setattr__(self, key, check_gain_range(f"data.{key}", tuple(getattr(self, key))))
        require_in_range("data.segment_s", self.segment_s, MIN_SEGMENT_S, MAX_SEGMENT_S)
        require_in_range("data.train_augmentations", self.train_augmentations, 1, MAX_CLIPS_PER_TRACK, integer=True)
        require_in_range("data.train_clips_per_minute (0: the count alone)", self.train_clips_per_minute, 0,
                         MAX_CLIPS_PER_TRACK)
        require_in_range("data.eval_queries", self.eval_queries, 1, MAX_CLIPS_PER_TRACK, integer=True)
        try:
            self.policy(self.train_policy)
        except ConfigError as e:
            raise ConfigError(f"data.train_policy: {e}") from e
        if not self.eval_levels:
            raise ConfigError.bad_value("data.eval_levels", list(self.eval_levels),
                                        "one query condition or more (e.g. [\"clean\"])")
        for name in self.eval_levels:
            try:
                self.policy(QueryCondition.parse(name).level)
            except ConfigError as e:
                raise ConfigError(f"data.eval_levels: {e}") from e
        if self.train_seed == self.eval_seed:
            raise ConfigError.bad_value("data.eval_seed", self.eval_seed, f"any seed but train_seed ({self.train_seed})")

    def policy(self, name: str) -> AugmentationPolicy:
        return get_policy(name, {p.name: p for p in self.policies})

    def train_spec(self) -> DatasetSpec:
        return DatasetSpec(self.policy(self.train_policy), self.train_augmentations, self.segment_s,
                           self.features, self.train_seed, Split.TRAIN.value, self.train_gain_db,
                           clips_per_minute=self.train_clips_per_minute)

    def eval_spec(self, condition: str) -> DatasetSpec:
        """The queries of a condition (see :mod:`ppazam_core.queries.conditions`): ``LEVEL`` clips of one
        segment at random gains, ``@GAINdB`` at a fixed gain, ``@SECONDSs`` of that length."""
        parsed = QueryCondition.parse(condition)
        gain = self.query_gain_db if parsed.gain_db is None else (parsed.gain_db, parsed.gain_db)
        return DatasetSpec(self.policy(parsed.level), self.eval_queries, self.segment_s, self.features,
                           self.eval_seed, Split.EVAL.value, gain, parsed.length_s)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataConfig":
        only_keys(data, DATA_TABLES, "top-level table")
        _tables(data)
        return cls(
            synthetic=read_table(data.get("synthetic", {}), SyntheticSpec, "synthetic"),
            features=read_table(data.get("features", {}), FrontEndConfig, "features"),
            policies=tuple(custom_policies(data.get("policies", {})).values()),
            **table_values(data.get("data", {}), cls, "data", {f.name for f in fields(cls)} - DATA_TABLES),
        )


@dataclass(frozen=True)
class ModelSpec:
    """Classifier architecture shared by the cluster and intra-cluster classifiers."""

    blocks: tuple[ConvBlock, ...] = DEFAULT_BLOCKS
    weight_bits: int = 4
    activation_bits: int = 4
    input_bits: int = 8
    # QAT fine-tuning under the accumulator rounding of fhe.rounding_bits (models.rounding_emulated):
    # the default model's fhe-sim top-1 rose 5-10 points, its top-1 in the clear fell 1-2
    rounding_aware: bool = True

    def __post_init__(self) -> None:
        check_bits(weight_bits=self.weight_bits, activation_bits=self.activation_bits, input_bits=self.input_bits)
        if not isinstance(self.rounding_aware, bool):
            raise ConfigError.bad_value("model.rounding_aware", self.rounding_aware, "true or false")

    def cnn(self, n_classes: int, input_shape: tuple[int, int, int]) -> CNNConfig:
        """The classifier config for ``n_classes`` outputs."""
        return CNNConfig(n_classes, input_shape, self.blocks, self.weight_bits, self.activation_bits, self.input_bits)


@dataclass(frozen=True)
class FheConfig:
    """Compilation settings. ``rounding_bits=None`` disables accumulator rounding.

    The defaults keep fhe-sim within a few points of the QAT model: at 6 rounding bits the
    default cluster classifier loses ~20 points of accuracy to rounding alone (the same loss
    shows with rounding in the clear), at 7 bits a few points, for about twice the time per
    PBS; at 7 bits ``p_error=0.05`` measured no worse than 0.01 at half the cost per PBS.
    """

    rounding_bits: int | None = 7
    rounding_method: str = "approximate"
    p_error: float = 0.05
    calibration_rows: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounding_bits is not None and not (isinstance(self.rounding_bits, int) and 2 <= self.rounding_bits <= 16):
            raise ConfigError.bad_value("fhe.rounding_bits", self.rounding_bits, "an integer from 2 to 16, or omit it")
        if self.rounding_method not in ROUNDING_METHODS:
            raise ConfigError.bad_value("fhe.rounding_method", self.rounding_method, ROUNDING_METHODS)
        if not 0.0 < self.p_error < 1.0:
            raise ConfigError.bad_value("fhe.p_error", self.p_error, "0 < p_error < 1")
        require_in_range("fhe.calibration_rows", self.calibration_rows, 1, MAX_CALIBRATION_ROWS, integer=True)

    def rounding(self) -> dict | None:
        """The ``rounding_threshold_bits`` argument of Concrete ML."""
        if self.rounding_bits is None:
            return None
        return {"n_bits": self.rounding_bits, "method": self.rounding_method}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a trained identifier; its hash names the artifacts."""

    data: DataConfig = field(default_factory=DataConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    clusters: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    # 60 epochs: at 30 the fp32 classifiers still improved (best epochs 21-28) and top-1 on the
    # default synthetic suite was 1-4 points lower
    training: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=60, patience=8))
    # QAT fine-tuning with the fp32 settings: measured on the default synthetic suite, a shorter,
    # gentler fine-tune (8 epochs, lr 5e-4) left the 4-bit twin 5-8 points of top-1 behind fp32,
    # this one 0-2 points (30 epochs) and 2-3 points (60), before model.rounding_aware; under the
    # rounding emulation it ends 5-7 points behind in the clear, and lr 5e-4 did no better
    qat: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=60, patience=8))
    # one cluster: each cluster searched costs one more encrypted classifier call (19-27 s here);
    # with 2 the default model answered in ~81 s, fhe-sim top-1 within 2 points, top-3 8-11 points higher
    cluster_top_k: int = 1
    combine: str = COMBINE_RULES[0]
    fhe: FheConfig = field(default_factory=FheConfig)
    # the family tables whose settings differ from the family's defaults, by table name: a config
    # (and its hash) holds no table of a family it leaves at its defaults, so installing or
    # removing a plug-in family changes no other configuration
    tables: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cluster_top_k < 1:
            raise ConfigError.bad_value("identify.cluster_top_k", self.cluster_top_k, "an integer >= 1")
        clusters = self.clusters.n_clusters
        if clusters is not None and self.cluster_top_k > clusters:
            raise ConfigError.bad_value("identify.cluster_top_k", self.cluster_top_k,
                                        f"at most clusters.n_clusters ({clusters}): a query searches that many clusters")
        if self.combine not in COMBINE_RULES:
            raise ConfigError.bad_value("identify.combine", self.combine, COMBINE_RULES)

    def table(self, name: str) -> Any:
        """The settings of the family table ``name`` (e.g. ``config.table("head")``), its
        family's defaults unless the config sets them; a :class:`ConfigError` when no registered
        family declares it."""
        if name in self.tables:
            return self.tables[name]
        registered = _registered_tables()
        if name not in registered:
            raise ConfigError.bad_value("family config table", name, sorted(registered))
        return registered[name]()

    def trained_parts(self) -> dict[str, Any]:
        """What the trained two-stage models depend on: everything but the FHE compilation
        settings (save the rounding the QAT twin is fine-tuned under) and the families' tables."""
        parts = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("fhe", "tables")}
        encoder = {"encoder_sha256": encoder_identity(self.embedding.encoder)} \
            if self.embedding.uses_fingerprint_encoder else {}
        return {**parts, "embedding": self.embedding.contrastive(), "qat_rounding_bits": self.qat_rounding_bits(),
                **encoder}

    def float_parts(self) -> dict[str, Any]:
        """What the fp32 stages (embedding, clusters, fp32 classifiers) depend on: the trained
        parts less the QAT fine-tuning and every bit width, so all QAT twins of one architecture share them."""
        parts = {k: v for k, v in self.trained_parts().items() if k not in ("qat", "qat_rounding_bits")}
        return {**parts, "model": {"blocks": self.model.blocks}}

    def qat_rounding_bits(self) -> int | None:
        """The accumulator rounding the QAT fine-tuning emulates (``None``: none)."""
        return self.fhe.rounding_bits if self.model.rounding_aware else None

    @classmethod
    def from_canonical(cls, config: Mapping[str, Any]) -> "ExperimentConfig":
        """The config whose canonical JSON (as stored in artifact manifests) is ``config``."""
        data = copy.deepcopy(dict(config["data"]))
        policies = {p["name"]: _policy_table(p) for p in data.pop("policies")}
        return cls.from_dict({
            "synthetic": data.pop("synthetic"),
            "features": data.pop("features"),
            "data": data,
            "policies": policies,
            **{name: config[name] for name in ("embedding", "clusters", "model", "training", "qat")},
            "identify": {"cluster_top_k": config["cluster_top_k"], "combine": config["combine"]},
            **({"fhe": config["fhe"]} if "fhe" in config else {}),
            # tables as stored since the family registry, else at the top level as before it; a
            # table of a family no longer installed cannot matter to the model that stored it
            **{name: value for name, value in config.get("tables", config).items() if name in _registered_tables()},
        })

    @classmethod
    def from_toml(cls, path: str | Path) -> "ExperimentConfig":
        """The config of a TOML file; a :class:`ConfigError` as :func:`read_toml` and :meth:`from_dict` raise."""
        return cls.from_dict(read_toml(Path(path), "config file"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        """The config of TOML tables, each key type-checked (:func:`read_table`); a key left out
        keeps the experiment's default (e.g. the QAT fine-tuning settings).

        Raises:
            ConfigError: an unknown table or key, a value of the wrong type or out of range.
        """
        only_keys(data, DATA_TABLES | CORE_TABLES | set(_registered_tables()), "top-level table")
        _tables(data)
        default = cls()
        core = {name: read_table(data.get(name, {}), type(getattr(default, name)), name, getattr(default, name))
                for name in sorted(CORE_TABLES - {"identify"})}
        return cls(
            data=DataConfig.from_dict({k: v for k, v in data.items() if k in DATA_TABLES}),
            tables=_family_tables(data),
            **core,
            **table_values(data.get("identify", {}), cls, "identify", {"cluster_top_k", "combine"}),
        )


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """A :class:`ConfigError` naming ``key``, ``value`` and what is ``allowed`` unless ``ok``."""
    if not ok:
        raise ConfigError.bad_value(key, value, allowed)


def _registered_tables() -> dict[str, type]:
    from ppazam_core.families.registry import family_tables  # the registry's families import this module

    return family_tables()


def _family_tables(data: Mapping[str, Any]) -> dict[str, Any]:
    """The family tables ``data`` sets, read and checked (a missing key keeps the family's
    default), less those equal to their family's defaults."""
    read = {name: read_table(data[name], cls, name) for name, cls in sorted(_registered_tables().items())
            if name in data}
    return {name: settings for name, settings in read.items() if settings != type(settings)()}


def _policy_table(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The TOML table of a custom policy from its canonical JSON (a mixture names its parts)."""
    if policy.get("one_of"):
        return {"one_of": [part["name"] for part in policy["one_of"]]}
    return {"some_of": policy["some_of"],
            "transforms": [{"name": t["name"], **dict(t["params"])} for t in policy["transforms"]]}


def _tables(data: Mapping[str, Any]) -> None:
    """A :class:`ConfigError` for a top-level key holding a value instead of a table."""
    for name, value in data.items():
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a table ([{name}] with keys under it), not {value!r}")
