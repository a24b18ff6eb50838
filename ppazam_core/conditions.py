"""Query conditions: an augmentation level and the recording gain a query is heard at.

A condition is named ``LEVEL`` (the level's clips, each at a seeded random gain from the
configured range, as a phone's recording level is arbitrary) or ``LEVEL@GAINdB`` (every clip at
that fixed gain, e.g. ``clean@-20dB``: the points of a gain sweep). Gains are applied after the
level's transforms and the result is hard-clipped to full scale, as a recording device would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ppazam_core.errors import ConfigError

GAIN_LIMITS_DB = (-60.0, 40.0)
_NAME = re.compile(r"^(?P<level>[^@]+)@(?P<gain>[+-]?\d+(?:\.\d+)?)dB$")


@dataclass(frozen=True)
class QueryCondition:
    """An augmentation level (a policy name) and a fixed gain in dB (``None``: random)."""

    level: str
    gain_db: float | None = None

    @property
    def name(self) -> str:
        return self.level if self.gain_db is None else f"{self.level}@{self.gain_db:+g}dB"

    @classmethod
    def parse(cls, name: str) -> "QueryCondition":
        """``"small"`` or ``"clean@-20dB"``; a :class:`ConfigError` for anything else."""
        match = _NAME.match(name)
        if match is None:
            if "@" in name:
                raise ConfigError.bad_value("query condition", name, "LEVEL or LEVEL@GAINdB, e.g. clean@-20dB")
            return cls(name)
        gain = float(match["gain"])
        check_gain_range("query condition gain", (gain, gain))
        return cls(match["level"], gain)


def gain_sweep(level: str, gains_db: tuple[float, ...]) -> tuple[str, ...]:
    """The condition names of ``level`` at each fixed gain."""
    return tuple(QueryCondition(level, float(g)).name for g in gains_db)


def check_gain_range(key: str, gain_db: tuple[float, float]) -> tuple[float, float]:
    """``gain_db`` as a ``(low, high)`` pair of floats within :data:`GAIN_LIMITS_DB`."""
    low, high = GAIN_LIMITS_DB
    if len(gain_db) != 2 or not low <= float(gain_db[0]) <= float(gain_db[1]) <= high:
        raise ConfigError.bad_value(key, tuple(gain_db), f"[low, high] dB with {low:g} <= low <= high <= {high:g}")
    return float(gain_db[0]), float(gain_db[1])


def apply_gain(clip: np.ndarray, gain_db: float) -> np.ndarray:
    """``clip`` (float32, full scale 1.0) amplified by ``gain_db`` and hard-clipped to [-1, 1]."""
    return np.clip(clip * np.float32(10.0 ** (gain_db / 20.0)), -1.0, 1.0).astype(np.float32)
