"""The fingerprint encoder: log-mel windows of one second to small unit-length vectors.

In the spirit of the Neural Audio Fingerprint (Chang et al., ICASSP 2021): the unit is a 1-s
window, a query or a reference segment is cut into windows every half second, each window is
embedded, and a segment's embedding is the normalized mean of its windows'. The front-end is
its own (:data:`FINGERPRINT_FRONT_END`: 64 mel bands from 100 Hz to 4 kHz, a 64-ms window every
16 ms, the band a phone keeps), not the two-stage CNN's coarse 32 x 32 patch. It runs in the
clear on the client, so its size costs no PBS; its ``dimension`` is what the encrypted heads
consume. Each window is standardized on its own (mean and spread of its log-mel values), so a
recording's gain changes nothing.

A saved encoder is a folder of ``encoder.pt`` (the weights) and ``encoder.json`` (its
:class:`EncoderArchitecture` and front-end); :func:`load_encoder` opens it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ppazam_core.artifacts import load_weights, read_json, reading
from ppazam_core.errors import ArtifactError, ConfigError, is_integer
from ppazam_core.queries.features import FrontEndConfig

ENCODER_FILE = "encoder.pt"
ENCODER_META = "encoder.json"
WINDOW_S = 1.0  # the unit an embedding describes
WINDOW_HOP_S = 0.5  # windows of a longer segment
# 16 kHz audio (the harness's working rate), 1,024-point FFT (64 ms) every 256 samples (16 ms),
# 64 mel bands over 100 Hz - 4 kHz: the Neural Audio Fingerprint's 8-kHz band at 4x its frame rate
FINGERPRINT_FRONT_END = FrontEndConfig(kind="logmel", sample_rate=16_000, n_fft=1024, hop_length=256, n_mels=64,
                                       f_min=100.0, f_max=4000.0, patch_height=64, patch_width=63)
BATCH = 512  # windows embedded at once


@dataclass(frozen=True)
class EncoderArchitecture:
    """Convolution widths (each a 3 x 3 stride-2 block with batch norm and ReLU), the hidden
    width of the projection and the embedding's ``dimension``."""

    channels: tuple[int, ...] = (32, 64, 128, 256)
    hidden: int = 256
    dimension: int = 64

    def __post_init__(self) -> None:
        channels = tuple(self.channels)
        object.__setattr__(self, "channels", channels)
        if not channels or not all(is_integer(c) and c >= 1 for c in channels):
            raise ConfigError.bad_value("encoder.channels", self.channels, "a list of integers >= 1")
        for key in ("hidden", "dimension"):
            value = getattr(self, key)
            if not is_integer(value) or value < 2:
                raise ConfigError.bad_value(f"encoder.{key}", value, "an integer >= 2")


def window_frames(front_end: FrontEndConfig, seconds: float) -> int:
    """Spectrogram frames of ``seconds`` of audio (torchaudio's centred STFT)."""
    return 1 + int(round(seconds * front_end.sample_rate)) // front_end.hop_length


