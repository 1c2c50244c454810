"""Transcoding a stored object to Explicit VR Little Endian for the web (PS3.18 8.7.3.5, PS3.5 A.2).

Pure functions over pydicom Datasets, no Flask. Native encodings (Implicit VR LE, Explicit VR BE,
Deflated) are re-encoded element by element (OW/OL/OF/OD/OV values byte-swapped from big endian,
PS3.5 7.3); encapsulated pixel data is decoded with pydicom's pixel decoders (pylibjpeg plugins).
Video and other syntaxes without a decoder cannot be transcoded: :func:`can_transcode` says so
before anything is sent, so the caller answers 406 instead of failing mid-stream.

Colour (PS3.5 8.2.1, PS3.3 C.7.6.3.1.2): a whole instance decoded from JPEG YBR_FULL(_422) is
converted to RGB and its Photometric Interpretation says RGB -- the instance carries its own
label.  A decoded *frame* has no label of its own: the client reads the Photometric
Interpretation from the (stored) metadata, so :func:`decode_frame` keeps the stored colour
space: YBR_FULL as three samples per pixel, YBR_FULL_422 in its native two-samples-per-pixel
form (Y1 Y2 Cb Cr per pair of pixels).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from .mediatypes import EXPLICIT_VR_BE, EXPLICIT_VR_LE, is_native

__all__ = ["TranscodeError", "can_transcode", "decode_frame", "native_ybr_422", "to_explicit_le"]

_SWAP_WIDTH = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


class TranscodeError(ValueError):
    """The object cannot be converted to the requested transfer syntax."""


@lru_cache(maxsize=64)
def can_transcode(transfer_syntax: str) -> bool:
    """True when an object stored as ``transfer_syntax`` can be sent as Explicit VR LE."""
    if is_native(transfer_syntax):
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder

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
            # Decoding is not a new instance (PS3.4 C.6.1.1.5 Note): keep the SOP Instance UID.
            # as_rgb converts YBR_FULL(_422) and sets Photometric Interpretation to RGB.
            ds.decompress(as_rgb=True, generate_instance_uid=False)
        except Exception as exc:  # decoder plugins raise assorted types
            raise TranscodeError(f"cannot decode pixel data ({ts}): {exc}") from exc
    elif ts == EXPLICIT_VR_BE:
        _swap_words(ds)
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def native_ybr_422(ybr: np.ndarray) -> np.ndarray:
    """Full-resolution YBR_FULL (rows, columns, 3) to native YBR_FULL_422 bytes' layout:
    per horizontal pair of pixels Y1 Y2 Cb Cr, chroma averaged (PS3.3 C.7.6.3.1.2)."""
    rows, columns, _ = ybr.shape
    if columns % 2:
        raise TranscodeError(f"YBR_FULL_422 needs an even number of columns, not {columns}")
    wide = ybr.astype(np.uint32)
    out = np.empty((rows, columns // 2, 4), dtype=ybr.dtype)
    out[..., 0] = ybr[:, 0::2, 0]
    out[..., 1] = ybr[:, 1::2, 0]
    out[..., 2] = (wide[:, 0::2, 1] + wide[:, 1::2, 1] + 1) // 2
    out[..., 3] = (wide[:, 0::2, 2] + wide[:, 1::2, 2] + 1) // 2
    return out


def decode_frame(header: Dataset, frame: bytes) -> bytes:
    """Decode one encapsulated ``frame`` (codestream) to native little-endian pixel bytes.

    The bytes agree with the stored header (which is what the client's metadata says): colour
    stays in the stored Photometric Interpretation -- YBR_FULL as decoded, YBR_FULL_422 in its
    native subsampled layout (:func:`native_ybr_422`) -- and follows the stored Planar
    Configuration.  JPEG 2000 YBR_ICT/YBR_RCT come out as RGB, as their decoders give them
    (PS3.5 8.2.4).
    """
    ts = str(header.file_meta.get("TransferSyntaxUID", ""))
    if not can_transcode(ts):
        raise TranscodeError(f"cannot decode transfer syntax {ts}")
    ds = pydicom.Dataset(header)
    ds.file_meta = header.file_meta
    ds.NumberOfFrames = 1
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    photometric = str(header.get("PhotometricInterpretation", "")).strip()
    try:
        arr = pixel_array(ds, as_rgb=False)
    except Exception as exc:  # decoder plugins raise assorted types
        raise TranscodeError(f"cannot decode frame ({ts}): {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if photometric == "YBR_FULL_422":
            arr = native_ybr_422(arr)
        elif int(header.get("PlanarConfiguration", 0) or 0) == 1:
            arr = arr.transpose(2, 0, 1)  # colour-by-plane, as the header says (PS3.3 C.7.6.3.1.3)
    return np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
