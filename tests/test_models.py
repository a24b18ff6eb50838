import pytest
import torch

from ppazam_core.config import ExperimentConfig, ModelSpec
from ppazam_core.errors import ConfigError
from ppazam_core.models import CNNConfig, ConvBlock, FloatCNN, QuantCNN, build_model, qat_from_fp32


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
