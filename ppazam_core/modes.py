"""The modes a model is evaluated in: a leaf module (no imports from the package), so that the
family registry, the recognizers and the harness share it without importing each other."""

from __future__ import annotations

import enum


class Mode(str, enum.Enum):
    """How the models are evaluated: in the clear (``fp32``), quantized in the clear (``quant``:
    the QAT twin, or a linear head's quantized model), the compiled circuit executed in the clear
    by Concrete ML (``fhe-disable``: its integers and rounding, no encryption), FHE simulation,
    or truly encrypted. Clear-text reference families run in ``fp32`` only."""

    FP32 = "fp32"
    QUANT = "quant"
    FHE_DISABLE = "fhe-disable"
    FHE_SIM = "fhe-sim"
    FHE = "fhe"

    @property
    def needs_circuits(self) -> bool:
        return self in (Mode.FHE_DISABLE, Mode.FHE_SIM, Mode.FHE)

    def __str__(self) -> str:
        return self.value
