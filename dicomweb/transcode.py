"""Transcoding a stored object to Explicit VR Little Endian for the web (PS3.18 8.7.3.5, PS3.5 A.2).

Pure functions over pydicom Datasets, no Flask. Native encodings (Implicit VR LE, Explicit VR BE,
Deflated) are re-encoded element by element (OW/OL/OF/OD/OV values byte-swapped from big endian,
PS3.5 7.3); encapsulated pixel data is decoded with pydicom's pixel decoders (pylibjpeg plugins).
Video and other syntaxes without a decoder cannot be transcoded: :func:`can_transcode` says so
before anything is sent, so the caller answers 406 instead of failing mid-stream.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels import pixel_array
from pydicom.uid import UID

from .mediatypes import EXPLICIT_VR_BE, EXPLICIT_VR_LE, is_native

__all__ = ["TranscodeError", "can_transcode", "decode_frame", "to_explicit_le"]

_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


class TranscodeError(ValueError):
    """The object cannot be converted to the requested transfer syntax."""


@lru_cache(maxsize=64)
def can_transcode(transfer_syntax: str) -> bool:
    """True when an object stored as ``transfer_syntax`` can be sent as Explicit VR LE."""
    if is_native(transfer_syntax):
        return True
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def _swap_words(ds: Dataset) -> None:
    """Big endian OW/OL/OF/OD/OV values to little endian, recursively (PS3.5 7.3)."""
    for elem in ds.iterall():
        width = _SWAP_WIDTH.get(str(elem.VR).split(" or ")[0])
        if width and isinstance(elem.value, (bytes, bytearray)) and elem.value:
            usable = len(elem.value) // width * width
            arr = np.frombuffer(elem.value[:usable], dtype=f">u{width}")
            elem.value = arr.astype(f"<u{width}").tobytes() + bytes(elem.value[usable:])


def to_explicit_le(ds: Dataset) -> bytes:
    """``ds`` (as read from its Part 10 file) re-encoded as a Part 10 file in Explicit VR LE."""
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if not can_transcode(ts):
        raise TranscodeError(f"cannot decode transfer syntax {ts} to {EXPLICIT_VR_LE}")
    if not is_native(ts):
        try:
            ds.decompress()
        except Exception as exc:  # decoder plugins raise assorted types
            raise TranscodeError(f"cannot decode pixel data ({ts}): {exc}") from exc
    elif ts == EXPLICIT_VR_BE:
        _swap_words(ds)
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def decode_frame(header: Dataset, frame: bytes) -> bytes:
    """Decode one encapsulated ``frame`` (codestream) to native little-endian pixel bytes.

    ``header`` is the instance's dataset without pixel data; colour is pixel-interleaved RGB
    when the codec yields it (pydicom's default YBR to RGB conversion, PS3.5 8.2).
    """
    ts = str(header.file_meta.get("TransferSyntaxUID", ""))
    if not can_transcode(ts):
        raise TranscodeError(f"cannot decode transfer syntax {ts}")
    ds = pydicom.Dataset(header)
    ds.file_meta = header.file_meta
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    try:
        arr = pixel_array(ds)
    except Exception as exc:  # decoder plugins raise assorted types
        raise TranscodeError(f"cannot decode frame ({ts}): {exc}") from exc
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
