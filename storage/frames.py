"""Frame access inside a stored Part 10 file, by byte ranges (PS3.5 8.2, A.4; PS3.18 10.4.1.1.5).

:func:`index_frames` reads the header with pydicom (stopping before the
pixel data) and then walks only the Pixel Data element's item headers, so
the index costs a few small reads.  The :class:`FrameIndex` is plain data
(JSON via :meth:`FrameIndex.to_dict`) for the archive to keep beside the
instance; :func:`read_frame` then reads exactly the bytes of one frame from
any seekable binary file object (e.g. the archive's decrypting reader).

Why not only ``pydicom.encaps.generate_frames``: it reads every fragment's
bytes to find frame boundaries; here only item headers (and, when frame
boundaries must be guessed, the last bytes of a fragment) are read, and the
result is reusable across requests.  Frame assignment follows the same rules.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

__all__ = [
    "FrameIndex",
    "FrameNotFound",
    "FramesUnavailable",
    "index_frames",
    "iter_frames",
    "read_frame",
]

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_ITEM = 0xFFFEE000
_SEQ_DELIM = 0xFFFEE0DD
#: Deflated Explicit VR LE and Deflated Image Frame Compression (PS3.5 A.5, A.4.11; no pydicom name yet).
_DEFLATED = {DeflatedExplicitVRLittleEndian, "1.2.840.10008.1.2.8.1"}
_BIG_ENDIAN = ExplicitVRBigEndian
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}
# Encapsulated codestreams that end in an EOI/EOC marker 0xFFD9 (JPEG, JPEG-LS, JPEG 2000).
_EOI_FAMILY = ("1.2.840.10008.1.2.4.",)


class FramesUnavailable(Exception):
    """Frames cannot be located in this object (no pixel data, deflated, big endian, damaged)."""


class FrameNotFound(IndexError):
    """A frame number outside 1..NumberOfFrames (PS3.18 frame numbers are 1-based)."""


@dataclass
class FrameIndex:
    """Where each frame's bytes are in the stored file.

    Native: ``offset`` of the Pixel Data value, ``length`` of the value,
    ``frame_bits`` per frame (bits, since BitsAllocated 1 frames need not
    start on a byte).  Encapsulated: ``fragments[i]`` is the list of
    ``(offset, length)`` of frame i+1's fragment values.
    """

    transfer_syntax: str
    number_of_frames: int
    encapsulated: bool
    offset: int = 0
    length: int = 0
    frame_bits: int = 0
    fragments: list[list[tuple[int, int]]] = field(default_factory=list)

    @property
    def frame_length(self) -> int:
        """Bytes in one native frame (rounded up for packed bit data)."""
        return (self.frame_bits + 7) // 8

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "transfer_syntax": self.transfer_syntax,
            "number_of_frames": self.number_of_frames,
            "encapsulated": self.encapsulated,
            "offset": self.offset,
            "length": self.length,
            "frame_bits": self.frame_bits,
            "fragments": [[list(f) for f in frame] for frame in self.fragments],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameIndex:
        """Inverse of :meth:`to_dict`."""
        return cls(
            transfer_syntax=data["transfer_syntax"],
            number_of_frames=int(data["number_of_frames"]),
            encapsulated=bool(data["encapsulated"]),
            offset=int(data.get("offset", 0)),
            length=int(data.get("length", 0)),
            frame_bits=int(data.get("frame_bits", 0)),
            fragments=[[(int(o), int(n)) for o, n in fr] for fr in data.get("fragments", [])],
        )


class RangeReader(Protocol):
    """What reading frames by range needs of a stream: a file, or a decrypting blob reader."""

    def seek(self, offset: int, whence: int = ..., /) -> int: ...
    def read(self, size: int = ..., /) -> bytes: ...


def _read_exact(fp: RangeReader, n: int) -> bytes:
    data = fp.read(n)
    if len(data) != n:
        raise FramesUnavailable("file ends inside the pixel data")
    return data


def _native_frame_bits(ds: Any, tag: int) -> int:
    """Bits per native frame (PS3.5 8.1.1, 8.2; YBR_FULL_422 is subsampled, PS3.3 C.7.6.3.1.2).

    ``ds``: a pydicom Dataset, or a mapping of keyword to value (the archive's indexed values)."""
    try:
        rows, cols = int(ds.get("Rows")), int(ds.get("Columns"))
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated")) if tag == 0x7FE00010 else (32 if tag == 0x7FE00008 else 64)
    except (KeyError, TypeError, ValueError) as exc:
        raise FramesUnavailable(f"image pixel module incomplete: {exc}") from None
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422" and samples == 3:
        return rows * cols * 2 * bits
    return rows * cols * samples * bits


def _pixel_element(head: bytes, start: int) -> tuple[int, int, int]:
    """(tag, value offset, value length) of the pixel data element whose header is ``head`` at ``start``."""
    if len(head) < 8:
        raise FramesUnavailable("object has no pixel data")
    tag = (struct.unpack("<H", head[:2])[0] << 16) | struct.unpack("<H", head[2:4])[0]
    if tag not in _PIXEL_TAGS:
        raise FramesUnavailable("object has no pixel data")
    # Files sometimes disagree with their transfer syntax; look at the bytes.
    if head[4:6] in _LONG_VRS and len(head) == 12:
        return tag, start + 12, struct.unpack("<I", head[8:12])[0]
    return tag, start + 8, struct.unpack("<I", head[4:8])[0]


def _number_of_frames(ds: Any) -> int:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise FramesUnavailable(f"bad NumberOfFrames {ds.get('NumberOfFrames')!r}") from None
    if frames < 1:
        raise FramesUnavailable(f"NumberOfFrames is {frames}")
    return frames


def _native_index(ts: str, ds: Any, tag: int, frames: int, value_start: int, length: int,
                  end: int) -> FrameIndex:
    frame_bits = _native_frame_bits(ds, tag)
    if value_start + length > end:
        raise FramesUnavailable(f"file truncated: pixel data ends at {value_start + length}, file at {end}")
    if frame_bits * frames > length * 8:
        raise FramesUnavailable(
            f"pixel data holds {length} bytes, {frames} frame(s) need {frame_bits * frames // 8}")
    return FrameIndex(ts, frames, False, value_start, length, frame_bits)


def native_frame_index(ts: str, values: dict[str, Any], head: bytes, start: int,
                       size: int) -> FrameIndex | None:
    """The index of a native (uncompressed) object from what ingest read anyway: its indexed values and
    the pixel data element header ``head`` found at ``start`` of a ``size``-byte file. None when the
    pixel data is encapsulated or anything does not add up (then :func:`index_frames` on first use)."""
    if ts in _DEFLATED or ts == _BIG_ENDIAN:
        return None
    try:
        tag, value_start, length = _pixel_element(head, start)
        if length == 0xFFFFFFFF:
            return None
        return _native_index(ts, values, tag, _number_of_frames(values), value_start, length, size)
    except FramesUnavailable:
        return None


def index_frames(fp: BinaryIO) -> FrameIndex:
    """Locate every frame of the Part 10 object in ``fp`` (PS3.5 A.4, PS3.3 C.7.6.3).

    Encapsulated frames come from the Extended Offset Table, else the Basic
    Offset Table, else one fragment per frame when the counts agree, else
    all fragments for a single frame, else EOI/EOC marker scanning for JPEG
    family syntaxes.  Raises :class:`FramesUnavailable` when none applies.
    """
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise FramesUnavailable(f"not a readable DICOM file: {exc}") from None
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts in _DEFLATED:
        raise FramesUnavailable("deflated transfer syntax: frames have no byte offsets")
    if ts == _BIG_ENDIAN:
        raise FramesUnavailable("Explicit VR Big Endian (retired): transcode before frame access")
    start = fp.tell()
    tag, value_start, length = _pixel_element(fp.read(12), start)
    frames = _number_of_frames(ds)
    if length != 0xFFFFFFFF:
        return _native_index(ts, ds, tag, frames, value_start, length, fp.seek(0, 2))
    fp.seek(value_start)
    return _index_encapsulated(fp, ds, ts, frames)


def _index_encapsulated(fp: BinaryIO, ds: pydicom.Dataset, ts: str, frames: int) -> FrameIndex:
    tag, bot_len = _item_header(fp)
    if tag != _ITEM:
        raise FramesUnavailable("encapsulated pixel data does not start with the offset table")
    bot = _read_exact(fp, bot_len) if bot_len else b""
    first = fp.tell()
    fragments: list[tuple[int, int, int]] = []  # (item position rel. to first, value offset, len)
    while True:
        pos = fp.tell()
        tag, length = _item_header(fp)
        if tag == _SEQ_DELIM:
            break
        if tag != _ITEM or length == 0xFFFFFFFF:
            raise FramesUnavailable(f"bad item tag {tag:08X} in encapsulated pixel data")
        fragments.append((pos - first, pos + 8, length))
        fp.seek(pos + 8 + length)
    if not fragments:
        raise FramesUnavailable("encapsulated pixel data has no fragments")

    positions = [rel for rel, _, _ in fragments]

    def by_starts(starts: list[int]) -> list[list[tuple[int, int]]]:
        out: list[list[tuple[int, int]]] = []
        bounds = [*starts, 1 << 62]
        for i in range(len(starts)):
            lo = bisect_left(positions, bounds[i])
            hi = bisect_left(positions, bounds[i + 1])
            if lo >= hi or positions[lo] != bounds[i]:
                raise FramesUnavailable(
                    f"offset table does not point at a fragment for frame {i + 1}"
                )
            out.append([(o, n) for _, o, n in fragments[lo:hi]])
        return out

    eot = ds.get("ExtendedOffsetTable")
    if eot:
        starts = list(struct.unpack(f"<{len(eot) // 8}Q", eot[: len(eot) // 8 * 8]))
        per_frame = by_starts(starts)
    elif bot:
        starts = list(struct.unpack(f"<{len(bot) // 4}I", bot[: len(bot) // 4 * 4]))
        per_frame = by_starts(starts)
    elif frames == 1:
        per_frame = [[(o, n) for _, o, n in fragments]]
    elif frames == len(fragments):
        per_frame = [[(o, n)] for _, o, n in fragments]
    elif ts.startswith(_EOI_FAMILY):
        per_frame = _split_by_eoi(fp, fragments)
    else:
        raise FramesUnavailable(
            f"{len(fragments)} fragments for {frames} frames and no offset table"
        )
    if len(per_frame) != frames:
        raise FramesUnavailable(f"found {len(per_frame)} frames, NumberOfFrames is {frames}")
    return FrameIndex(ts, frames, True, fragments=per_frame)


def _item_header(fp: BinaryIO) -> tuple[int, int]:
    group, elem, length = struct.unpack("<2HI", _read_exact(fp, 8))
    return (group << 16) | elem, length


def _split_by_eoi(
    fp: BinaryIO, fragments: list[tuple[int, int, int]]
) -> list[list[tuple[int, int]]]:
    """Group fragments into frames at each fragment ending in 0xFFD9 (PS3.5 A.4, Note)."""
    out: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    for _, offset, length in fragments:
        current.append((offset, length))
        if length >= 2:
            fp.seek(offset + max(0, length - 3))
            tail = _read_exact(fp, min(3, length))
            if tail.rstrip(b"\x00").endswith(b"\xff\xd9"):
                out.append(current)
                current = []
    if current:
        raise FramesUnavailable("last frame has no end-of-image marker")
    return out


def read_frame(fp: RangeReader, index: FrameIndex, number: int) -> bytes:
    """The bytes of frame ``number`` (1-based, PS3.18 10.4.1.1.5), read by range.

    Native frames are the little-endian pixel bytes of that frame (packed
    1-bit frames realigned to start at bit 0); encapsulated frames are their
    fragments' values concatenated (the codestream, without item headers).
    """
    if not 1 <= number <= index.number_of_frames:
        raise FrameNotFound(f"frame {number} not in 1..{index.number_of_frames}")
    if index.encapsulated:
        parts = []
        for offset, length in index.fragments[number - 1]:
            fp.seek(offset)
            parts.append(_read_exact(fp, length))
        return parts[0] if len(parts) == 1 else b"".join(parts)
    bit_start = (number - 1) * index.frame_bits
    if bit_start % 8 == 0:
        fp.seek(index.offset + bit_start // 8)
        return _read_exact(fp, index.frame_length)
    return _read_unaligned_bits(fp, index, bit_start)


def _read_unaligned_bits(fp: RangeReader, index: FrameIndex, bit_start: int) -> bytes:
    """1-bit frames that start mid-byte (PS3.5 8.1.1: bits packed LSB first across frames)."""
    import numpy as np

    first, shift = divmod(bit_start, 8)
    nbytes = (shift + index.frame_bits + 7) // 8
    fp.seek(index.offset + first)
    raw = np.frombuffer(_read_exact(fp, nbytes), dtype=np.uint8)
    bits = np.unpackbits(raw, bitorder="little")[shift : shift + index.frame_bits]
    return np.packbits(bits, bitorder="little").tobytes()


def iter_frames(
    fp: BinaryIO, index: FrameIndex, numbers: list[int] | None = None
) -> Iterator[bytes]:
    """Yield frames in order (all, or the given 1-based numbers), one read each."""
    for n in numbers if numbers is not None else range(1, index.number_of_frames + 1):
        yield read_frame(fp, index, n)
