"""The FHE-friendly CNN family, in two twins: fp32 (torch) and quantization-aware (brevitas).

Both are ``conv -> batch-norm -> ReLU [-> AvgPool]`` blocks followed by one linear layer; no
MaxPool, no non-linearity but ReLU, so Concrete ML can compile the QAT twin. Under FHE each
ReLU output element costs one programmable bootstrap, so the cost of a block is roughly
``channels x (H / stride) x (W / stride)``: :meth:`CNNConfig.activation_count` gives it before
anything is compiled. The QAT twin is initialised from trained fp32 weights
(:func:`qat_from_fp32`) and fine-tuned, optionally under :func:`rounding_emulated`, which
rounds its convolution accumulators as the compiled circuit will.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator

import brevitas.nn as qnn
import torch
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat
from torch import nn

from ppazam_core.errors import ConfigError, require_in_range

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class ConvBlock:
    """One ``conv(kernel, stride) -> BN -> ReLU`` block, optionally average-pooled by ``pool``."""

    channels: int
    kernel: int = 3
    stride: int = 1
    pool: int = 1

    def __post_init__(self) -> None:
        require_in_range("channels", self.channels, 1, MAX_CHANNELS, integer=True)
        for key in ("kernel", "stride", "pool"):
            require_in_range(key, getattr(self, key), 1, MAX_KERNEL, integer=True)


MAX_CHANNELS = 4096  # of one convolution block
MAX_KERNEL = 256  # a block's kernel, stride or pooling, in patch cells


# 8 x 8 x 8 + 3 x 3 x 16 = 656 ReLUs (PBS) on a 32 x 32 patch: 19-28 s per encrypted classifier
# call here at 7 rounding bits; twice the width (1,312 PBS) gains ~5 points of fp32 top-1;
# 32 channels in the second block (800 PBS) gained 2 points of fp32 and 2-5 of fhe-sim top-1, at
# 24-34 s a call (one circuit 14 bits wide): up to ~60 s a two-call query, the budget's edge.
# Accuracy grows with the first block's resolution: three 3 x 3 stride-2 blocks of 16, 32 and 64
# channels (5,744 PBS, suites/accurate.toml) reach fp32 top-1 0.96 / 0.91 / 0.89 against
# 0.85 / 0.78 / 0.77; cheaper ones with a stride-2 first block measured 0.93 / 0.83 / 0.84 (4, 8,
# 16 channels: 1,436 PBS) and 0.89 / 0.78 / 0.79 (2, 8, 16: 986)
DEFAULT_BLOCKS = (ConvBlock(8, 4, 4), ConvBlock(16, 3, 2))


@dataclass(frozen=True)
class CNNConfig:
    """Architecture and bit widths of one classifier."""

    n_classes: int
    input_shape: tuple[int, int, int] = (1, 32, 32)
    blocks: tuple[ConvBlock, ...] = field(default_factory=lambda: DEFAULT_BLOCKS)
    weight_bits: int = 4
    activation_bits: int = 4
    input_bits: int = 8

    def __post_init__(self) -> None:
        check_bits(weight_bits=self.weight_bits, activation_bits=self.activation_bits, input_bits=self.input_bits)
        if self.n_classes < 2:
            raise ConfigError.bad_value("model.n_classes", self.n_classes, "an integer >= 2")
        if not self.blocks:
            raise ConfigError("model.blocks must hold at least one convolution block")
        self.feature_shape()  # raises when the blocks shrink the input to nothing

    def feature_shape(self) -> tuple[int, int, int]:
        """Shape after the last block (what the linear layer sees)."""
        *_, (block, _, _, height, width) = self._geometry()
        return block.channels, height, width

    def activation_count(self) -> int:
        """ReLU outputs per query: a close lower bound on the PBS count of the QAT twin."""
        return sum(block.channels * h * w for block, h, w, _, _ in self._geometry())

    def _geometry(self) -> list[tuple[ConvBlock, int, int, int, int]]:
        """Per block: the block, its conv output height and width, then after pooling."""
        _, height, width = self.input_shape
        rows = []
        for block in self.blocks:
            padding = _padding(block)
            height = (height + 2 * padding - block.kernel) // block.stride + 1
            width = (width + 2 * padding - block.kernel) // block.stride + 1
            rows.append((block, height, width, height // block.pool, width // block.pool))
            height, width = rows[-1][3], rows[-1][4]
            if height < 1 or width < 1:
                raise ConfigError(f"model.blocks {self.blocks} shrink the input {self.input_shape} to nothing")
        return rows


def check_bits(**bits: int) -> None:
    """Refuse any bit width outside 2..8, naming the key."""
    for key, value in bits.items():
        if not (isinstance(value, int) and MIN_BITS <= value <= MAX_BITS):
            raise ConfigError.bad_value(f"model.{key}", value, f"an integer from {MIN_BITS} to {MAX_BITS}")


def _padding(block: ConvBlock) -> int:
    """'Same' padding for stride-1 blocks; strided blocks tile the input without padding."""
    return block.kernel // 2 if block.stride == 1 else 0


class FloatCNN(nn.Module):
    """The fp32 twin."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        in_channels = config.input_shape[0]
        for block in config.blocks:
            layers += [nn.Conv2d(in_channels, block.channels, block.kernel, block.stride, _padding(block)),
                       nn.BatchNorm2d(block.channels), nn.ReLU()]
            if block.pool > 1:
                layers.append(nn.AvgPool2d(block.pool))
            in_channels = block.channels
        self.features = nn.Sequential(*layers)
        c, h, w = config.feature_shape()
        self.classifier = nn.Linear(c * h * w, config.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class QuantCNN(nn.Module):
    """The quantization-aware twin: same layers, brevitas-quantized weights and activations.

    The input is quantized by a leading ``QuantIdentity`` (Concrete ML needs it) at
    ``input_bits``: the client quantizes before encrypting, so input precision costs no PBS and
    an 8-bit input keeps far more of the spectrogram than the 4-bit activations would. Every
    AvgPool sits between two quant identities since brevitas 0.10 has no quantized AvgPool.
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        a_bits, w_bits = config.activation_bits, config.weight_bits
        layers: list[nn.Module] = [qnn.QuantIdentity(bit_width=config.input_bits, act_quant=Int8ActPerTensorFloat,
                                                     return_quant_tensor=True)]
        in_channels = config.input_shape[0]
        for block in config.blocks:
            layers += [
                qnn.QuantConv2d(in_channels, block.channels, block.kernel, block.stride, _padding(block),
                                weight_bit_width=w_bits, weight_quant=Int8WeightPerTensorFloat, bias=True),
                nn.BatchNorm2d(block.channels),
                qnn.QuantReLU(bit_width=a_bits, return_quant_tensor=True),
            ]
            if block.pool > 1:
                layers += [nn.AvgPool2d(block.pool),
                           qnn.QuantIdentity(bit_width=a_bits, act_quant=Int8ActPerTensorFloat,
                                             return_quant_tensor=True)]
            in_channels = block.channels
        self.features = nn.Sequential(*layers)
        c, h, w = config.feature_shape()
        self.classifier = qnn.QuantLinear(c * h * w, config.n_classes, bias=True, weight_bit_width=w_bits,
                                          weight_quant=Int8WeightPerTensorFloat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_model(config: CNNConfig, quantized: bool) -> nn.Module:
    """A fresh fp32 or QAT classifier."""
    return QuantCNN(config) if quantized else FloatCNN(config)


def qat_from_fp32(fp32: FloatCNN, **bits: int) -> QuantCNN:
    """A QAT twin carrying the trained fp32 weights (convolutions, batch-norms and the head);
    ``bits`` overrides ``weight_bits``, ``activation_bits`` or ``input_bits`` of the fp32 config."""
    qat = QuantCNN(replace(fp32.config, **bits))
    float_layers = [m for m in fp32.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    quant_layers = [m for m in qat.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    for source, target in zip(float_layers, quant_layers, strict=True):
        target.load_state_dict(source.state_dict())
    return qat


@contextmanager
def rounding_emulated(model: nn.Module, bits: int | None) -> Iterator[nn.Module]:
    """Inside the block, every quantized convolution of ``model`` keeps only the ``bits`` most
    significant bits of its integer accumulator, as Concrete ML's ``rounding_threshold_bits``
    does in the compiled circuit (the width comes from the batch's range, as Concrete ML's comes
    from the calibration set's). Gradients pass straight through, so QAT fine-tuning and its
    validation see the rounding the encrypted model will suffer. ``None`` changes nothing.
    Forward hooks only: the state dict stays that of the plain QAT twin."""
    def hook(conv: qnn.QuantConv2d, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return _round_accumulator(conv, inputs[0], output, bits)

    convs = [m for m in model.modules() if isinstance(m, qnn.QuantConv2d)] if bits is not None else []
    handles = [conv.register_forward_hook(hook) for conv in convs]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _round_accumulator(conv: qnn.QuantConv2d, x, output: torch.Tensor, bits: int) -> torch.Tensor:
    """``output`` with the integer part of ``conv`` (bias excluded: Concrete ML adds a float
    bias after rounding) rounded to ``bits`` most significant bits."""
    if getattr(x, "scale", None) is None:
        raise TypeError("rounding emulation needs quantized convolution inputs (a QuantTensor with a scale)")
    unit = (x.scale * conv.quant_weight().scale).detach()
    bias = 0.0 if conv.bias is None else conv.bias.view(1, -1, *([1] * (output.dim() - 2)))
    accumulator = output - bias
    integers = (accumulator / unit).detach()
    peak = float(integers.abs().max())
    if peak < 1:
        return output
    width = math.floor(math.log2(peak)) + 1 + int(float(integers.min()) < 0)
    if width <= bits:
        return output
    step = unit * 2 ** (width - bits)
    return output + (torch.round(accumulator / step) * step - accumulator).detach()
