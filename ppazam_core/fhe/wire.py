"""The wire format shared by every encrypted backend (Concrete's circuits in
:mod:`ppazam_core.fhe.deployment`, the packed CKKS head in :mod:`ppazam_core.fhe.packed`): framed
messages (magic, kind, circuit id, length, SHA-256) and the files a client keeps private."""

from __future__ import annotations

import hashlib
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ppazam_core.artifacts import damaged, reading
from ppazam_core.errors import FheError

MAGIC = b"PPZM"
HEADER = struct.Struct(">4s1s32sQ32s")
KEYS, QUERY, RESULT = b"K", b"Q", b"R"
KIND_NAMES = {KEYS: "evaluation keys", QUERY: "query ciphertext", RESULT: "result ciphertext"}
KEYS_DIGEST_FILE = "keys.sha256"
PACKED_MEMBER = "packed.json"  # in client.zip / server.zip: a packed CKKS head (ppazam_core.fhe.packed)


def frame(kind: bytes, circuit_id: str, payload: bytes) -> bytes:
    """Wrap ``payload`` for the wire."""
    return HEADER.pack(MAGIC, kind, circuit_id.encode(), len(payload), hashlib.sha256(payload).digest()) + payload


def unframe(message: bytes, kind: bytes, circuit_id: str) -> bytes:
    """The payload of ``message``, after checking it is whole, matches its digest and is meant
    for this circuit; otherwise an :class:`FheError` saying which check failed."""
    expected = KIND_NAMES[kind]
    if not isinstance(message, (bytes, bytearray)):
        raise FheError(f"{expected}: expected bytes, got {type(message).__name__}")
    if len(message) < HEADER.size:
        raise FheError(f"{expected}: message of {len(message)} bytes is too short to hold a header "
                       f"({HEADER.size} bytes); truncated?")
    magic, got_kind, got_id, length, digest = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise FheError(f"{expected}: not a ppazam message (bad magic {magic!r})")
    if got_kind != kind:
        raise FheError(f"{expected}: received {KIND_NAMES.get(got_kind, repr(got_kind))} instead")
    if got_id.decode(errors="replace") != circuit_id:
        raise FheError(f"{expected}: made for circuit {got_id.decode(errors='replace')}, not for this circuit "
                       f"{circuit_id} (keys or ciphertext of another model?)")
    payload = bytes(message[HEADER.size :])
    if len(payload) != length:
        raise FheError(f"{expected}: payload is {len(payload)} bytes, header says {length}; truncated?")
    if hashlib.sha256(payload).digest() != digest:
        raise FheError(f"{expected}: payload does not match its SHA-256 digest; the message was corrupted")
    return payload


@contextmanager
def private_file(path: Path) -> Iterator[None]:
    """Create ``path`` empty with mode 0600 before the block writes it (no moment where a
    secret sits in a file others may read), and keep that mode after."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    yield
    os.chmod(path, 0o600)


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of the file ``path``."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_key_digest(folder: Path, key_file: str) -> None:
    """Record ``folder/key_file``'s SHA-256 in ``folder/KEYS_DIGEST_FILE`` (mode 0600)."""
    with private_file(folder / KEYS_DIGEST_FILE):
        (folder / KEYS_DIGEST_FILE).write_text(file_sha256(folder / key_file))


def checked_key_file(folder: Path, key_file: str) -> Path:
    """``folder/key_file`` once its SHA-256 matches :data:`KEYS_DIGEST_FILE`'s (a client's stored
    keys, written with :func:`write_key_digest`).

    Raises:
        DamagedArtifactError: either file cannot be read, or the digests differ.
    """
    path = folder / key_file
    with reading(folder / KEYS_DIGEST_FILE) as digest_file:
        expected = digest_file.read_text().strip()
    with reading(path):
        if file_sha256(path) != expected:
            raise damaged(path, f"its SHA-256 differs from the one in {KEYS_DIGEST_FILE}")
    return path
