"""A FLAC or WAV file's length field checked against what the file holds.

libsndfile reads a FLAC file up to the sample count of its STREAMINFO block and a WAV file up
to the size of its ``data`` chunk. Streaming encoders leave those fields at 0 ("unknown"), and a
damaged or hand-edited header may understate them, so a file holding 12 s would decode to 4 s,
or to nothing, without a word. :func:`corrected_view` finds the length the file really holds:

* FLAC (after an ID3v2 tag, if any): the last frame's header (found backwards from the end of
  the file, its CRC-8 checked and its number following the frame before it) gives its first
  sample and block size, hence the file's sample count (FLAC format specification,
  "FRAME_HEADER"). A file holding a second ``fLaC`` stream (two files joined byte by byte) is
  read as its header says: its last frames are another stream's;
* WAV: a ``data`` chunk whose size field is 0 (a streaming writer's "unknown") with bytes after
  it, where no well-formed chunk follows, runs to the end of the file (whole sample frames). A
  non-zero size is kept: bytes past it are trailing garbage as often as audio.

When the field disagrees, the file is read through a view that shows the corrected field
(nothing is written to the file); otherwise the file is read as it is.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_FLAC_TAIL_FRAMES = 3  # the last frames' headers are searched for in this many of the largest frames
_FLAC_TAIL_BYTES = 1 << 16, 1 << 20, 1 << 24  # bytes searched: at least, when the largest frame is unknown, at most
_TOTAL_SAMPLES_MASK = (1 << 36) - 1
_STREAMINFO_FIELDS = slice(18, 26)  # rate (20 bits), channels - 1 (3), bits - 1 (5), total samples (36)
_FRAME_SYNC = re.compile(rb"\xff[\xf8\xf9]")
_SAMPLE_SIZE_BITS = {1: 8, 2: 12, 4: 16, 5: 20, 6: 24, 7: 32}
_CHUNK_ID = re.compile(rb"[ -~]{4}")


def corrected_view(path: Path) -> BinaryIO | None:
    """The file at ``path`` opened with its length field set to what it holds, or ``None`` when
    the field is right (or the file is neither FLAC nor RIFF WAV, or its frames cannot be told
    apart: then libsndfile judges it as it is). The caller closes the view."""
    try:
        with path.open("rb") as file:
            start = _after_id3(file)
            head = file.read(4)
            patch = _flac_patch(file, start) if head == b"fLaC" else \
                _wav_patch(file) if head == b"RIFF" and start == 0 else None
    except OSError:  # unreadable: libsndfile says why
        return None
    if patch is None:
        return None
    return io.BufferedReader(_Overlaid(path, *patch))


class _Overlaid(io.RawIOBase):
    """A read-only file whose bytes at ``offset`` read as ``replacement``."""

    def __init__(self, path: Path, offset: int, replacement: bytes) -> None:
        self._file = path.open("rb")
        self._offset, self._replacement = offset, replacement

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:
        start = self._file.tell()
        n = self._file.readinto(buffer)
        begin = max(start, self._offset)
        end = min(start + n, self._offset + len(self._replacement))
        if begin < end:
            memoryview(buffer)[begin - start:end - start] = self._replacement[begin - self._offset:end - self._offset]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _after_id3(file: BinaryIO) -> int:
    """The offset after an ID3v2 tag at the start of ``file`` (0 without one); ``file`` is left there."""
    tag = file.read(10)
    start = 0
    if len(tag) == 10 and tag[:3] == b"ID3" and all(b < 0x80 for b in tag[6:10]):
        size = int.from_bytes(bytes(tag[6:10]), "big")
        size = (size & 0x7F) | (size >> 8 & 0x7F) << 7 | (size >> 16 & 0x7F) << 14 | (size >> 24 & 0x7F) << 21
        start = 10 + size + (10 if tag[5] & 0x10 else 0)  # synchsafe size; a footer when flagged
    file.seek(start)
    return start


def _flac_patch(file: BinaryIO, start: int) -> tuple[int, bytes] | None:
    header = file.read(38)  # metadata block header, then STREAMINFO's 34 bytes
    if len(header) < 38 or header[0] & 0x7F != 0:
        return None
    info = b"fLaC" + header
    block_size = struct.unpack(">H", info[10:12])[0]
    fields = int.from_bytes(info[_STREAMINFO_FIELDS], "big")
    channels, bits = ((fields >> 41) & 0x7) + 1, ((fields >> 36) & 0x1F) + 1
    largest_frame = int.from_bytes(info[15:18], "big")
    least, unknown, most = _FLAC_TAIL_BYTES
    span = min(max(least, _FLAC_TAIL_FRAMES * largest_frame), most) if largest_frame else unknown
    file.seek(max(0, file.seek(0, io.SEEK_END) - span))
    tail = file.read()
    total = _samples_in_frames(tail, block_size, channels, bits)
    if total is None or total == fields & _TOTAL_SAMPLES_MASK or _holds_another_stream(file, start + 4):
        return None
    corrected = (fields & ~_TOTAL_SAMPLES_MASK) | total
    return start + _STREAMINFO_FIELDS.start, corrected.to_bytes(8, "big")


def _holds_another_stream(file: BinaryIO, after: int, block: int = 1 << 20) -> bool:
    """Whether a ``fLaC`` marker follows offset ``after`` (read in blocks; only when a length
    is to be corrected)."""
    file.seek(after)
    carry = b""
    while chunk := file.read(block):
        if b"fLaC" in carry + chunk:
            return True
        carry = chunk[-3:]
    return False


def _samples_in_frames(tail: bytes, block_size: int, channels: int, bits: int) -> int | None:
    """The sample count at the end of the last frame in ``tail`` that the frame before it leads
    to (its first sample is where that one ends), or ``None`` when no two frames chain."""
    later: dict[int, int] = {}  # first sample -> block size of the frames found after this point
    for sync in reversed([m.start() for m in _FRAME_SYNC.finditer(tail)]):
        frame = _frame_header(tail, sync, block_size, channels, bits)
        if frame is None:
            continue
        first, size = frame
        if first + size in later:
            return first + size + later[first + size]
        later.setdefault(first, size)
    return None


def _frame_header(data: bytes, at: int, block_size: int, channels: int, bits: int) -> tuple[int, int] | None:
    """``(first sample, block size)`` of a FLAC frame header at ``data[at]``, or ``None`` when
    those bytes are not one consistent with the stream (reserved values, channels, sample size,
    CRC-8)."""
    header = data[at:at + 16]
    if len(header) < 6:
        return None
    variable = header[1] & 1
    size_code, rate_code = header[2] >> 4, header[2] & 0xF
    channel_code, size_bits_code = header[3] >> 4, (header[3] >> 1) & 0x7
    if size_code == 0 or rate_code == 15 or header[3] & 1 or channel_code > 10:
        return None
    if (channel_code + 1 if channel_code < 8 else 2) != channels:
        return None
    if size_bits_code and _SAMPLE_SIZE_BITS.get(size_bits_code) != bits:
        return None
    number, end = _utf8_number(header, 4)
    if number is None:
        return None
    if size_code == 6:
        frame_size, end = header[end] + 1, end + 1  # the number ends by byte 11 of 16
    elif size_code == 7:
        frame_size, end = int.from_bytes(header[end:end + 2], "big") + 1, end + 2
    else:
        frame_size = 192 if size_code == 1 else 576 << (size_code - 2) if size_code < 6 else 256 << (size_code - 8)
    end += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if end >= len(header) or _crc8(header[:end]) != header[end]:
        return None
    return (number if variable else number * block_size), frame_size


def _utf8_number(data: bytes, at: int) -> tuple[int | None, int]:
    """The frame or sample number coded like UTF-8 (up to 36 bits) at ``data[at]``, and the
    offset after it; ``(None, at)`` when the bytes are not such a number."""
    first = data[at]
    ones = 8 - (first ^ 0xFF).bit_length()  # leading one bits: 0 for one byte, else the bytes in all
    if ones == 1 or ones == 8:
        return None, at
    extra = max(ones - 1, 0)
    if at + 1 + extra > len(data):
        return None, at
    number = first & (0x7F if extra == 0 else 0x3F >> extra)
    for byte in data[at + 1:at + 1 + extra]:
        if byte & 0xC0 != 0x80:
            return None, at
        number = number << 6 | byte & 0x3F
    return number, at + 1 + extra


def _crc8(data: bytes) -> int:
    """CRC-8, polynomial x^8 + x^2 + x + 1, as FLAC frame headers carry it."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1) ^ 0x07 if crc & 0x80 else crc << 1
            crc &= 0xFF
    return crc


