"""The original file of a stored video artifact as a byte range of its object, streamed.

:func:`storage.artifacts.extract_original` works on a whole dataset in memory: right for notes,
photos and dictations, not for an hour of video. A Video Photographic object made here holds its
original either as the one Pixel Data fragment (an MP4 kept as is) or as the trailing private
element (7FE1,1005) (a MOV or transcoded file, ``storage.artifacts.common``); this module finds
where, reading the header and the item headers only, and gives a reader of just that range.
Hand-written because pydicom offers no offsets of encapsulated fragments without reading them.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from pydicom.uid import VideoPhotographicImageStorage

from .archive import Archive, InstanceInfo
from .artifacts.common import (
    EL_FILENAME,
    EL_MEDIA_TYPE,
    EL_SIZE,
    PRIVATE_CREATOR,
    TRAILING_GROUP,
    private_value,
    safe_filename,
)

VIDEO_PHOTOGRAPHIC = VideoPhotographicImageStorage
CHUNK = 1 << 20


@dataclass(frozen=True)
class OriginalSpan:
    """Where the original lies in the stored Part 10 bytes."""

    offset: int
    length: int
    media_type: str
    filename: str


def _item(r: BinaryIO) -> tuple[int, int, int]:
    group, element, length = struct.unpack("<HHI", r.read(8))
    return group, element, length


def find_span(archive: Archive, info: InstanceInfo) -> OriginalSpan | None:
    """The original's byte range in a Video Photographic object made here, or None."""
    if info.sop_class_uid != VIDEO_PHOTOGRAPHIC:
        return None
    with archive.open(info) as raw:
        r = io.BufferedReader(raw, 1 << 16)
        ds = pydicom.dcmread(r, stop_before_pixels=True)
        media, size = private_value(ds, EL_MEDIA_TYPE), private_value(ds, EL_SIZE)
        if not media or not isinstance(size, int):
            return None
        name = safe_filename(str(private_value(ds, EL_FILENAME) or ""), "video.mp4")
        # Pixel Data: tag, VR, reserved, undefined length; then items until the delimiter.
        head = r.read(12)
        if len(head) != 12 or head[:4] != b"\xe0\x7f\x10\x00" or head[8:] != b"\xff" * 4:
            return None
        fragment: tuple[int, int] | None = None
        index = 0
        while True:
            at = r.tell()
            group, element, length = _item(r)
            if (group, element) == (0xFFFE, 0xE0DD):
                break
            if (group, element) != (0xFFFE, 0xE000):
                return None
            if index == 1:
                fragment = (at + 8, length)
            index += 1
            r.seek(length, io.SEEK_CUR)
        if index != 2 or fragment is None:
            return None  # not the one-fragment layout made here
        trailer = r.read(8)
        if len(trailer) == 8:  # (7FE1,0010) creator, then (7FE1,1005) OB
            group, element, vr, length = struct.unpack("<HH2sH", trailer)
            creator = r.read(length).decode("ascii", "replace").strip(" \0")
            if (group, element) != (TRAILING_GROUP, 0x0010) or creator != PRIVATE_CREATOR:
                return None
            group, element, vr, _zero, length = struct.unpack("<HH2sHI", r.read(12))
            if (group, element, vr) != (TRAILING_GROUP, 0x1005, b"OB"):
                return None
            return OriginalSpan(r.tell(), min(size, length), str(media), name)
        return OriginalSpan(fragment[0], min(size, fragment[1]), str(media), name)


def read_span(archive: Archive, info: InstanceInfo, span: OriginalSpan) -> Iterator[bytes]:
    """The original's bytes, in chunks of at most 1 MiB (one decrypted segment at a time)."""
    with archive.open(info) as r:
        r.seek(span.offset)
        left = span.length
        while left > 0:
            chunk = r.read(min(CHUNK, left))
            if not chunk:
                raise OSError("the stored object is shorter than its original's range")
            left -= len(chunk)
            yield chunk


class SpanReader(io.RawIOBase):
    """A readable file of the original (for the export writer, which copies from a file)."""

    def __init__(self, archive: Archive, info: InstanceInfo, span: OriginalSpan) -> None:
        super().__init__()
        self._raw = archive.open(info)
        self._raw.seek(span.offset)
        self._left = span.length

    def readable(self) -> bool:
        return True

    # Narrower than RawIOBase.readinto's buffer: what BufferedReader and callers pass.
    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        data = self._raw.read(min(len(b), self._left))
        self._left -= len(data)
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()
