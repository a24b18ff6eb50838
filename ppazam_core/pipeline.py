"""Training every stage of an identifier into one artifact folder, and compiling it for FHE.

library -> training dataset -> contrastive embeddings -> clusters -> fp32 cluster and
intra-cluster classifiers -> their QAT twins (fine-tuned under the accumulator rounding they
will be compiled with) -> compiled circuits. The folder lives in ``cache_dir/models`` under the
hash of the experiment config (less its ``fhe`` table but for the rounding bits) and the
library's fingerprint, and is written atomically: an interrupted run leaves nothing that
:class:`~ppazam_core.identifier.Identifier` would load. Compiled circuits go to
``circuits/<quant>-<hash of the fhe table>`` inside it, the client's keys to ``client-keys/``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ppazam_core.clustering import cluster_tracks
from ppazam_core.config import DataConfig, ExperimentConfig
from ppazam_core.dataset import Dataset, build_dataset
from ppazam_core.embeddings import load_model, track_embeddings, train_embedding_model
from ppazam_core.library import Library
from ppazam_core.fhe import compile_classifier
from ppazam_core.models import FloatCNN, build_model, qat_from_fp32, rounding_emulated
from ppazam_core.noise import prepared_noise_folder, synthetic_noise_bank
from ppazam_core.parallel import progress_bar
from ppazam_core.seeding import derive_seed
from ppazam_core.store import DONE_MARKER, atomic_folder, canonical_json, config_hash, is_complete
from ppazam_core.training import train_classifier

logger = logging.getLogger(__name__)


def model_folder(library: Library, config: ExperimentConfig, cache_dir: Path) -> Path:
    """Where the artifacts of ``config`` trained on ``library`` live."""
    return cache_dir / "models" / config_hash({"library": library.fingerprint(), "config": config.trained_parts()})


def quant_name(config: ExperimentConfig) -> str:
    """Sub-folder of the QAT classifiers, named by their bit widths."""
    spec = config.model
    return f"quant-w{spec.weight_bits}a{spec.activation_bits}i{spec.input_bits}"


def circuits_folder(model: Path, config: ExperimentConfig) -> Path:
    """Where the circuits compiled from the QAT classifiers of ``model`` with ``config.fhe`` live."""
    return model / "circuits" / f"{quant_name(config)}-{config_hash(config.fhe)}"


def key_folder(circuits: Path) -> Path:
    """The client's keys for ``circuits`` (secret: they never go to the server)."""
    return circuits.parent.parent / "client-keys" / circuits.name


def noise_folder(library: Library, data: DataConfig, cache_dir: Path) -> Path:
    """Background noise: ``data.noise_dir``, else the library's own folder (both prepared
    once at the working rate), else the built-in synthetic bank."""
    rate = data.features.sample_rate
    source = Path(data.noise_dir) if data.noise_dir else library.noise_dir
    if source is not None:
        return prepared_noise_folder(source, cache_dir, rate)
    return synthetic_noise_bank(cache_dir, seed=data.train_seed, sample_rate=rate)


def training_dataset(library: Library, data: DataConfig, cache_dir: Path, workers: int | None = None) -> Dataset:
    """The augmented training segments of ``data`` (built once, then read from the store)."""
    return build_dataset(library, data.train_spec(), cache_dir, noise_folder(library, data, cache_dir), workers)


def embedding_folder(library: Library, config: ExperimentConfig, cache_dir: Path) -> Path:
    """Where the contrastive embedding model of ``config`` trained on ``library`` lives; every
    family that embeds (two-stage clustering, embedding head, embedding k-NN) shares it."""
    key = {"library": library.fingerprint(), "data": config.data.train_spec(), "embedding": config.embedding}
    return cache_dir / "embeddings" / config_hash(key)


def train_embedding(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                    refresh: bool = False) -> Path:
    """Train (or find in the store) the contrastive embedding model; returns its folder, which
    :func:`~ppazam_core.embeddings.load_model` opens (its loss per epoch in ``losses.json``)."""
    folder = embedding_folder(library, config, cache_dir)
    if is_complete(folder) and not refresh:
        return folder
    dataset = training_dataset(library, config.data, cache_dir, workers)
    with atomic_folder(folder) as tmp:
        embedder, losses = train_embedding_model(dataset.X, dataset.y, dataset.normalizer, config.data.features,
                                                 config.data.segment_s, config.embedding)
        embedder.save(tmp)
        (tmp / "losses.json").write_text(json.dumps(losses))
    return folder


