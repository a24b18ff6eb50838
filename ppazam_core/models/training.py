"""One training loop for every classifier: seeded, deterministic on CPU, early-stopped.

A stratified validation split is held out of the training rows; the weights of the epoch with
the lowest validation loss are restored at the end, and the per-epoch history is returned so
it can be saved beside the model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ppazam_core.errors import ConfigError, require_in_range
from ppazam_core.parallel import progress_bar

# the largest values a configuration may ask for (a typo such as 1e9 is refused, not run for days)
MAX_EPOCHS = 100_000
MAX_BATCH = 1_000_000
MAX_LEARNING_RATE = 10.0
MAX_TEMPERATURE = 1000.0  # of a contrastive loss


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by fp32 training and QAT fine-tuning."""

    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    validation_fraction: float = 0.1
    patience: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        require_in_range("patience", self.patience, 1, MAX_EPOCHS, integer=True)
        if not 0.0 <= self.validation_fraction < 0.5:
            raise ConfigError.bad_value("validation_fraction", self.validation_fraction, "0 <= x < 0.5")
        require_in_range("epochs", self.epochs, 1, MAX_EPOCHS, integer=True)
        require_in_range("batch_size", self.batch_size, 1, MAX_BATCH, integer=True)
        require_in_range("learning_rate", self.learning_rate, 0, MAX_LEARNING_RATE, low_open=True)
        require_in_range("weight_decay", self.weight_decay, 0, 1)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float


@dataclass(frozen=True)
class TrainingHistory:
    """What happened during training; ``best_epoch`` is the epoch whose weights were kept."""

    epochs: tuple[EpochRecord, ...]
    best_epoch: int
    stopped_early: bool


def train_classifier(
    model: nn.Module, X: np.ndarray, y: np.ndarray, config: TrainConfig, description: str = "training"
) -> TrainingHistory:
    """Train ``model`` in place on normalized patches ``X`` with integer labels ``y``."""
    if len(X) != len(y) or len(y) == 0:
        raise ValueError(f"X and y must be non-empty and of equal length, got {len(X)} and {len(y)}")
    torch.manual_seed(config.seed)
    train_idx, val_idx = stratified_split(y, config.validation_fraction, config.seed)
    X_t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    y_t = torch.from_numpy(np.asarray(y, dtype=np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    loss_fn = nn.CrossEntropyLoss()
    shuffler = torch.Generator().manual_seed(config.seed)
    records: list[EpochRecord] = []
    best_loss, best_state, best_epoch, stale = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
    with progress_bar() as progress:
        task = progress.add_task(description, total=config.epochs)
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            model.train()
            order = train_idx[torch.randperm(len(train_idx), generator=shuffler).numpy()]
            total_loss, correct = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                batch = torch.from_numpy(order[start : start + config.batch_size])
                logits = model(X_t[batch])
                loss = loss_fn(logits, y_t[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total_loss += float(loss) * len(batch)
                correct += int((logits.argmax(1) == y_t[batch]).sum())
            schedule.step()
            val_loss, val_accuracy = _evaluate(model, X_t, y_t, val_idx if len(val_idx) else train_idx, loss_fn)
            records.append(EpochRecord(epoch, total_loss / len(order), correct / len(order), val_loss,
                                       val_accuracy, time.perf_counter() - started))
            progress.update(task, advance=1, description=f"{description} (val acc {val_accuracy:.3f})")
            if val_loss < best_loss - 1e-4:
                best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    return TrainingHistory(tuple(records), best_epoch, stopped_early=len(records) < config.epochs)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices for training and validation, ``fraction`` of every class held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        n_val = int(round(fraction * len(rows))) if len(rows) > 1 else 0
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@torch.no_grad()
def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` on normalized patches, in eval mode."""
    model.eval()
    X_t = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    return torch.cat([model(X_t[i : i + batch_size]) for i in range(0, len(X_t), batch_size)]).numpy()


@torch.no_grad()
def _evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, rows: np.ndarray,
              loss_fn: nn.Module) -> tuple[float, float]:
    model.eval()
    index = torch.from_numpy(rows)
    logits = torch.cat([model(X[index[i : i + 1024]]) for i in range(0, len(index), 1024)])
    return float(loss_fn(logits, y[index])), float((logits.argmax(1) == y[index]).float().mean())

