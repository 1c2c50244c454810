"""Rendered and thumbnail resources (PS3.18 8.3.5, 10.4.1.1.3, 10.7; pixel pipeline PS3.4 N.2).

Pure functions, no Flask: decode one frame with pydicom's pixel handlers
(pylibjpeg plugins for JPEG, JPEG-LS, JPEG 2000, RLE), apply the Modality
LUT (rescale), the VOI window, MONOCHROME1 inversion or the palette, and
encode with Pillow.

The linear VOI window (PS3.3 C.11.2.1.2.1) is written out here rather than
taken from ``pydicom.pixels.apply_windowing`` because that function maps to
the stored-bits range of the dataset, whereas a rendered image needs 0..255
and a caller-supplied window; VOI LUT Sequence and SIGMOID still go through
pydicom.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

__all__ = ["FrameOutOfRange", "RenderError", "render", "thumbnail"]

_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
_NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
}
_VIDEO_TS_PREFIX = ("1.2.840.10008.1.2.4.10",)  # MPEG-2 .100/.101, MPEG-4 .102-.108


class RenderError(ValueError):
    """The object has no renderable pixel data, or the request cannot be met."""


class FrameOutOfRange(RenderError, IndexError):
    """A frame number outside 1..NumberOfFrames."""


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS (WindowCenter may have several)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _window_linear(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI function onto 0..255."""
    if width < 1:
        raise RenderError(f"window width must be >= 1, got {width}")
    if width == 1:
        return np.where(arr > center - 0.5, 255, 0).astype(np.uint8)
    y = (arr - (center - 0.5)) / (width - 1) + 0.5
    return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return ((arr - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8)


def _monochrome(
    arr: np.ndarray, ds: pydicom.Dataset, window: tuple[float, float] | None
) -> np.ndarray:
    """Modality LUT, then VOI (PS3.4 N.2.1.1, N.2.1.2), then MONOCHROME1 inversion."""
    values = apply_modality_lut(arr, ds).astype(np.float32, copy=False)
    if window is not None:
        out = _window_linear(values, *window)
    elif (
        "WindowCenter" in ds
        and "WindowWidth" in ds
        and ds.get("VOILUTFunction", "LINEAR")
        in (
            "LINEAR",
            "",
            None,
        )
    ):
        out = _window_linear(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    elif "VOILUTSequence" in ds or "WindowCenter" in ds:
        out = _stretch(apply_voi_lut(values, ds, index=0).astype(np.float32))
    else:
        out = _stretch(values)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255 - out
    return out


def _to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    scale = 255.0 / float((1 << bits) - 1) if bits > 0 else 1.0
    return np.clip(arr.astype(np.float32) * scale + 0.5, 0, 255).astype(np.uint8)


def _frame_image(
    ds: pydicom.Dataset, frame: int, window: tuple[float, float] | None
) -> Image.Image:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _NOT_IMAGES:
        raise RenderError(f"{_NOT_IMAGES[sop_class]} is not rendered as an image here")
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise RenderError("object has no pixel data to render")
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts.startswith(_VIDEO_TS_PREFIX):
        raise RenderError("video transfer syntax: render with a video pipeline")
    try:
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise RenderError(f"bad NumberOfFrames {ds.get('NumberOfFrames')!r}") from None
    if not 1 <= frame <= nframes:
        raise FrameOutOfRange(f"frame {frame} not in 1..{nframes}")
    try:
        arr = pixel_array(ds, index=frame - 1 if nframes > 1 else None, as_rgb=True)
    except Exception as exc:  # decoder plugins raise a variety of types
        raise RenderError(f"cannot decode pixel data: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = 16 if rgb.dtype != np.uint8 else 8
        return Image.fromarray(_to_8bit(rgb, bits), "RGB")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return Image.fromarray(_to_8bit(arr, int(ds.get("BitsStored", 8))), "RGB")
    if arr.ndim != 2:
        raise RenderError(f"unsupported pixel array shape {arr.shape} for {photometric}")
    return Image.fromarray(_monochrome(arr, ds, window), "L")


def _encode(img: Image.Image, media_type: str, quality: int) -> bytes:
    fmt = _PIL_FORMATS.get(media_type.lower())
    if fmt is None:
        raise RenderError(f"cannot render as {media_type!r}; use one of {sorted(_PIL_FORMATS)}")
    out = io.BytesIO()
    if fmt == "JPEG":
        img.save(out, fmt, quality=quality)
    elif fmt == "PNG":
        img.save(out, fmt, compress_level=1)  # speed over size, per-request work
    else:
        img.save(out, fmt)
    return out.getvalue()


def render(
    ds: pydicom.Dataset,
    frame: int = 1,
    *,
    media_type: str = "image/jpeg",
    window: tuple[float, float] | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """Render one frame as JPEG, PNG or GIF (PS3.18 8.3.5.1).

    ``window`` is (center, width) in modality units (PS3.18 8.3.5.1.4,
    ``window=center,width,linear``); otherwise the dataset's first window,
    else its VOI LUT, else min/max.  ``viewport`` is (width, height): the
    image is scaled to fit inside it, keeping its aspect ratio (8.3.5.1.3).
    ``quality`` 1..100 applies to JPEG (8.3.5.1.2).
    """
    if not 1 <= quality <= 100:
        raise RenderError(f"quality must be 1..100, got {quality}")
    if viewport is not None and (viewport[0] < 1 or viewport[1] < 1):
        raise RenderError(f"viewport must be positive, got {viewport}")
    img = _frame_image(ds, frame, window)
    if viewport is not None:
        w, h = img.size
        scale = min(viewport[0] / w, viewport[1] / h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != img.size:
            img = img.resize(
                size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC
            )
    return _encode(img, media_type, quality)


def thumbnail(ds: pydicom.Dataset, size: int = 128, *, media_type: str = "image/jpeg") -> bytes:
    """A small image of the middle frame fitting ``size`` x ``size`` (PS3.18 10.7 Thumbnail)."""
    if size < 1:
        raise RenderError(f"thumbnail size must be positive, got {size}")
    try:
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        nframes = 1
    img = _frame_image(ds, (nframes + 1) // 2, None)
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    return _encode(img, media_type, 80)
