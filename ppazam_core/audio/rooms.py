"""Room impulse responses for the ``phone-in-room`` queries, simulated once into the cache.

Each response is a shoebox room simulated with pyroomacoustics' image-source method (Allen &
Berkley 1979; Scheibler et al., ICASSP 2018): room sizes of living rooms to small halls, a
reverberation time drawn per room and turned into wall absorption by Sabine's formula
(``pyroomacoustics.inverse_sabine``), and a loudspeaker and a phone at random positions at
least half a metre from the walls and from each other. Everything is drawn from one seed, so
the bank is the same on every machine; nothing is downloaded. audiomentations'
``ApplyImpulseResponse`` reads the wav files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyroomacoustics as pra
from scipy.io import wavfile

from ppazam_core.artifacts import check_audio, damaged, read_json, reading
from ppazam_core.errors import ConfigError, DamagedArtifactError
from ppazam_core.store import atomic_folder, config_hash, is_complete

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoomBankSpec:
    """How many rooms, of what sizes (m) and reverberation times (RT60, s), at which rate."""

    rooms: int = 24
    seed: int = 0
    sample_rate: int = 16_000
    width_m: tuple[float, float] = (3.0, 10.0)
    height_m: tuple[float, float] = (2.4, 4.0)
    rt60_s: tuple[float, float] = (0.2, 0.9)
    max_order: int = 12  # image-source reflections; the late tail is cut at 1 s anyway

    def __post_init__(self) -> None:
        if self.rooms < 1:
            raise ConfigError.bad_value("rooms.rooms", self.rooms, "an integer >= 1")
        for key in ("width_m", "height_m", "rt60_s"):
            low, high = getattr(self, key)
            if not 0 < low <= high:
                raise ConfigError.bad_value(f"rooms.{key}", (low, high), "0 < low <= high")


def room_bank(cache_dir: Path, spec: RoomBankSpec = RoomBankSpec()) -> Path:
    """Folder of impulse-response wav files (``room_NN.wav``, peak-normalized, at most 1 s) with
    ``rooms.json`` listing each room's file, length, size, RT60 and positions; simulated once per
    spec, and again (with a warning) when a stored file is damaged."""
    folder = Path(cache_dir) / "rooms" / config_hash(spec)
    if is_complete(folder):
        try:
            _check_bank(folder, spec)
            return folder
        except DamagedArtifactError as e:
            logger.warning("%s is damaged (%s); simulating the room bank again", e.path, e.reason)
    with atomic_folder(folder) as tmp:
        rooms = []
        for index in range(spec.rooms):
            response, facts = simulate_room(spec, np.random.default_rng([spec.seed, index]))
            # scipy's float WAV: libsndfile adds a PEAK chunk stamped with the wall clock, so the
            # same room written a second later would not be the same file
            wavfile.write(tmp / f"room_{index:02d}.wav", spec.sample_rate, np.asarray(response, dtype=np.float32))
            rooms.append({"file": f"room_{index:02d}.wav", "frames": response.size, **facts})
        (tmp / "rooms.json").write_text(json.dumps({"spec": asdict(spec), "rooms": rooms}, indent=2))
    return folder


def _check_bank(folder: Path, spec: RoomBankSpec) -> None:
    """A :class:`DamagedArtifactError` unless ``rooms.json`` lists ``spec.rooms`` responses and
    each can be read whole."""
    listing = folder / "rooms.json"
    with reading(listing):
        rooms = {room["file"]: int(room["frames"]) for room in read_json(listing, "rooms")["rooms"]}
    if len(rooms) != spec.rooms:
        raise damaged(listing, f"lists {len(rooms)} rooms, not {spec.rooms}")
    for name, frames in rooms.items():
        check_audio(folder / name, frames)


def simulate_room(spec: RoomBankSpec, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One room's impulse response ``(n,)`` float32 (peak 1, at most 1 s) and its facts."""
    size = np.array([rng.uniform(*spec.width_m), rng.uniform(*spec.width_m), rng.uniform(*spec.height_m)])
    rt60 = float(rng.uniform(*spec.rt60_s))
    try:
        absorption, _ = pra.inverse_sabine(rt60, size)
    except ValueError:  # a room too small for this RT60 at any absorption: as reverberant as it gets
        absorption = 0.01
    room = pra.ShoeBox(size, fs=spec.sample_rate, materials=pra.Material(absorption), max_order=spec.max_order)
    margin = 0.5
    source = rng.uniform(margin, size - margin)
    phone = rng.uniform(margin, size - margin)
    while np.linalg.norm(phone - source) < margin:
        phone = rng.uniform(margin, size - margin)
    room.add_source(source)
    room.add_microphone(phone)
    room.compute_rir()
    response = np.asarray(room.rir[0][0], dtype=np.float64)[: spec.sample_rate]
    response = (response / np.max(np.abs(response))).astype(np.float32)
    facts = {"size_m": size.round(2).tolist(), "rt60_s": round(rt60, 3), "source_m": source.round(2).tolist(),
             "phone_m": phone.round(2).tolist(), "distance_m": round(float(np.linalg.norm(phone - source)), 2)}
    return response, facts