class FingerprintEncoder(nn.Module):
    """``(N, 1, n_mels, frames)`` log-mel patches to ``(N, dimension)`` unit vectors: every
    1-s window of a patch (every 0.5 s; one window, repeated, when the patch is shorter) is
    embedded and the windows' mean normalized."""

    def __init__(self, architecture: EncoderArchitecture = EncoderArchitecture(),
                 front_end: FrontEndConfig = FINGERPRINT_FRONT_END) -> None:
        super().__init__()
        self.architecture = architecture
        self.front_end = front_end
        self.window = window_frames(front_end, WINDOW_S)
        self.hop = max(1, window_frames(front_end, WINDOW_HOP_S) - 1)
        layers: list[nn.Module] = []
        previous = 1
        for channels in architecture.channels:
            layers += [nn.Conv2d(previous, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
            previous = channels
        self.convolutions = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.convolutions(torch.zeros(1, 1, front_end.n_mels, self.window)).numel()
        self.projection = nn.Sequential(nn.Flatten(), nn.Linear(flat, architecture.hidden), nn.ReLU(),
                                        nn.Linear(architecture.hidden, architecture.dimension))
        self.scene_embedding_size = architecture.dimension
        self.features = replace(front_end, patch_width=self.window)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """``(N, 1, n_mels, window)`` log-mel windows (dB) to ``(N, dimension)`` unit vectors."""
        flat = windows.flatten(1)
        standardized = (windows - flat.mean(1)[:, None, None, None]) / (flat.std(1)[:, None, None, None] + 1e-3)
        return nn.functional.normalize(self.projection(self.convolutions(standardized)), dim=1)

    def for_segments(self, segment_s: float) -> "FingerprintEncoder":
        """This encoder, its :attr:`features` the patches of ``segment_s`` segments (what an
        embedding family's datasets are built with)."""
        self.features = segment_front_end(self.front_end, segment_s)
        return self

    @torch.no_grad()
    def embed_patches(self, patches: np.ndarray) -> np.ndarray:
        """``(N, 1, n_mels, frames)`` float32 patches (any frames >= 1) to ``(N, dimension)``
        float32 unit-length embeddings, the normalized mean of their 1-s windows. A
        ``ValueError`` for patches of another height."""
        patches = np.asarray(patches, dtype=np.float32)
        if patches.ndim != 4 or patches.shape[1:3] != (1, self.front_end.n_mels):
            raise ValueError(f"the fingerprint encoder takes (N, 1, {self.front_end.n_mels}, frames) log-mel patches, "
                             f"got {patches.shape}")
        self.eval()
        frames = patches.shape[3]
        if frames < self.window:  # a short query: its frames repeated, as the front-end pads
            patches = np.pad(patches, ((0, 0), (0, 0), (0, 0), (0, self.window - frames)), mode="wrap")
            frames = self.window
        starts = np.arange(0, frames - self.window + 1, self.hop)
        out = np.zeros((len(patches), self.architecture.dimension), dtype=np.float32)
        per_batch = max(1, BATCH // len(starts))
        for first in range(0, len(patches), per_batch):
            chunk = torch.tensor(patches[first : first + per_batch])  # a copy: a stored dataset is read-only
            windows = torch.stack([chunk[..., s : s + self.window] for s in starts], dim=1)
            embedded = self(windows.reshape(-1, 1, self.front_end.n_mels, self.window))
            mean = embedded.reshape(len(chunk), len(starts), -1).mean(dim=1)
            out[first : first + len(chunk)] = nn.functional.normalize(mean, dim=1).numpy()
        return out

    def save(self, folder: Path) -> None:
        """Write ``encoder.pt`` and ``encoder.json`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / ENCODER_FILE)
        meta = {"architecture": asdict(self.architecture), "front_end": asdict(self.front_end)}
        (folder / ENCODER_META).write_text(json.dumps(meta, indent=2))


def segment_front_end(front_end: FrontEndConfig, segment_s: float) -> FrontEndConfig:
    """The encoder's front-end making patches of ``segment_s`` seconds (at least one window)."""
    return replace(front_end, patch_width=max(window_frames(front_end, WINDOW_S), window_frames(front_end, segment_s)))


def saved_front_end(folder: Path) -> FrontEndConfig:
    """The front-end of the encoder saved in ``folder``, read without its weights; a
    :class:`~ppazam_core.errors.DamagedArtifactError` when ``encoder.json`` cannot be read."""
    path = Path(folder) / ENCODER_META
    meta = read_json(path, "front_end")
    with reading(path):
        return FrontEndConfig(**meta["front_end"])


def is_encoder_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a saved fingerprint encoder."""
    return (Path(folder) / ENCODER_META).is_file() and (Path(folder) / ENCODER_FILE).is_file()


def load_encoder(folder: str | Path) -> FingerprintEncoder:
    """The encoder saved in ``folder``, in eval mode.

    Raises:
        ArtifactError: the folder holds no encoder.
        DamagedArtifactError: one of its files cannot be read or does not fit.
    """
    folder = Path(folder)
    if not is_encoder_folder(folder):
        raise ArtifactError(f"{folder} holds no fingerprint encoder ({ENCODER_META} and {ENCODER_FILE} are needed; "
                            "`ppazam encoder train --out DIR` writes one)")
    meta = read_json(folder / ENCODER_META, "architecture")
    with reading(folder / ENCODER_META):
        architecture = EncoderArchitecture(**meta["architecture"])
    encoder = FingerprintEncoder(architecture, saved_front_end(folder))
    load_weights(encoder, folder / ENCODER_FILE)
    return encoder.eval()
