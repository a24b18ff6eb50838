"""Contrastive track embeddings (NT-Xent), and the HEAR-style interface to them.

Two augmentations of the same track are a positive pair; every other clip in the batch is a
negative. A track's embedding is the normalized mean of its segment embeddings. The HEAR
functions (``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``) let the
model be compared with other audio embedding models on raw audio (the HEAR 2021 common API,
Turian et al. 2022, checked by its ``hearvalidator`` in the tests): a timestamp embedding is the
embedding of the ``segment_s`` window centred on the timestamp (the sound zero-padded at both
ends), timestamps every ``timestamp_hop_s`` from 0 (default 50 ms, the most HEAR suggests).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ppazam_core.artifacts import load_weights, read_json, reading
from ppazam_core.models.encoder.references import track_means
from ppazam_core.models.encoder.shipped import SHIPPED, TRAIN
from ppazam_core.audio.library import MAX_SYNTHETIC_TRACKS
from ppazam_core.errors import ArtifactError, ConfigError, require_in_range
from ppazam_core.queries.features import FrontEnd, FrontEndConfig, Normalizer
from ppazam_core.models.cnn import CNNConfig, ConvBlock, FloatCNN
from ppazam_core.models.training import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE, MAX_TEMPERATURE
from ppazam_core.parallel import progress_bar

DEFAULT_TIMESTAMP_HOP_S = 0.05  # HEAR suggests at most 50 ms between timestamps
TRAINED_WEIGHTS = "trained"  # embedder_weights naming the contrastive model trained on the library
MAX_DIMENSION = 4096
MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# The encoder runs in the clear on the client, so its size costs no PBS, only training and
# embedding time. On the default suite's synthetic library without background songs (2026-12-02,
# 640 queries a condition, fp32 linear head, top-1 at clean / medium / large / phone-in-room, phone-in-room 1 s / 10 s):
#   3 stride-2 blocks of 32, 64, 64 channels   0.99 / 0.89 / 0.84 / 0.67, 0.50 / 0.87
#   3 stride-2 blocks of 64, 128, 128          0.99 / 0.91 / 0.85 / 0.74, 0.55 / 0.93
#   a stride-1 block of 32, then these         1.00 / 0.96 / 0.91 / 0.81, 0.59 / 0.96 (~3x the training time of the first)
ENCODER_BLOCKS = (ConvBlock(32, 3, 1), ConvBlock(64, 3, 2), ConvBlock(128, 3, 2), ConvBlock(128, 3, 2))
WINDOWS_PER_BATCH = 256  # windows decoded and embedded at once (a 3-s window at 16 kHz is 192 KB)


@dataclass(frozen=True)
class EmbeddingConfig:
    """The embedding families' client-side embedder. ``encoder``: ``"shipped"`` (default) for
    the fingerprint encoder shipped with ppazam (:mod:`ppazam_core.models.encoder`), a folder for one
    ``ppazam encoder train`` wrote, ``"train"`` for this module's contrastive model trained on
    each library (the recipe before the shipped encoder, kept for comparison; the other keys
    but ``embedder`` and ``embedder_weights`` are its settings). ``embedder``: empty for one of
    these, else a module
    implementing the HEAR API (``"package.module"``, :mod:`ppazam_core.models.hear`) fed the waveform,
    whose ``load_model`` gets ``embedder_weights``: empty for none (the module's own default
    weights), ``"trained"`` for the contrastive model trained here on the library (what
    ``ppazam_core.models.embeddings`` loads), else a path.
    ``background_tracks`` more songs of the synthetic generator (a seed of their own, outside
    the library, its distractors and its enrolled songs) join the contrastive training only:
    more classes for an embedding that must also separate songs enrolled after training."""

    dimension: int = 64
    blocks: tuple[ConvBlock, ...] = ENCODER_BLOCKS
    temperature: float = 0.1
    epochs: int = 15
    batch_tracks: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    background_tracks: int = 0
    embedder: str = ""
    embedder_weights: str = ""
    encoder: str = SHIPPED

    def __post_init__(self) -> None:
        require_in_range("embedding.dimension", self.dimension, 2, MAX_DIMENSION, integer=True)
        require_in_range("embedding.epochs", self.epochs, 1, MAX_EPOCHS, integer=True)
        require_in_range("embedding.batch_tracks", self.batch_tracks, 2, MAX_BATCH, integer=True)
        require_in_range("embedding.learning_rate", self.learning_rate, 0, MAX_LEARNING_RATE, low_open=True)
        require_in_range("embedding.temperature", self.temperature, 0, MAX_TEMPERATURE, low_open=True)
        require_in_range("embedding.background_tracks", self.background_tracks, 0, MAX_SYNTHETIC_TRACKS, integer=True)
        if not isinstance(self.embedder, str) or (self.embedder and not MODULE_NAME.match(self.embedder)):
            raise ConfigError.bad_value("embedding.embedder", self.embedder,
                                        "empty, or a module name like 'package.module'")
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ConfigError.bad_value("embedding.encoder", self.encoder,
                                        f"'{SHIPPED}', '{TRAIN}', or the folder of an encoder `ppazam encoder train` wrote")
        if not isinstance(self.embedder_weights, str):
            raise ConfigError.bad_value("embedding.embedder_weights", self.embedder_weights,
                                        f"empty, '{TRAINED_WEIGHTS}', or a path")

    def contrastive(self) -> "EmbeddingConfig":
        """The settings the contrastive model itself depends on (the client-side embedder left
        out), which name its folder in the store."""
        return replace(self, embedder="", embedder_weights="")

    @property
    def needs_trained_model(self) -> bool:
        """Whether the embedding families need the contrastive model trained here."""
        return (not self.embedder and self.encoder == TRAIN) or self.embedder_weights == TRAINED_WEIGHTS

    @property
    def uses_fingerprint_encoder(self) -> bool:
        """Whether the client-side embedder is a fingerprint encoder (shipped or a folder)."""
        return not self.embedder and self.encoder != TRAIN


class EmbeddingModel(nn.Module):
    """Front-end settings, normalization and an encoder to unit-length vectors."""

    def __init__(self, config: EmbeddingConfig, features: FrontEndConfig, normalizer: Normalizer,
                 segment_s: float) -> None:
        super().__init__()
        self.config = config
        self.features = features
        self.normalizer = normalizer
        self.segment_s = segment_s
        self.encoder = FloatCNN(CNNConfig(config.dimension, features.shape, config.blocks))
        self.sample_rate = features.sample_rate
        self.scene_embedding_size = config.dimension
        self.timestamp_embedding_size = config.dimension
        self.timestamp_hop_s = DEFAULT_TIMESTAMP_HOP_S

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.encoder(patches), dim=1)

    @torch.no_grad()
    def embed_patches(self, patches: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Unit-length embeddings of raw (not yet normalized) patches."""
        self.eval()
        normed = torch.from_numpy(self.normalizer(np.asarray(patches)))
        return torch.cat([self(normed[i : i + batch_size]) for i in range(0, len(normed), batch_size)]).numpy()

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.encoder.state_dict(), folder / "encoder.pt")
        self.normalizer.save(folder / "normalizer.npz")
        meta = {"embedding": asdict(self.config), "features": asdict(self.features), "segment_s": self.segment_s}
        (folder / "embedding.json").write_text(json.dumps(meta, indent=2))