def train_identifier(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                     refresh: bool = False) -> Path:
    """Train (or find in the cache) every stage; returns the artifact folder."""
    folder = model_folder(library, config, cache_dir)
    if is_complete(folder) and not refresh:
        logger.info("loaded identifier from %s", folder)
        return folder
    timings: dict[str, float] = {}
    started = time.perf_counter()
    dataset = training_dataset(library, config.data, cache_dir, workers)
    timings["dataset_s"] = time.perf_counter() - started
    X = dataset.normalizer(np.asarray(dataset.X))
    y = dataset.y
    histories: dict[str, object] = {}

    with atomic_folder(folder) as tmp:
        started = time.perf_counter()
        embedding = train_embedding(library, config, cache_dir, workers, refresh)
        shutil.copytree(embedding, tmp / "embedding", ignore=shutil.ignore_patterns(DONE_MARKER))
        embedder = load_model(embedding)
        histories["embedding"] = json.loads((embedding / "losses.json").read_text())
        clustering = cluster_tracks(track_embeddings(embedder, dataset.X, y, len(library)), config.clusters)
        np.savez(tmp / "clusters.npz", assignment=clustering.assignment, centroids=clustering.centroids)
        timings["embedding_and_clusters_s"] = time.perf_counter() - started
        logger.info("clusters: %s", clustering.sizes())

        tasks = _classification_tasks(clustering.assignment, y)
        for precision in ("fp32", quant_name(config)):
            started = time.perf_counter()
            (tmp / precision).mkdir()
            for name, (rows, labels, n_classes) in tasks.items():
                if n_classes < 2:
                    continue  # a one-track cluster needs no classifier
                cnn = config.model.cnn(n_classes, config.data.features.shape)
                torch.manual_seed(derive_seed(config.training.seed, precision, name))
                if precision == "fp32":
                    model, train = FloatCNN(cnn), config.training
                else:
                    fp32 = FloatCNN(cnn)
                    fp32.load_state_dict(torch.load(tmp / "fp32" / f"{name}.pt", weights_only=True))
                    model, train = qat_from_fp32(fp32), config.qat
                with rounding_emulated(model, None if precision == "fp32" else config.qat_rounding_bits()):
                    history = train_classifier(model, X[rows], labels, train, f"{precision} {name}")
                torch.save(model.state_dict(), tmp / precision / f"{name}.pt")
                histories[f"{precision}/{name}"] = [asdict(e) for e in history.epochs]
            timings[f"{precision}_s"] = time.perf_counter() - started
        dataset.normalizer.save(tmp / "normalizer.npz")
        (tmp / "histories.json").write_text(json.dumps(histories))
        manifest = {
            "config_hash": folder.name,
            "config": json.loads(canonical_json(config)),
            "library": library.name,
            "library_fingerprint": library.fingerprint(),
            "track_ids": [t.id for t in library],
            "cluster_sizes": clustering.sizes(),
            "quant": quant_name(config),
            "timings": {k: round(v, 2) for k, v in timings.items()},
        }
        (tmp / "identifier.json").write_text(json.dumps(manifest, indent=2))
    return folder


def _classification_tasks(assignment: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Rows, labels and class count of the cluster classifier and of each intra classifier."""
    n_clusters = int(assignment.max()) + 1
    tasks = {}
    if n_clusters > 1:
        tasks["cluster"] = (np.arange(len(y)), assignment[y], n_clusters)
    for cluster in range(n_clusters):
        members = np.flatnonzero(assignment == cluster)
        rows = np.flatnonzero(np.isin(y, members))
        tasks[f"intra_{cluster:03d}"] = (rows, np.searchsorted(members, y[rows]), len(members))
    return tasks


def compile_identifier(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                       refresh: bool = False) -> Path:
    """Compile every QAT classifier of the trained identifier (training it first if needed)
    with Concrete ML; returns the circuits folder. A stored compilation is reused."""
    model = train_identifier(library, config, cache_dir, workers)
    folder = circuits_folder(model, config)
    if is_complete(folder) and not refresh:
        logger.info("loaded circuits from %s", folder)
        return folder
    shutil.rmtree(key_folder(folder), ignore_errors=True)  # keys of the circuits about to be replaced
    dataset = training_dataset(library, config.data, cache_dir, workers)
    X = dataset.normalizer(np.asarray(dataset.X))
    assignment = np.load(model / "clusters.npz")["assignment"]
    stats = {}
    tasks = {name: task for name, task in _classification_tasks(assignment, dataset.y).items() if task[2] >= 2}
    with atomic_folder(folder) as tmp, progress_bar() as progress:
        bar = progress.add_task("compiling for FHE", total=len(tasks))
        for name, (rows, _, n_classes) in tasks.items():
            qat = build_model(config.model.cnn(n_classes, config.data.features.shape), quantized=True)
            qat.load_state_dict(torch.load(model / quant_name(config) / f"{name}.pt", weights_only=True))
            rng = np.random.default_rng(derive_seed(config.fhe.seed, "calibration", name))
            calibration = X[np.sort(rng.choice(rows, size=min(config.fhe.calibration_rows, rows.size), replace=False))]
            (tmp / name).mkdir()
            stats[name] = asdict(compile_classifier(qat, calibration, n_classes, config.fhe, tmp / name))
            logger.info("compiled %s: %d PBS, %d bits", name, stats[name]["pbs_count"], stats[name]["max_bit_width"])
            progress.update(bar, advance=1, description=f"compiling for FHE ({name}: {stats[name]['pbs_count']} PBS)")
        (tmp / "circuits.json").write_text(json.dumps({"fhe": json.loads(canonical_json(config.fhe)),
                                                       "quant": quant_name(config), "circuits": stats}, indent=2))
    return folder
