"""Training every stage of an identifier into one artifact folder, and compiling it for FHE.

library -> training dataset -> contrastive embeddings -> clusters -> fp32 cluster and
intra-cluster classifiers -> their QAT twins (fine-tuned under the accumulator rounding they
will be compiled with) -> compiled circuits. The folder lives in ``cache_dir/models`` under the
hash of the experiment config (less its ``fhe`` table but for the rounding bits) and the
library's fingerprint, and is written atomically: an interrupted run leaves nothing that
:class:`~ppazam_core.models.identifier.Identifier` would load. The fp32 stages are trained once into
``cache_dir/fp32`` (keyed without the bit widths and the QAT settings) and copied into every
model folder that shares them, so a bit-width sweep trains only QAT twins. Compiled circuits go to
``circuits/<quant>-<hash of the fhe table>`` inside it; the client's keys go to a client folder outside it
(:func:`~ppazam_core.fhe.deployment.client_key_dir`).
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

from ppazam_core.artifacts import load_weights, read_arrays, read_json
from ppazam_core.models.clustering import Clustering, cluster_tracks
from ppazam_core.config import DataConfig, ExperimentConfig
from ppazam_core.queries.dataset import Dataset, build_dataset
from ppazam_core.fhe.deployment import client_key_dir, forget_keys
from ppazam_core.models.embeddings import load_model, track_embeddings, train_embedding_model
from ppazam_core.models.encoder.model import FingerprintEncoder, load_encoder
from ppazam_core.models.encoder.references import reference_embeddings, track_means
from ppazam_core.models.encoder.shipped import encoder_folder
from ppazam_core.audio.library import Library, synthetic_distractors
from ppazam_core.fhe.concrete import compile_classifier
from ppazam_core.models.identifier import FAMILY
from ppazam_core.manifest import model_manifest, write_manifest
from ppazam_core.models.cnn import FloatCNN, build_model, qat_from_fp32, rounding_emulated
from ppazam_core.audio.noise import prepared_noise_folder, synthetic_noise_bank
from ppazam_core.parallel import progress_bar
from ppazam_core.seeding import derive_seed
from ppazam_core.threads import fixed_threads
from ppazam_core.store import DONE_MARKER, atomic_folder, canonical_json, config_hash, is_complete
from ppazam_core.models.training import train_classifier

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
    key = {"library": library.fingerprint(), "data": config.data.train_spec(), **contrastive_settings(config)}
    return cache_dir / "embeddings" / config_hash(key)


def contrastive_settings(config: ExperimentConfig) -> dict:
    """What the contrastive model depends on beside the library and its training segments: its
    own settings and, with background songs, the generator settings they are drawn from."""
    background = {"background": config.data.synthetic} if config.embedding.background_tracks else {}
    return {"embedding": config.embedding.contrastive(), **background}


@fixed_threads()
def train_embedding(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                    refresh: bool = False) -> Path:
    """Train (or find in the store) the contrastive embedding model; returns its folder, which
    :func:`~ppazam_core.models.embeddings.load_model` opens (its loss per epoch in ``losses.json``)."""
    folder = embedding_folder(library, config, cache_dir)
    if is_complete(folder) and not refresh:
        return folder
    dataset = training_dataset(library, config.data, cache_dir, workers)
    X, y = np.asarray(dataset.X), np.asarray(dataset.y)
    if config.embedding.background_tracks:
        background = synthetic_distractors(config.data.synthetic, config.embedding.background_tracks, cache_dir,
                                           workers or 1, "background")
        extra = build_dataset(background, config.data.train_spec(), cache_dir, noise_folder(library, config.data, cache_dir),
                              workers)
        X, y = np.concatenate([X, np.asarray(extra.X)]), np.concatenate([y, np.asarray(extra.y) + len(library)])
    with atomic_folder(folder) as tmp:
        embedder, losses = train_embedding_model(X, y, dataset.normalizer, config.data.features,
                                                 config.data.segment_s, config.embedding.contrastive())
        embedder.save(tmp)
        (tmp / "losses.json").write_text(json.dumps(losses))
    return folder


def enrolled_track_embeddings(library: Library, config: ExperimentConfig, encoder: FingerprintEncoder) -> np.ndarray:
    """``(T, d)``: each track's normalized mean embedding by the fingerprint encoder over its
    clean segments, one every half segment (enrollment, nothing trained)."""
    segment_s = config.data.segment_s
    vectors, tracks, _, _ = reference_embeddings(encoder.for_segments(segment_s), library, segment_s, segment_s / 2)
    return track_means(vectors, tracks, len(library))


def float_folder(library: Library, config: ExperimentConfig, cache_dir: Path) -> Path:
    """Where the fp32 stages of ``config`` trained on ``library`` live: embedding, clusters and
    fp32 classifiers, which every bit width and rounding of the QAT twins shares."""
    return cache_dir / "fp32" / config_hash({"library": library.fingerprint(), "config": config.float_parts()})


@fixed_threads()
def train_float_stages(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                       refresh: bool = False, dataset: Dataset | None = None) -> Path:
    """Train (or find in the store) the embedding (none with a fingerprint encoder: the library's
    tracks are embedded by it), the clusters and the fp32 classifiers; returns their folder (``embedding/``, ``clusters.npz``, ``fp32/``, ``histories.json``, ``timings.json``).
    ``dataset``: the training dataset, when the caller has already loaded it."""
    folder = float_folder(library, config, cache_dir)
    if is_complete(folder) and not refresh:
        return folder
    if dataset is None:
        dataset = training_dataset(library, config.data, cache_dir, workers)
    X = dataset.normalizer(np.asarray(dataset.X))
    timings: dict[str, float] = {}
    with atomic_folder(folder) as tmp:
        started = time.perf_counter()
        histories: dict[str, object] = {}
        if config.embedding.uses_fingerprint_encoder:
            embedding = encoder_folder(config.embedding.encoder)
            vectors = enrolled_track_embeddings(library, config, load_encoder(embedding))
        else:
            embedding = train_embedding(library, config, cache_dir, workers, refresh)
            histories["embedding"] = read_json(embedding / "losses.json")
            vectors = track_embeddings(load_model(embedding), dataset.X, dataset.y, len(library))
        shutil.copytree(embedding, tmp / "embedding", ignore=shutil.ignore_patterns(DONE_MARKER))
        clustering = cluster_tracks(vectors, config.clusters)
        np.savez(tmp / "clusters.npz", assignment=clustering.assignment, centroids=clustering.centroids)
        timings["embedding_and_clusters_s"] = time.perf_counter() - started
        logger.info("clusters: %s", clustering.sizes())
        started = time.perf_counter()
        (tmp / "fp32").mkdir()
        for name, (rows, labels, n_classes) in _classification_tasks(clustering.assignment, dataset.y).items():
            torch.manual_seed(derive_seed(config.training.seed, "fp32", name))
            model = FloatCNN(config.model.cnn(n_classes, config.data.features.shape))
            history = train_classifier(model, X[rows], labels, config.training, f"fp32 {name}")
            torch.save(model.state_dict(), tmp / "fp32" / f"{name}.pt")
            histories[f"fp32/{name}"] = [asdict(e) for e in history.epochs]
        timings["fp32_s"] = time.perf_counter() - started
        (tmp / "histories.json").write_text(json.dumps(histories))
        (tmp / "timings.json").write_text(json.dumps(timings))
    return folder


@fixed_threads()
def train_identifier(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                     refresh: bool = False) -> Path:
    """Train (or find in the cache) every stage; returns the artifact folder. The fp32 stages
    come from :func:`train_float_stages`, so only the QAT twins are new for another bit width.
    A damaged file of a stored stage is a :class:`~ppazam_core.errors.DamagedArtifactError`."""
    folder = model_folder(library, config, cache_dir)
    if is_complete(folder) and not refresh:
        logger.info("loaded identifier from %s", folder)
        return folder
    started = time.perf_counter()
    dataset = training_dataset(library, config.data, cache_dir, workers)
    timings = {"dataset_s": time.perf_counter() - started}
    X = dataset.normalizer(np.asarray(dataset.X))
    float_stages = train_float_stages(library, config, cache_dir, workers, refresh, dataset)
    timings.update(read_json(float_stages / "timings.json"))

    with atomic_folder(folder) as tmp:
        shutil.copytree(float_stages, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(DONE_MARKER, "timings.json"))
        histories = read_json(float_stages / "histories.json")
        clustering = Clustering(*read_arrays(float_stages / "clusters.npz", "assignment", "centroids"))
        precision = quant_name(config)
        started = time.perf_counter()
        (tmp / precision).mkdir()
        for name, (rows, labels, n_classes) in _classification_tasks(clustering.assignment, dataset.y).items():
            torch.manual_seed(derive_seed(config.training.seed, precision, name))
            fp32 = FloatCNN(config.model.cnn(n_classes, config.data.features.shape))
            model = qat_from_fp32(load_weights(fp32, float_stages / "fp32" / f"{name}.pt"))
            with rounding_emulated(model, config.qat_rounding_bits()):
                history = train_classifier(model, X[rows], labels, config.qat, f"{precision} {name}")
            torch.save(model.state_dict(), tmp / precision / f"{name}.pt")
            histories[f"{precision}/{name}"] = [asdict(e) for e in history.epochs]
        timings[f"{precision}_s"] = time.perf_counter() - started
        dataset.normalizer.save(tmp / "normalizer.npz")
        (tmp / "histories.json").write_text(json.dumps(histories))
        write_manifest(tmp, model_manifest(FAMILY, folder, library, config, timings,
                                           cluster_sizes=clustering.sizes(), quant=precision))
    return folder


def _classification_tasks(assignment: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Rows, labels and class count of the cluster classifier and of each intra classifier (a
    one-track cluster needs none)."""
    n_clusters = int(assignment.max()) + 1
    tasks = {}
    if n_clusters > 1:
        tasks["cluster"] = (np.arange(len(y)), assignment[y], n_clusters)
    for cluster in range(n_clusters):
        members = np.flatnonzero(assignment == cluster)
        rows = np.flatnonzero(np.isin(y, members))
        if members.size > 1:
            tasks[f"intra_{cluster:03d}"] = (rows, np.searchsorted(members, y[rows]), len(members))
    return tasks


