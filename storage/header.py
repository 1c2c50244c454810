"""Reading a received object's header: the values the index needs, decoded once per store.

The common case is read with pydicom's element reader (``data_element_generator``) alone: the File
Meta group for the transfer syntax, then only the indexed elements of the data set (the others are
skipped, not read), decoded straight from their raw bytes. No Dataset is built: ``dcmread`` plus
pydicom's value conversion cost ~0.75 ms per small object, a third of a C-STORE's budget; this
costs ~0.1 ms. It covers ASCII text and little-endian binary numbers in a little-endian file with a
preamble; anything else (a Specific Character Set with non-ASCII text, big endian, deflate, UN,
ambiguous VRs, anything unexpected) goes through ``dcmread`` and pydicom's conversion.
Values come out as the index keeps them: text with multiple values joined by ``\\`` and each value
stripped of padding; binary numbers as int/float (one value) or joined text (several).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from .attributes import ATTRIBUTES
from .errors import BadInput

REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: tag -> keyword of every attribute the index keeps
INDEXED: dict[int, str] = {int(tag_for_keyword(kw)): kw  # type: ignore[arg-type]  # all known keywords
                           for kw in dict.fromkeys([*REQUIRED, *ATTRIBUTES])}

_BINARY = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_TEXT = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC", "UI"}
_UNSTRIPPED_TEXT = {"LT", "ST", "UT", "UR"}  # one value; leading spaces are significant


@functools.cache
def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


@dataclass(frozen=True)
class Header:
    """What ingest needs of an object's header."""

    transfer_syntax: str
    values: dict[str, Any]  # every indexed attribute present, by keyword
    pixel_at: int = -1  # where the pixel data element starts (-1: not known)
    pixel_head: bytes = b""  # its first 12 bytes (tag, VR, length)


def read_header(fp: BinaryIO) -> Header:
    """The transfer syntax and every indexed value, decoded once; BadInput if unfit.

    Decoding everything here means a corrupt element fails now, not mid-transaction."""
    found = _scan(fp) or _read(fp)
    values = found.values
    for kw in REQUIRED:
        value = values.get(kw)
        if not value or len(str(value)) > 64:
            exc = BadInput(f"{kw} is missing" if not value else f"{kw} is longer than 64 characters")
            exc.sop_class_uid = str(values.get("SOPClassUID", ""))[:64]
            exc.sop_instance_uid = str(values.get("SOPInstanceUID", ""))[:64]
            raise exc
    return found


_META_TS = 0x00020010
_CHARSET = 0x00080005
_PIXEL_DATA = 0x7FE00010
_IMPLICIT_LE = ImplicitVRLittleEndian
_EXPLICIT_BE = ExplicitVRBigEndian
_DEFLATED = (DeflatedExplicitVRLittleEndian, "1.2.840.10008.1.2.8.1")  # + Deflated Image Frame (no pydicom name)


def _scan(fp: BinaryIO) -> Header | None:
    """The fast reading described in the module docstring, or None for pydicom to read it."""
    try:
        fp.seek(0)
        if fp.read(132)[128:132] != b"DICM":
            return None
        meta = {int(e.tag): e for e in data_element_generator(
            fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)}
        raw_ts = meta.get(_META_TS)
        if raw_ts is None or not raw_ts.value:
            return None
        ts = raw_ts.value.decode("ascii").strip(" \0")
        if ts == _EXPLICIT_BE or ts in _DEFLATED:
            return None
        values: dict[str, Any] = {}
        for raw in data_element_generator(
                fp, ts == _IMPLICIT_LE, True, stop_when=lambda tag, vr, length: tag >= _PIXEL_DATA,
                specific_tags=list(INDEXED)):
            tag = int(raw.tag)
            if tag == _CHARSET or tag not in INDEXED:
                continue
            if not isinstance(raw, pydicom.dataelem.RawDataElement):
                return None
            value = _decode_raw(raw, True)
            if value is _MISS:
                return None
            if value not in (None, ""):
                values[INDEXED[tag]] = value
        pixel_at = fp.tell()  # the reader stopped at (and rewound to) the pixel data, if any
        return Header(ts, values, pixel_at, fp.read(12))
    except Exception:  # anything odd: pydicom reads it, and judges it
        return None


def _read(fp: BinaryIO) -> Header:
    """pydicom's full reading: ``dcmread`` up to the pixel data, then :func:`indexed_values`."""
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds (BytesLengthException is a
        # RuntimeError, found by fuzzing): whatever it is, the object is unreadable, not our fault
        raise BadInput(f"not a readable DICOM Part 10 object ({type(exc).__name__})") from None
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        raise BadInput("no File Meta Information with a Transfer Syntax UID")
    try:
        return Header(str(ds.file_meta.TransferSyntaxUID), indexed_values(ds))
    except Exception:  # a corrupt element: report it as bad input
        raise BadInput("a header element cannot be decoded") from None


def indexed_values(ds: Dataset) -> dict[str, Any]:
    """The index's attributes present in ``ds``, as ``{keyword: value}`` (empty values left out)."""
    out: dict[str, Any] = {}
    little = ds.original_encoding[1] is not False
    for tag in ds.keys() & INDEXED.keys():
        raw = ds.get_item(tag)
        value = _decode_raw(raw, little) if isinstance(raw, pydicom.dataelem.RawDataElement) else _MISS
        if value is _MISS:
            value = plain(ds[tag])
        if value not in (None, ""):
            out[INDEXED[tag]] = value
    return out


_MISS = object()


def _decode_raw(raw: Any, little_endian: bool) -> Any:
    """A raw element's value the fast way, or ``_MISS`` when pydicom must decode it."""
    data = raw.value
    if data is None or len(data) == 0:
        return None
    vr = raw.VR or _dictionary_vr(int(raw.tag))
    if vr in _TEXT or vr in _UNSTRIPPED_TEXT:
        if not data.isascii() or b"\x1b" in data:
            return _MISS  # a character set or ISO 2022 escapes: pydicom's decoders
        text = data.decode("ascii")
        if vr in _UNSTRIPPED_TEXT:
            return text.rstrip(" \0")
        return "\\".join(v.strip(" \0") for v in text.split("\\")) if "\\" in text else text.strip(" \0")
    code = _BINARY.get(vr)
    if code is None or not little_endian:
        return _MISS
    size = struct.calcsize(code)
    if len(data) % size:
        return _MISS
    numbers = struct.unpack(f"<{len(data) // size}{code}", data)
    return numbers[0] if len(numbers) == 1 else "\\".join(str(n) for n in numbers)


def plain(elem: Any) -> Any:
    """A converted element's value as the index keeps it: str (values joined by ``\\``), int or float."""
    if elem is None or elem.VR == "SQ" or elem.value is None:
        return None
    v = elem.value
    if isinstance(v, (bytes, bytearray)):
        return None
    if isinstance(v, pydicom.multival.MultiValue):
        return "\\".join(str(x) for x in v)
    if isinstance(v, (int, float)) and elem.VR in _BINARY:
        return v
    return str(v)