def load_model(model_file_path: str | Path, timestamp_hop_s: float = DEFAULT_TIMESTAMP_HOP_S) -> EmbeddingModel:
    """HEAR API: load a saved embedding model folder, its timestamps ``timestamp_hop_s`` apart
    (seconds). An :class:`ArtifactError` when it holds none, a
    :class:`~ppazam_core.errors.DamagedArtifactError` when one of its files cannot be read, a
    :class:`ConfigError` for a hop that is not a positive number of seconds."""
    if isinstance(timestamp_hop_s, bool) or not isinstance(timestamp_hop_s, (int, float)) or not timestamp_hop_s > 0:
        raise ConfigError.bad_value("timestamp_hop_s", timestamp_hop_s, "seconds > 0")
    folder = Path(model_file_path)
    if not (folder / "embedding.json").is_file():
        raise ArtifactError(f"{folder} holds no embedding model (embedding.json is missing)")
    meta = read_json(folder / "embedding.json", "embedding", "features", "segment_s")
    with reading(folder / "embedding.json"):
        blocks = tuple(ConvBlock(**b) for b in meta["embedding"]["blocks"])
        config = EmbeddingConfig(**{**meta["embedding"], "blocks": blocks})
        features = FrontEndConfig(**meta["features"])
    model = EmbeddingModel(config, features, Normalizer.load(folder / "normalizer.npz"), meta["segment_s"])
    load_weights(model.encoder, folder / "encoder.pt")
    model.timestamp_hop_s = float(timestamp_hop_s)
    return model.eval()


