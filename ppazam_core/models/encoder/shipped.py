"""The encoder ppazam ships, and the choice ``[embedding] encoder`` makes.

``shipped`` (the default) is the encoder in this package's ``shipped/`` folder, trained once
by ``ppazam encoder train`` and described by its ``manifest.json`` (corpus, front-end,
architecture, steps, commit, seeds, machine, seconds, SHA-256 of the weights); ``train`` is the
per-library contrastive recipe of :mod:`ppazam_core.models.embeddings`, kept for comparison; any
other value is the folder of an encoder ``ppazam encoder train --out`` wrote.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ppazam_core.artifacts import read_json
from ppazam_core.models.encoder.model import ENCODER_FILE, is_encoder_folder
from ppazam_core.errors import ArtifactError, DamagedArtifactError

SHIPPED = "shipped"
TRAIN = "train"
SHIPPED_FOLDER = Path(__file__).resolve().parent / "shipped"
MANIFEST_FILE = "manifest.json"


def encoder_folder(choice: str) -> Path:
    """The folder of the fingerprint encoder ``choice`` names (``shipped`` or a folder),
    checked against its manifest.

    Raises:
        ArtifactError: the folder holds no encoder.
        DamagedArtifactError: its weights do not match the SHA-256 of its manifest.
    """
    folder = SHIPPED_FOLDER if choice == SHIPPED else Path(choice).expanduser()
    if not is_encoder_folder(folder):
        what = "the shipped encoder is missing from the installed package" if choice == SHIPPED else \
            f"embedding.encoder = {choice!r}: {folder} holds no fingerprint encoder"
        raise ArtifactError(f"{what} (encoder.json and encoder.pt are needed; `ppazam encoder train --out DIR` "
                            "writes one)")
    verify_encoder(folder)
    return folder


def verify_encoder(folder: Path) -> dict:
    """The manifest of the encoder in ``folder``, after checking that its weights are the ones
    it describes (an encoder without a manifest is taken as it is: an empty dict).

    Raises:
        DamagedArtifactError: the manifest cannot be read or the weights' SHA-256 differs.
    """
    manifest_path = Path(folder) / MANIFEST_FILE
    if not manifest_path.is_file():
        return {}
    manifest = read_json(manifest_path, "weights_sha256")
    found = weights_sha256(folder)
    if found != manifest["weights_sha256"]:
        shipped = Path(folder).resolve() == SHIPPED_FOLDER
        raise DamagedArtifactError(Path(folder) / ENCODER_FILE, f"SHA-256 {found[:16]}... is not the manifest's "
                                   f"{str(manifest['weights_sha256'])[:16]}...", folder,
                                   "reinstall ppazam (the shipped encoder is package data)" if shipped else
                                   "train it again with `ppazam encoder train`")
    return manifest


def encoder_identity(choice: str) -> str:
    """The SHA-256 of the weights of the encoder ``choice`` names: what an artifact built with
    it depends on (the code's fingerprint covers no weights file)."""
    return weights_sha256(encoder_folder(choice))


def weights_sha256(folder: Path) -> str:
    """SHA-256 (hex) of the weights file of the encoder in ``folder``."""
    return hashlib.sha256((Path(folder) / ENCODER_FILE).read_bytes()).hexdigest()
