"""The three UIDs a STOW-RS part is judged by, read from its bytes without pydicom.

STOW-RS (PS3.18 10.5) refuses a part whose Study Instance UID differs from the study in the URL and
names refused parts by SOP Class and Instance UID. Reading them with ``pydicom.dcmread`` cost ~0.5 ms
a part, a second parse of every header (the archive parses it again to index it). This walks the
data elements (PS3.5 7.1) of a Part 10 file (PS3.10 7.1) up to (0020,000D) and returns None when the
object is anything but plain: no preamble, deflated or big endian, truncated, odd lengths. Callers
then fall back to pydicom, so the answer never depends on this being clever.
"""

from __future__ import annotations

import struct

__all__ = ["scan_uids"]

_SOP_CLASS = 0x00080016
_SOP_INSTANCE = 0x00080018
_STUDY = 0x0020000D
_IMPLICIT_LE = "1.2.840.10008.1.2"
_UNSUPPORTED_TS = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")  # deflated, big endian
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                       b"UT", b"UV"))
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 8
_u16 = struct.Struct("<H").unpack_from
_u32 = struct.Struct("<I").unpack_from


class _Unplain(Exception):
    """Not a plain object: let pydicom read it."""


def scan_uids(data: bytes | memoryview) -> tuple[str, str, str] | None:
    """(SOPClassUID, SOPInstanceUID, StudyInstanceUID) of a Part 10 object, or None if one is
    missing or the object is not plain enough to read this way."""
    try:
        return _scan(memoryview(data))
    except (_Unplain, struct.error, IndexError, ValueError):
        return None


def _scan(buf: memoryview) -> tuple[str, str, str]:
    if bytes(buf[128:132]) != b"DICM":
        raise _Unplain
    pos, ts = 132, ""
    while pos + 8 <= len(buf) and _u16(buf, pos)[0] == 0x0002:  # File Meta: explicit VR LE
        tag, vr, length, pos = _element(buf, pos, explicit=True)
        if length == _UNDEFINED or pos + length > len(buf):
            raise _Unplain
        if tag == 0x00020010:
            ts = _text(buf[pos:pos + length])
        pos += length
    if not ts or ts in _UNSUPPORTED_TS:
        raise _Unplain
    explicit = ts != _IMPLICIT_LE
    found: dict[int, str] = {}
    while pos < len(buf):
        tag, vr, length, pos = _element(buf, pos, explicit)
        if tag > _STUDY:
            break
        if length == _UNDEFINED:
            if vr == b"UN":  # an implicit VR sequence inside explicit VR: leave it to pydicom
                raise _Unplain
            pos = _skip_undefined(buf, pos, explicit, 0)
            continue
        if pos + length > len(buf):
            raise _Unplain
        if tag in (_SOP_CLASS, _SOP_INSTANCE, _STUDY):
            found[tag] = _text(buf[pos:pos + length])
        pos += length
    if len(found) < 3:  # missing, or out of order: pydicom reads the whole header to be sure
        raise _Unplain
    return found[_SOP_CLASS], found[_SOP_INSTANCE], found[_STUDY]


def _element(buf: memoryview, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value offset) of the element header at ``pos``."""
    group, elem = _u16(buf, pos)[0], _u16(buf, pos + 2)[0]
    tag = group << 16 | elem
    if group == 0xFFFE or not explicit:  # item tags have no VR in either encoding
        return tag, b"", _u32(buf, pos + 4)[0], pos + 8
    vr = bytes(buf[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        return tag, vr, _u32(buf, pos + 8)[0], pos + 12
    if not vr.isalpha():
        raise _Unplain
    return tag, vr, _u16(buf, pos + 6)[0], pos + 8


def _skip_undefined(buf: memoryview, pos: int, explicit: bool, depth: int) -> int:
    """Offset after an undefined-length sequence whose first item starts at ``pos``."""
    if depth > _MAX_DEPTH:
        raise _Unplain
    while True:
        tag, _, length, pos = _element(buf, pos, explicit)
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unplain  # e.g. encapsulated pixel data fragments: not expected before 0020,000D
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements up to the item delimiter
            tag, _, length, pos = _element(buf, pos, explicit)
            if tag == _ITEM_END:
                break
            if length == _UNDEFINED:
                pos = _skip_undefined(buf, pos, explicit, depth + 1)
            else:
                pos += length
            if pos > len(buf):
                raise _Unplain


def _text(value: memoryview) -> str:
    """A UI value as pydicom gives it: ASCII, trailing NUL padding and spaces removed."""
    return bytes(value).decode("ascii").rstrip("\0 ").strip()
