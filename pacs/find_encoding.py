"""A C-FIND response identifier encoded straight to bytes (PS3.5 7.1, Little Endian, either VR form).

Hand-written, for speed only: building a pydicom Dataset per match and writing it with pydicom's
``write_dataset`` cost ~0.6 ms per pending response, most of a C-FIND with many matches. A response
identifier is flat and small: text elements, a few binary integers, empty sequences. This encodes
exactly those, the way pydicom does (a test compares the bytes, :mod:`tests.test_dimse_sending`), and
answers None for anything else (another VR, bytes, a multi-valued binary value), so the caller
falls back to pydicom for that identifier.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

#: VRs written as text, padded with a space to an even length (UI with a NUL).
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                      "UC", "UI", "UR", "UT"})
_BINARY = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i"}
#: Explicit VR: these have 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
#: Text VRs that use the Specific Character Set (others are the default repertoire).
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})

#: One element: (VR, value); value None or "" is an empty element, [] (VR SQ) an empty sequence.
Elements = Mapping[int, tuple[str, Any]]


def encode_identifier(elements: Elements, *, implicit: bool, utf8: bool) -> bytes | None:
    """The elements, in tag order, as Little Endian bytes; None when one is not supported here.

    ``utf8``: the identifier says ``SpecificCharacterSet = ISO_IR 192``; otherwise text must be
    ASCII (the default repertoire).
    """
    out = bytearray()
    for tag in sorted(elements):
        vr, value = elements[tag]
        body = _value(vr, value, utf8)
        if body is None:
            return None
        out += struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        if implicit:
            out += struct.pack("<I", len(body))
        elif vr in _LONG:
            out += vr.encode() + b"\0\0" + struct.pack("<I", len(body))
        else:
            if len(body) > 0xFFFF:
                return None
            out += vr.encode() + struct.pack("<H", len(body))
        out += body
    return bytes(out)


def _value(vr: str, value: Any, utf8: bool) -> bytes | None:
    if value is None or (isinstance(value, str) and value == ""):
        return b""
    if vr == "SQ":
        return b"" if value == [] else None
    if vr in TEXT_VRS:
        if isinstance(value, int) and not isinstance(value, bool) and vr in ("IS", "DS"):
            value = str(value)
        if not isinstance(value, str):
            return None
        if vr in _CHARSET_VRS and utf8:
            raw = value.encode("utf-8")
        elif value.isascii():
            raw = value.encode("ascii")
        else:
            return None
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
        return raw
    fmt = _BINARY.get(vr)
    if fmt is not None and isinstance(value, int) and not isinstance(value, bool):
        try:
            return struct.pack(fmt, value)
        except struct.error:
            return None
    return None