def get_timestamp_embeddings(audio: torch.Tensor, model: EmbeddingModel) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAR API: ``(n_sounds, n_samples)`` float32 audio in [-1, 1] at ``model.sample_rate`` to
    float32 embeddings ``(n_sounds, n_timestamps, d)`` and their timestamps in milliseconds
    ``(n_sounds, n_timestamps)``: one every ``model.timestamp_hop_s`` from 0 to the sound's end,
    each the centre of a ``segment_s`` window. A ``ValueError`` for another shape."""
    audio = torch.as_tensor(audio, dtype=torch.float32)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    window = int(round(model.segment_s * model.sample_rate))
    hop = max(1, int(round(model.timestamp_hop_s * model.sample_rate)))
    n_windows = 1 + audio.shape[1] // hop
    padded = nn.functional.pad(audio, (window // 2, window - window // 2))
    windows = padded.unfold(1, window, hop)[:, :n_windows]  # a view (n_sounds, n_windows, window), i centred at i * hop
    front_end, step = FrontEnd(model.features), max(1, WINDOWS_PER_BATCH // audio.shape[0])
    embeddings = torch.cat([
        torch.from_numpy(model.embed_patches(front_end(windows[:, i : i + step].reshape(-1, window).numpy())))
        .reshape(audio.shape[0], -1, model.timestamp_embedding_size) for i in range(0, n_windows, step)], dim=1)
    timestamps = torch.arange(n_windows) * hop / model.sample_rate * 1000.0
    return embeddings, timestamps.expand(audio.shape[0], n_windows).clone()


def get_scene_embeddings(audio: torch.Tensor, model: EmbeddingModel) -> torch.Tensor:
    """HEAR API: one unit-length embedding per sound, the normalized mean over its windows."""
    embeddings, _ = get_timestamp_embeddings(audio, model)
    return nn.functional.normalize(embeddings.mean(dim=1), dim=1)


def train_embedding_model(patches: np.ndarray, labels: np.ndarray, normalizer: Normalizer, features: FrontEndConfig,
                          segment_s: float, config: EmbeddingConfig) -> tuple[EmbeddingModel, list[float]]:
    """Contrastive training on dataset rows; returns the model and the loss of each epoch."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = EmbeddingModel(config, features, normalizer, segment_s)
    X = torch.from_numpy(normalizer(np.asarray(patches)))
    rows_of = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    usable = [rows for rows in rows_of if len(rows) >= 2]
    if len(usable) < 2:
        raise ValueError("contrastive training needs at least two tracks with two clips each")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    batch = min(config.batch_tracks, len(usable))
    steps = max(1, sum(len(r) for r in usable) // (2 * batch))
    losses: list[float] = []
    with progress_bar() as progress:
        task = progress.add_task("embedding model (NT-Xent)", total=config.epochs)
        for _ in range(config.epochs):
            losses.append(_contrastive_epoch(model, optimizer, X, usable, batch, steps, rng, config.temperature))
            progress.update(task, advance=1, description=f"embedding model (loss {losses[-1]:.3f})")
    return model.eval(), losses


def _contrastive_epoch(model: EmbeddingModel, optimizer: torch.optim.Optimizer, X: torch.Tensor,
                       usable: list[np.ndarray], batch: int, steps: int, rng: np.random.Generator,
                       temperature: float) -> float:
    model.train()
    total = 0.0
    for _ in range(steps):
        chosen = rng.choice(len(usable), size=batch, replace=False)
        pairs = np.array([rng.choice(usable[c], size=2, replace=False) for c in chosen])
        z = model(X[torch.from_numpy(np.concatenate([pairs[:, 0], pairs[:, 1]]))])
        loss = nt_xent(z, temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss)
    return total / steps


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over ``2B`` unit vectors where rows ``i`` and ``i + B`` are positives."""
    n = z.shape[0] // 2
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return nn.functional.cross_entropy(similarity, targets)


def track_embeddings(model: EmbeddingModel, patches: np.ndarray, labels: np.ndarray, n_tracks: int) -> np.ndarray:
    """``(n_tracks, d)``: the normalized mean of each track's segment embeddings."""
    return track_means(model.embed_patches(patches), labels, n_tracks)