def missing_seconds(path: Path) -> float:
    """Seconds of audio a RIFF WAV's ``data`` chunk claims past the end of the file: a truncated
    file, which libsndfile reads to where it ends (0.0 for a whole file, another format, an
    unreadable one, or a size of 0xFFFFFFFF, streaming writers' "unknown")."""
    try:
        with path.open("rb") as file:
            chunk = _data_chunk(file) if file.read(4) == b"RIFF" else None
    except OSError:
        return 0.0
    if chunk is None or chunk.claimed == 0xFFFFFFFF or chunk.byte_rate == 0:
        return 0.0
    return max(0, chunk.offset + 8 + chunk.claimed - chunk.file_size) / chunk.byte_rate


@dataclass(frozen=True)
class _DataChunk:
    offset: int  # of the chunk's header
    claimed: int  # its size field, in bytes
    file_size: int
    block_align: int  # bytes a sample frame (the fmt chunk's)
    byte_rate: int  # bytes a second (the fmt chunk's)


def _data_chunk(file: BinaryIO) -> _DataChunk | None:
    """The ``data`` chunk of the RIFF WAV ``file`` (read past its "RIFF"), or ``None``."""
    riff = file.read(8)
    if len(riff) < 8 or riff[4:8] != b"WAVE":
        return None
    size = file.seek(0, io.SEEK_END)
    offset, block_align, byte_rate = 12, 0, 0
    while offset + 8 <= size:
        file.seek(offset)
        chunk_id, chunk_size = struct.unpack("<4sI", file.read(8))
        if chunk_id == b"fmt ":
            fmt = file.read(min(chunk_size, 16))
            if len(fmt) >= 14:
                byte_rate, block_align = struct.unpack("<IH", fmt[8:14])
        elif chunk_id == b"data":
            return _DataChunk(offset, chunk_size, size, block_align, byte_rate)
        offset += 8 + chunk_size + (chunk_size & 1)
    return None


def _wav_patch(file: BinaryIO) -> tuple[int, bytes] | None:
    chunk = _data_chunk(file)
    return None if chunk is None else _data_patch(file, chunk)


def _data_patch(file: BinaryIO, chunk: _DataChunk) -> tuple[int, bytes] | None:
    """The ``data`` chunk's size field corrected to the end of the file, when it says 0 and no
    well-formed chunk begins after it."""
    offset, claimed, size, block_align = chunk.offset, chunk.claimed, chunk.file_size, chunk.block_align
    start, end = offset + 8, offset + 8 + claimed + (claimed & 1)
    if claimed != 0 or block_align == 0 or end + 8 > size:
        return None
    file.seek(end)
    following = file.read(8)
    if _CHUNK_ID.fullmatch(following[:4]) and end + 8 + struct.unpack("<I", following[4:])[0] <= size:
        return None
    held = (size - start) // block_align * block_align
    return offset + 4, struct.pack("<I", min(held, 0xFFFFFFFF))
