"""``ppazam encoder train``: contrastive training of the fingerprint encoder on its own corpus.

Each step draws ``batch`` songs, cuts a reference window and a degraded query window of each
(:mod:`ppazam_core.models.encoder.views`) and minimizes NT-Xent over the ``2 * batch`` windows (Chen et
al. 2020; the Neural Audio Fingerprint's in-batch negatives): a window's positive is its pair,
every other window of the batch a negative. AdamW, a linear warm-up then a cosine decay.

The run keeps its state in ``OUT.training/`` (weights, optimizer, step, loss curve) every
``checkpoint_every`` steps, so an interrupted run resumes where it stopped (the draws of step
``k`` depend only on the seed and ``k``); the finished encoder is written to ``OUT`` atomically
with ``manifest.json`` (:func:`encoder_manifest`) and ``losses.json``.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ppazam_core.artifacts import reading
from ppazam_core.models.encoder.corpus import Corpus, CorpusReader, CorpusSpec, build_corpus, corpus_seed
from ppazam_core.models.encoder.model import FINGERPRINT_FRONT_END, EncoderArchitecture, FingerprintEncoder
from ppazam_core.models.encoder.shipped import MANIFEST_FILE, weights_sha256
from ppazam_core.models.encoder.views import ViewConfig, ViewMaker
from ppazam_core.errors import ConfigError, require_in_range
from ppazam_core.audio.noise import synthetic_noise_bank
from ppazam_core.parallel import progress_bar
from ppazam_core.provenance import build_record, cpu_model
from ppazam_core.audio.rooms import RoomBankSpec, room_bank
from ppazam_core.seeding import derive_seed
from ppazam_core.store import atomic_folder, settings_hash
from ppazam_core.models.training import MAX_BATCH, MAX_LEARNING_RATE, MAX_TEMPERATURE
from ppazam_core.threads import fixed_threads

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
LOSSES_FILE = "losses.json"
MAX_STEPS = 10_000_000
MAX_ROOMS = 100_000
LOG_EVERY = 50  # steps between loss lines (and points of the loss curve)


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Everything that determines a trained encoder: corpus, architecture, optimization, seed."""

    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    architecture: EncoderArchitecture = field(default_factory=EncoderArchitecture)
    views: ViewConfig = field(default_factory=ViewConfig)
    steps: int = 3000
    batch: int = 256
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    temperature: float = 0.05
    rooms: int = 64
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        for key, low, high in (("steps", 1, MAX_STEPS), ("batch", 2, MAX_BATCH), ("warmup_steps", 0, MAX_STEPS),
                               ("rooms", 1, MAX_ROOMS), ("checkpoint_every", 1, MAX_STEPS)):
            require_in_range(f"encoder.{key}", getattr(self, key), low, high, integer=True)
        require_in_range("encoder.learning_rate", self.learning_rate, 0, MAX_LEARNING_RATE, low_open=True)
        require_in_range("encoder.temperature", self.temperature, 0, MAX_TEMPERATURE, low_open=True)

    def learning_rate_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then a cosine decay to zero at ``steps``."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over ``2B`` unit vectors where rows ``i`` and ``i + B`` are positives."""
    n = z.shape[0] // 2
    similarity = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return torch.nn.functional.cross_entropy(similarity, targets)


def work_folder(out: Path) -> Path:
    """Where an unfinished run of ``out`` keeps its state."""
    out = Path(out)
    return out.with_name(out.name + ".training")


