"""Query conditions: an augmentation level, the recording gain and the length of a query.

A condition is named ``LEVEL`` (the level's clips of the configured query length, each at a
seeded random gain from the configured range, as a phone's recording level is arbitrary),
optionally followed by a fixed gain ``@GAINdB`` (every clip at that gain, e.g. ``clean@-20dB``,
the points of a gain sweep) and a query length ``@SECONDSs`` (e.g. ``phone-in-room@10s``, the
points of a length sweep). Gains are applied after the level's transforms and the result is
hard-clipped to full scale, as a recording device would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ppazam_core.audio.decode import segments_at
from ppazam_core.errors import ConfigError

MAX_QUERY_S = 600.0  # a query reads at most the first ten minutes of a clip (about 400 segments of 3 s)

GAIN_LIMITS_DB = (-60.0, 40.0)
_NUMBER = r"[+-]?\d+(?:\.\d+)?"
_GAIN = re.compile(rf"^(?P<value>{_NUMBER})dB$")
_LENGTH = re.compile(r"^(?P<value>\d+(?:\.\d+)?)s$")
_FORMAT = "LEVEL, LEVEL@GAINdB, LEVEL@SECONDSs or LEVEL@GAINdB@SECONDSs, e.g. clean@-20dB"


@dataclass(frozen=True)
class QueryCondition:
    """An augmentation level (a policy name), a fixed gain in dB (``None``: random) and a
    query length in seconds (``None``: the configured one)."""

    level: str
    gain_db: float | None = None
    length_s: float | None = None

    @property
    def name(self) -> str:
        gain = "" if self.gain_db is None else f"@{self.gain_db:+g}dB"
        length = "" if self.length_s is None else f"@{self.length_s:g}s"
        return f"{self.level}{gain}{length}"

    @classmethod
    def parse(cls, name: str) -> "QueryCondition":
        """``"small"``, ``"clean@-20dB"``, ``"phone-in-room@1s"``; a :class:`ConfigError` for
        anything else."""
        level, *parts = str(name).split("@")
        gain = length = None
        for part in parts:
            if (match := _GAIN.match(part)) and gain is None and length is None:
                gain = float(match["value"])
                check_gain_range("query condition gain", (gain, gain))
            elif (match := _LENGTH.match(part)) and length is None and float(match["value"]) > 0:
                length = float(match["value"])
                if length > MAX_QUERY_S:
                    raise ConfigError.bad_value("query condition length", name,
                                                f"seconds above 0, at most {MAX_QUERY_S:g} (what a query reads of a clip)")
            else:
                raise ConfigError.bad_value("query condition", name, _FORMAT)
        if not level:
            raise ConfigError.bad_value("query condition", name, _FORMAT)
        return cls(level, gain, length)


def gain_sweep(level: str, gains_db: tuple[float, ...]) -> tuple[str, ...]:
    """The condition names of ``level`` at each fixed gain."""
    return tuple(QueryCondition(level, gain_db=float(g)).name for g in gains_db)


def length_sweep(level: str, lengths_s: tuple[float, ...]) -> tuple[str, ...]:
    """The condition names of ``level`` at each query length."""
    return tuple(QueryCondition(level, length_s=float(s)).name for s in lengths_s)


def segment_starts(query_s: float, segment_s: float) -> np.ndarray:
    """Start times (s) of the segments a ``query_s`` query is cut into: one segment (padded
    by the front-end) when it is no longer than ``segment_s``, else segments of ``segment_s``
    every half segment, the last one ending at most at the query's end."""
    if query_s <= segment_s:
        return np.zeros(1)
    hop = segment_s / 2
    return np.arange(int((query_s - segment_s) // hop + 1e-9) + 1) * hop


def query_segments(clip: np.ndarray, sample_rate: int, segment_s: float) -> np.ndarray:
    """A mono query cut at :func:`segment_starts`: ``(segments, samples)`` float32; a query no
    longer than a segment is one row of its own length (the front-end repeats its frames)."""
    starts = segment_starts(clip.shape[0] / sample_rate, segment_s)
    if clip.shape[0] <= int(round(segment_s * sample_rate)):
        return np.asarray(clip, dtype=np.float32)[None]
    return segments_at(clip, sample_rate, starts, segment_s)


def check_gain_range(key: str, gain_db: tuple[float, float]) -> tuple[float, float]:
    """``gain_db`` as a ``(low, high)`` pair of floats within :data:`GAIN_LIMITS_DB`."""
    low, high = GAIN_LIMITS_DB
    if len(gain_db) != 2 or not low <= float(gain_db[0]) <= float(gain_db[1]) <= high:
        raise ConfigError.bad_value(key, tuple(gain_db), f"[low, high] dB with {low:g} <= low <= high <= {high:g}")
    return float(gain_db[0]), float(gain_db[1])


def apply_gain(clip: np.ndarray, gain_db: float) -> np.ndarray:
    """``clip`` (float32, full scale 1.0) amplified by ``gain_db`` and hard-clipped to [-1, 1]."""
    return np.clip(clip * np.float32(10.0 ** (gain_db / 20.0)), -1.0, 1.0).astype(np.float32)
