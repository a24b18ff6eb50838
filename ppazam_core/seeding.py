"""Seeds derived from names, so that every random draw can be named and re-run.

``derive_seed(seed, "eval", track_id, 3)`` is the same on every machine and run. Training and
evaluation draw from different ``Split`` names, so their streams are disjoint by construction.
"""

from __future__ import annotations

import enum
import hashlib

import numpy as np


class Split(str, enum.Enum):
    """Which part of an experiment a random draw belongs to."""

    TRAIN = "train"
    VALIDATION = "validation"
    EVAL = "eval"

    def __str__(self) -> str:
        return self.value


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any sequence of printable parts."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def rng_for(*parts: object) -> np.random.Generator:
    """A numpy generator seeded by :func:`derive_seed` of ``parts``."""
    return np.random.default_rng(derive_seed(*parts))