@fixed_threads()
def train_encoder(config: EncoderTrainConfig, out: Path, cache_dir: Path, workers: int = 1,
                  debian_dir: Path | None = None) -> Path:
    """Build the corpus, train the encoder (resuming an interrupted run of the same config into
    ``out``) and write it to ``out``; returns ``out``.

    Raises:
        ConfigError: ``out`` holds an unfinished run of another config, or a finished one.
        DebianError: the corpus's Debian packages cannot be fetched.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; give a new folder for the encoder")
    record = build_record()  # the code as it is when training starts, whatever is committed meanwhile
    work = work_folder(out)
    key = settings_hash(config)
    state = _load_state(work, key)
    started = time.perf_counter()
    corpus = build_corpus(config.corpus, cache_dir, workers, debian_dir)
    corpus_s = time.perf_counter() - started
    logger.info("encoder corpus: %d songs, %.1f hours (%s)", len(corpus.songs), corpus.hours, corpus.folder)
    rooms = room_bank(cache_dir, RoomBankSpec(rooms=config.rooms, seed=derive_seed(config.seed, "encoder-rooms")))
    noise = synthetic_noise_bank(cache_dir, seed=derive_seed(config.seed, "encoder-noise"), variants=8)
    views = ViewMaker(CorpusReader(corpus), FINGERPRINT_FRONT_END, rooms, noise, config.views)

    torch.manual_seed(derive_seed(config.seed, "encoder-init") % 2**63)
    encoder = FingerprintEncoder(config.architecture, FINGERPRINT_FRONT_END)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    step, losses, train_s = 0, [], 0.0
    if state is not None:
        encoder.load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        step, losses, train_s = state["step"], state["losses"], state["train_s"]
        logger.info("resuming the encoder's training at step %d of %d (%s)", step, config.steps, work)
    window: list[float] = []
    with progress_bar() as progress:
        bar = progress.add_task("training the fingerprint encoder", total=config.steps, completed=step)
        while step < config.steps:
            try:
                step, train_s = _train_step(config, views, encoder, optimizer, step, window, train_s)
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM where the command maps it so
                _save_state(work, key, encoder, optimizer, step, losses, train_s)
                raise
            if step % LOG_EVERY == 0 or step == config.steps:
                losses.append({"step": step, "loss": round(float(np.mean(window)), 5), "seconds": round(train_s, 1)})
                window = []
                logger.info("encoder step %d/%d: loss %.4f (%.0f s)", step, config.steps, losses[-1]["loss"], train_s)
                progress.update(bar, description=f"training the fingerprint encoder (loss {losses[-1]['loss']:.3f})")
            if step % config.checkpoint_every == 0 and step < config.steps:
                _save_state(work, key, encoder, optimizer, step, losses, train_s)
            progress.update(bar, completed=step)
    encoder.eval()
    with atomic_folder(out) as tmp:
        encoder.save(tmp)
        (tmp / LOSSES_FILE).write_text(json.dumps(losses, indent=1))
        manifest = encoder_manifest(config, corpus, weights_sha256(tmp), train_s, corpus_s, record)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return out


def _train_step(config: EncoderTrainConfig, views: ViewMaker, encoder: FingerprintEncoder,
                optimizer: torch.optim.Optimizer, step: int, window: list[float], train_s: float) -> tuple[int, float]:
    """One optimizer step on the draws of ``step``; returns the next step and the seconds so far."""
    tick = time.perf_counter()
    pairs = views.pairs(np.random.default_rng([config.seed, step]), config.batch)
    encoder.train()
    for group in optimizer.param_groups:
        group["lr"] = config.learning_rate_at(step)
    loss = nt_xent(encoder(pairs), config.temperature)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    window.append(float(loss))
    return step + 1, train_s + time.perf_counter() - tick


def encoder_manifest(config: EncoderTrainConfig, corpus: Corpus, sha256: str, train_s: float,
                     corpus_s: float, record: dict) -> dict:
    """How an encoder was made: corpus (generator seed and songs, Debian packages and versions,
    tracks and hours), front-end, architecture, steps, code commit and hash (``record``, from
    :func:`~ppazam_core.provenance.build_record` when training started), seeds, machine, seconds,
    and the SHA-256 of the weights."""
    return {"kind": "ppazam fingerprint encoder", "weights_sha256": sha256,
            "corpus": corpus.summary(), "front_end": asdict(FINGERPRINT_FRONT_END),
            "architecture": asdict(config.architecture), "training": asdict(config),
            "seeds": {"training": config.seed, "corpus": config.corpus.seed,
                      "generator": corpus_seed(config.corpus.seed)},
            "git_commit": record["git_commit"], "code_hash": record["code_hash"], "packages": record["packages"],
            "machine": {"cpu": cpu_model(), "platform": platform.platform(), "threads": torch.get_num_threads()},
            "training_s": round(train_s, 1), "corpus_s": round(corpus_s, 1), "started_at": record["built_at"],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _save_state(work: Path, key: str, encoder: FingerprintEncoder, optimizer: torch.optim.Optimizer, step: int,
                losses: list, train_s: float) -> None:
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / (CHECKPOINT + ".tmp")
    torch.save({"key": key, "encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "losses": losses, "train_s": train_s}, tmp)
    tmp.replace(work / CHECKPOINT)


def _load_state(work: Path, key: str) -> dict | None:
    path = work / CHECKPOINT
    if not path.is_file():
        return None
    with reading(path):
        state = torch.load(path, weights_only=True)
    if state.get("key") != key:
        raise ConfigError(f"{work} holds an unfinished run of another encoder config; delete it to start this one")
    return state
