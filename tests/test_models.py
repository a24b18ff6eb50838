import numpy as np
import pytest
import torch

from ppazam_core.config import ExperimentConfig, ModelSpec
from ppazam_core.errors import ConfigError
from ppazam_core.models.cnn import (CNNConfig, ConvBlock, FloatCNN, QuantCNN, build_model, qat_from_fp32,
                                 rounding_emulated)


def test_twins_share_shapes_and_activation_count():
    config = CNNConfig(n_classes=7)
    x = torch.randn(5, 1, 32, 32)
    assert FloatCNN(config)(x).shape == (5, 7)
    assert QuantCNN(config)(x).shape == (5, 7)
    assert config.feature_shape() == (16, 3, 3)
    assert config.activation_count() == 8 * 8 * 8 + 16 * 3 * 3  # 656, the PBS count Concrete ML reports
    pooled = CNNConfig(3, blocks=(ConvBlock(8, 3, 1, pool=2), ConvBlock(8, 3, 2)))
    assert build_model(pooled, quantized=True)(x).shape == (5, 3)


def test_qat_twin_starts_from_the_fp32_weights():
    torch.manual_seed(0)
    fp32 = FloatCNN(CNNConfig(n_classes=4)).eval()
    qat = qat_from_fp32(fp32, activation_bits=8, weight_bits=8, input_bits=8).eval()
    assert qat.config.weight_bits == 8
    conv_fp32 = next(m for m in fp32.modules() if isinstance(m, torch.nn.Conv2d))
    conv_qat = next(m for m in qat.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(conv_fp32.weight, conv_qat.weight)
    x = torch.randn(64, 1, 32, 32)
    with torch.no_grad():
        agreement = (fp32(x).argmax(1) == qat(x).argmax(1)).float().mean()
    assert agreement > 0.5  # 8-bit quantization of the same weights mostly agrees before any fine-tuning


@pytest.mark.parametrize("bits", [1, 9])
def test_bit_widths_outside_2_to_8_are_refused(bits):
    with pytest.raises(ConfigError, match="from 2 to 8"):
        CNNConfig(n_classes=4, weight_bits=bits)
    with pytest.raises(ConfigError, match="activation_bits"):
        ModelSpec(activation_bits=bits)


def test_bit_width_in_a_toml_config_is_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nweight_bits = 9\n")
    with pytest.raises(ConfigError, match="weight_bits = 9"):
        ExperimentConfig.from_toml(path)


def test_blocks_that_shrink_the_input_to_nothing_are_refused():
    with pytest.raises(ConfigError, match="shrink"):
        CNNConfig(n_classes=3, blocks=(ConvBlock(8, 8, 8), ConvBlock(8, 8, 8)))


def _calibrated_qat(n_classes: int, x: torch.Tensor) -> QuantCNN:
    """A QAT twin whose batch norms and activation quantizers have seen ``x``."""
    torch.manual_seed(0)
    fp32 = FloatCNN(CNNConfig(n_classes))
    fp32.train()(x)
    qat = qat_from_fp32(fp32.eval()).train()
    with torch.no_grad():
        qat(x)
    return qat.eval()


def test_rounding_emulation_keeps_the_top_bits_of_each_accumulator_and_leaves_no_trace():
    x = torch.randn(32, 1, 32, 32)
    qat = _calibrated_qat(5, x)
    keys = list(qat.state_dict())
    with torch.no_grad():
        before = qat(x)
    conv = qat.features[1]
    seen = []
    with rounding_emulated(qat, 3):
        watch = conv.register_forward_hook(lambda m, i, out: seen.append((i[0].scale * m.quant_weight().scale, out)))
        with torch.no_grad():
            rounded = qat(x)
        watch.remove()
        qat(x).sum().backward()  # the gradient passes straight through the rounding
    unit, output = seen[0]
    integers = ((output - conv.bias.view(1, -1, 1, 1)) / unit).detach()
    distinct = torch.unique(torch.round(integers))
    assert len(distinct) <= 2 ** 3 + 1  # 3 signed bits of a wider accumulator: a handful of levels
    assert not torch.allclose(rounded, before)
    assert float(conv.weight.grad.abs().sum()) > 0
    assert list(qat.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(qat(x), before)


def test_rounding_emulation_follows_concrete_ml_simulation():
    from concrete.ml.torch.compile import compile_brevitas_qat_model

    x = torch.randn(64, 1, 32, 32)
    qat = _calibrated_qat(6, x)
    module = compile_brevitas_qat_model(qat, x.numpy(), rounding_threshold_bits={"n_bits": 5, "method": "exact"},
                                        p_error=1e-9)
    simulated = module.forward(x.numpy(), fhe="simulate")
    with torch.no_grad():
        plain = qat(x).numpy()
        with rounding_emulated(qat, 5):
            emulated = qat(x).numpy()
    assert np.abs(emulated - simulated).mean() < 0.5 * np.abs(plain - simulated).mean()
    assert (emulated.argmax(1) == simulated.argmax(1)).mean() > (plain.argmax(1) == simulated.argmax(1)).mean()


def test_rounding_aware_fine_tuning_is_part_of_the_model_key():
    config = ExperimentConfig()
    assert config.qat_rounding_bits() == config.fhe.rounding_bits == 7
    six = ExperimentConfig.from_dict({"fhe": {"rounding_bits": 6}})
    assert six.trained_parts() != config.trained_parts()
    unaware = ExperimentConfig.from_dict({"model": {"rounding_aware": False}})
    assert unaware.qat_rounding_bits() is None
    assert ExperimentConfig.from_dict({"model": {"rounding_aware": False}, "fhe": {"rounding_bits": 6}}).trained_parts() \
        == unaware.trained_parts()
    with pytest.raises(ConfigError, match="rounding_aware"):
        ModelSpec(rounding_aware="yes")
