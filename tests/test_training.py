import numpy as np
import pytest
import torch

from ppazam_core.errors import ConfigError
from ppazam_core.models.cnn import CNNConfig, ConvBlock, FloatCNN
from ppazam_core.models.training import TrainConfig, predict_logits, stratified_split, train_classifier

SMALL = CNNConfig(n_classes=3, input_shape=(1, 8, 8), blocks=(ConvBlock(4, 3, 2),))


def _separable(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 40)
    X = rng.standard_normal((120, 1, 8, 8)).astype(np.float32)
    X[:, 0, :, :] += (y[:, None, None] - 1) * 2.0
    return X, y


def test_training_learns_and_restores_the_best_epoch():
    X, y = _separable()
    torch.manual_seed(0)
    model = FloatCNN(SMALL)
    history = train_classifier(model, X, y, TrainConfig(epochs=20, batch_size=16, learning_rate=1e-2, seed=1))
    assert 1 <= history.best_epoch <= len(history.epochs)
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    assert (predict_logits(model, X).argmax(1) == y).mean() > 0.9


def test_training_is_deterministic():
    X, y = _separable()
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)  # the caller seeds initialisation; the config seeds everything after
        model = FloatCNN(SMALL)
        train_classifier(model, X, y, TrainConfig(epochs=3, batch_size=16, seed=5))
        outputs.append(predict_logits(model, X))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_early_stopping_stops():
    X, y = _separable()
    rng = np.random.default_rng(0)
    history = train_classifier(FloatCNN(SMALL), X, rng.permutation(y), TrainConfig(epochs=40, batch_size=16,
                                                                                     patience=2))
    assert history.stopped_early and len(history.epochs) < 40


def test_stratified_split_holds_out_every_class():
    y = np.repeat(np.arange(4), 10)
    train, val = stratified_split(y, 0.2, seed=0)
    assert len(val) == 8 and set(y[val]) == {0, 1, 2, 3} and not set(train) & set(val)


def test_bad_training_settings():
    with pytest.raises(ConfigError, match="validation_fraction"):
        TrainConfig(validation_fraction=0.7)
    with pytest.raises(ValueError, match="equal length"):
        train_classifier(FloatCNN(SMALL), np.zeros((3, 1, 8, 8), np.float32), np.zeros(2, int), TrainConfig())
