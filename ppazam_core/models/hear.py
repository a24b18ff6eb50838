"""The embedding families' client-side embedder: the fingerprint encoder (shipped, or a folder),
the per-library contrastive model, or any module implementing the HEAR API.

``[embedding] encoder`` chooses between the first two (:mod:`ppazam_core.models.encoder`); a HEAR
module named by ``[embedding] embedder`` takes their place.

The HEAR 2021 common API (Turian et al., "HEAR: Holistic Evaluation of Audio Representations",
PMLR 176, 2022) asks a module for ``load_model(model_file_path)`` returning a model with
``sample_rate`` and ``scene_embedding_size``, and ``get_scene_embeddings(audio, model)`` mapping
``(n_sounds, n_samples)`` float32 audio in [-1, 1] to ``(n_sounds, scene_embedding_size)``.
Setting ``[embedding] embedder = "package.module"`` makes ``embedding-head``,
``embedding-head-top1``, ``embedding-knn`` and ``embedding-prototypes`` cut each query into
waveform segments (a ``waveform`` front-end, :mod:`ppazam_core.queries.features`), embed each segment
with the module's scene embedding on the client, in the clear, and run their server side (the
encrypted head, the index, the prototypes) on those vectors, L2-normalized. ppazam's own
contrastive model is such a module (:mod:`ppazam_core.models.embeddings`).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from importlib import import_module
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torchaudio

from ppazam_core.config import ExperimentConfig
from ppazam_core.queries.dataset import Dataset
from ppazam_core.models.embeddings import TRAINED_WEIGHTS, EmbeddingModel, load_model
from ppazam_core.models.encoder.model import WINDOW_S, FingerprintEncoder, load_encoder, saved_front_end, segment_front_end
from ppazam_core.models.encoder.shipped import encoder_folder, encoder_identity
from ppazam_core.errors import ConfigError
from ppazam_core.queries.features import FrontEndConfig
from ppazam_core.audio.library import Library
from ppazam_core.models.pipeline import contrastive_settings, train_embedding, training_dataset

SOUNDS_PER_BATCH = 16  # segments handed to get_scene_embeddings at once
HEAR_FUNCTIONS = ("load_model", "get_scene_embeddings")
HEAR_ATTRIBUTES = ("sample_rate", "scene_embedding_size")


def embedding_front_end(config: ExperimentConfig) -> FrontEndConfig:
    """The front-end of an embedding family's patches: the fingerprint encoder's own log-mel
    front-end over ``segment_s`` (:mod:`ppazam_core.models.encoder`), the config's log-mel features
    for the per-library contrastive model (``encoder = "train"``), else, for a HEAR module, the
    waveform of each ``segment_s`` segment at the working rate, leveled as the features are (a
    ``(1, 1, samples)`` patch)."""
    features = config.data.features
    if config.embedding.uses_fingerprint_encoder:
        return segment_front_end(saved_front_end(encoder_folder(config.embedding.encoder)), config.data.segment_s)
    if not config.embedding.embedder:
        return features
    return replace(features, kind="waveform", patch_height=1,
                   patch_width=int(round(config.data.segment_s * features.sample_rate)))


def window_segment_s(config: ExperimentConfig, segment_s: float | None) -> float:
    """The segments a reference-search family (``embedding-knn``, ``embedding-knn-packed``) cuts
    queries and tracks into: ``segment_s`` when its table sets one, else one window of the
    fingerprint encoder (:data:`~ppazam_core.models.encoder.model.WINDOW_S`, 1 s: each reference and each
    query segment describes one moment, as in the Neural Audio Fingerprint's search) or, for the
    other embedders, ``[data] segment_s``."""
    if segment_s is not None:
        return float(segment_s)
    return WINDOW_S if config.embedding.uses_fingerprint_encoder else config.data.segment_s


def at_segment(config: ExperimentConfig, segment_s: float) -> ExperimentConfig:
    """``config`` with ``[data] segment_s`` set to ``segment_s``: what a family cutting other
    segments builds and loads its embedder with (its store names still come from ``config``)."""
    if segment_s == config.data.segment_s:
        return config
    return replace(config, data=replace(config.data, segment_s=segment_s))


def hear_module(name: str) -> ModuleType:
    """The HEAR module ``name``, imported.

    Raises:
        ConfigError: it cannot be imported, or lacks ``load_model`` or ``get_scene_embeddings``.
    """
    try:
        module = import_module(name)
    except ImportError as e:
        raise ConfigError(f"embedding.embedder {name!r} cannot be imported ({e}); install it, or leave embedder "
                          "empty for ppazam's own") from None
    missing = [f for f in HEAR_FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise ConfigError(f"embedding.embedder {name!r} is not a HEAR module: it has no {', '.join(missing)}")
    return module


def embedding_settings(config: ExperimentConfig) -> dict:
    """What an embedding family's model depends on through its client-side embedder: the
    fingerprint encoder's weights (their SHA-256), or the contrastive model's settings
    (:func:`~ppazam_core.models.pipeline.contrastive_settings`), the ``[embedding]`` table and the
    HEAR module's source (:func:`embedder_fingerprint`)."""
    if config.embedding.uses_fingerprint_encoder:
        return {"embedding": config.embedding, "encoder_sha256": encoder_identity(config.embedding.encoder)}
    return {**contrastive_settings(config), "embedding": config.embedding, "embedder": embedder_fingerprint(config)}


def fingerprint_encoder(config: ExperimentConfig, folder: Path | None = None) -> FingerprintEncoder:
    """The fingerprint encoder ``[embedding] encoder`` names (or the copy in ``folder``), its
    features the patches of ``segment_s`` segments."""
    return load_encoder(folder or encoder_folder(config.embedding.encoder)).for_segments(config.data.segment_s)


def embedder_fingerprint(config: ExperimentConfig) -> str:
    """SHA-256 (16 hex digits) of the HEAR module's source file, so that a changed embedder
    trains the families' models again; empty for ppazam's own embedder (its code is in
    :func:`~ppazam_core.provenance.code_fingerprint`) and for a module without a source file."""
    name = config.embedding.embedder
    if not name or name.split(".")[0] == "ppazam_core":
        return ""
    source = getattr(hear_module(name), "__file__", None)
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else ""


class HearEmbedder:
    """A HEAR module's model as a client-side embedder: :meth:`embed_patches` maps waveform
    patches to unit-length scene embeddings. ``features`` is the waveform front-end of the
    patches it takes (:func:`embedding_front_end`).

    Raises:
        ConfigError: the module is not a HEAR module, its ``load_model`` fails, or its model
            lacks ``sample_rate`` or ``scene_embedding_size``.
    """

    def __init__(self, module: str, weights: str | Path | None, features: FrontEndConfig) -> None:
        self.module = hear_module(module)
        try:
            self.model = self.module.load_model() if weights is None else self.module.load_model(str(weights))
        except Exception as e:  # any failure of a third-party loader: name the module and its weights
            raise ConfigError(f"embedding.embedder {module!r} could not load its model from "
                              f"{'its default weights' if weights is None else weights} ({type(e).__name__}: {e}); "
                              "check embedding.embedder_weights: empty for the module's own default weights, "
                              "\"trained\" for the contrastive model ppazam trains on the library, or a path") from None
        missing = [a for a in HEAR_ATTRIBUTES if not hasattr(self.model, a)]
        if missing:
            raise ConfigError(f"the model of embedding.embedder {module!r} has no {', '.join(missing)} (HEAR API)")
        self.name = module
        self.features = features
        self.scene_embedding_size = int(self.model.scene_embedding_size)

    @torch.no_grad()
    def embed_patches(self, patches: np.ndarray) -> np.ndarray:
        """``(N, 1, 1, samples)`` float32 waveform patches at ``features.sample_rate`` to
        ``(N, scene_embedding_size)`` float32 unit-length embeddings (resampled to the model's
        rate first when the two differ).

        Raises:
            ValueError: the patches are not waveform patches, or the module returns another shape.
        """
        if patches.ndim != 4 or patches.shape[1:3] != (1, 1):
            raise ValueError(f"a HEAR embedder takes (N, 1, 1, samples) waveform patches, got {patches.shape}")
        rate = int(self.model.sample_rate)
        embedded = []
        for start in range(0, len(patches), SOUNDS_PER_BATCH):  # batch by batch: a training set may be memory-mapped
            audio = torch.from_numpy(np.array(patches[start : start + SOUNDS_PER_BATCH, 0, 0], dtype=np.float32))
            if rate != self.features.sample_rate:
                audio = torchaudio.functional.resample(audio, self.features.sample_rate, rate)
            embedded.append(torch.as_tensor(self.module.get_scene_embeddings(audio, self.model)).detach().cpu())
        vectors = torch.cat(embedded).float() if embedded else torch.zeros(0, self.scene_embedding_size)
        if vectors.shape != (len(patches), self.scene_embedding_size):
            raise ValueError(f"{self.name}.get_scene_embeddings returned shape {tuple(vectors.shape)}, expected "
                             f"{(len(patches), self.scene_embedding_size)}")
        return torch.nn.functional.normalize(vectors, dim=1).numpy()


Embedder = EmbeddingModel | FingerprintEncoder | HearEmbedder


def client_embedder(config: ExperimentConfig, trained: Path | None) -> Embedder:
    """The client-side embedder of an embedding family's model configured by ``config``:
    the fingerprint encoder or ppazam's per-library contrastive model stored in ``trained``
    (a model's ``embedding/`` copy), or the HEAR module ``[embedding]`` names (its weights
    ``trained``, none, or a path)."""
    embedding = config.embedding
    if embedding.uses_fingerprint_encoder:
        return fingerprint_encoder(config, trained)
    if not embedding.embedder:
        return load_model(trained)
    weights = {TRAINED_WEIGHTS: trained, "": None}.get(embedding.embedder_weights, embedding.embedder_weights)
    return HearEmbedder(embedding.embedder, weights, embedding_front_end(config))


def trained_embedder(library: Library, config: ExperimentConfig, cache_dir: Path, workers: int | None = None,
                     refresh: bool = False) -> tuple[Path | None, Embedder]:
    """What an embedding family needs before its server side: the folder of its client-side
    embedder's weights, which the family copies into its model folder as ``embedding/`` (the
    fingerprint encoder's, nothing trained; the contrastive model trained on ``library`` for
    ``encoder = "train"``; ``None`` for a HEAR module with weights of its own), and the embedder."""
    if config.embedding.uses_fingerprint_encoder:
        embedding = encoder_folder(config.embedding.encoder)
    elif config.embedding.needs_trained_model:
        embedding = train_embedding(library, config, cache_dir, workers, refresh)
    else:
        embedding = None
    return embedding, client_embedder(config, embedding)


def embedding_training_dataset(library: Library, config: ExperimentConfig, cache_dir: Path,
                               workers: int | None = None) -> Dataset:
    """The training segments of ``config`` as patches of :func:`embedding_front_end` (the
    shared log-mel training set for the per-library contrastive model)."""
    return training_dataset(library, replace(config.data, features=embedding_front_end(config)), cache_dir, workers)