@fixed_threads()
def compile_identifier(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                       refresh: bool = False) -> Path:
    """Compile every QAT classifier of the trained identifier (training it first if needed)
    with Concrete ML; returns the circuits folder. A stored compilation is reused. A damaged
    file of the trained identifier is a :class:`~ppazam_core.errors.DamagedArtifactError`."""
    model = train_identifier(library, config, cache_dir, workers)
    folder = circuits_folder(model, config)
    if is_complete(folder) and not refresh:
        logger.info("loaded circuits from %s", folder)
        return folder
    forget_keys(folder, client_key_dir(model))
    dataset = training_dataset(library, config.data, cache_dir, workers)
    X = dataset.normalizer(np.asarray(dataset.X))
    assignment = read_arrays(model / "clusters.npz", "assignment")[0]
    stats = {}
    tasks = _classification_tasks(assignment, dataset.y)
    with atomic_folder(folder) as tmp, progress_bar() as progress:
        bar = progress.add_task("compiling for FHE", total=len(tasks))
        for name, (rows, _, n_classes) in tasks.items():
            qat = load_weights(build_model(config.model.cnn(n_classes, config.data.features.shape), quantized=True),
                               model / quant_name(config) / f"{name}.pt")
            rng = np.random.default_rng(derive_seed(config.fhe.seed, "calibration", name))
            calibration = X[np.sort(rng.choice(rows, size=min(config.fhe.calibration_rows, rows.size), replace=False))]
            (tmp / name).mkdir()
            stats[name] = asdict(compile_classifier(qat, calibration, n_classes, config.fhe, tmp / name))
            logger.info("compiled %s: %d PBS, %d bits", name, stats[name]["pbs_count"], stats[name]["max_bit_width"])
            progress.update(bar, advance=1, description=f"compiling for FHE ({name}: {stats[name]['pbs_count']} PBS)")
        (tmp / "circuits.json").write_text(json.dumps({"fhe": json.loads(canonical_json(config.fhe)),
                                                       "quant": quant_name(config), "circuits": stats}, indent=2))
    return folder
