"""Rendered and thumbnail resources (PS3.18 8.3.5, 10.4.1.1.3, 10.7; pixel pipeline PS3.4 N.2).

Pure functions, no Flask: decode one frame with pydicom's pixel handlers
(pylibjpeg plugins for JPEG, JPEG-LS, JPEG 2000, RLE), apply the Modality
LUT (rescale), the VOI window, MONOCHROME1 inversion or the palette, crop,
flip and scale to the viewport, and encode with Pillow.

The VOI functions LINEAR, LINEAR_EXACT and SIGMOID (PS3.3 C.11.2.1.2.1,
C.11.2.1.3.1, C.11.2.1.3.2) are written out here rather than taken from
``pydicom.pixels.apply_windowing`` because that function maps to the
stored-bits range of the dataset, whereas a rendered image needs 0..255 and a
caller-supplied window; a VOI LUT Sequence still goes through pydicom.

The query parameters of rendered resources (PS3.18 8.3.5.1, Table 8.3.5-1)
are parsed here too (:func:`parse_window`, :func:`parse_viewport`,
:func:`parse_quality`), raising :class:`RenderError` (HTTP 400) with the reason.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from storage.artifact_classes import DOCUMENTS
from storage.transfer_syntaxes import is_video

__all__ = ["FrameOutOfRange", "RenderError", "Viewport", "Window", "parse_quality",
           "parse_viewport", "parse_window", "render", "thumbnail"]

#: Largest rendered image side we produce (a viewport beyond it is a 400, not an OOM).
MAX_VIEWPORT = 8192
#: ``window`` functions of PS3.18 8.3.5.1.4 -> VOI LUT Function (PS3.3 C.11.2.1.3).
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}

_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
_NOT_IMAGES = DOCUMENTS  # encapsulated documents, by name


class RenderError(ValueError):
    """The object has no renderable pixel data, or the request cannot be met."""


class FrameOutOfRange(RenderError, IndexError):
    """A frame number outside 1..NumberOfFrames."""


@dataclass(frozen=True)
class Window:
    """A VOI window in modality units and its function (PS3.3 C.11.2.1.2, C.11.2.1.3)."""

    center: float
    width: float
    function: str = "LINEAR"  # LINEAR | LINEAR_EXACT | SIGMOID

    def __post_init__(self) -> None:
        if self.function not in WINDOW_FUNCTIONS.values():
            raise RenderError(f"unknown VOI LUT function {self.function[:16]!r}")
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise RenderError("window center and width must be finite numbers")
        if self.function == "LINEAR" and self.width < 1:
            raise RenderError(f"window width must be >= 1 for linear, got {self.width}")
        if self.width <= 0:
            raise RenderError(f"window width must be > 0, got {self.width}")


@dataclass(frozen=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3).

    The source region (sx, sy, |sw|, |sh|) of the image, flipped horizontally when ``sw`` is
    negative and vertically when ``sh`` is, is scaled to fit inside vw x vh keeping its aspect
    ratio.  A missing vw or vh follows from the other; a missing sw or sh means "to the edge".
    """

    width: int | None
    height: int | None
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and not 1 <= v <= MAX_VIEWPORT:
                raise RenderError(f"viewport {name} must be 1..{MAX_VIEWPORT}, got {v}")
        if self.sx < 0 or self.sy < 0:
            raise RenderError("viewport sx and sy must not be negative")
        if self.sw == 0 or self.sh == 0:
            raise RenderError("viewport sw and sh must not be zero")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RenderError(f"bad {what} {text.strip()[:24]!r}: not a number") from None
    if not math.isfinite(value):
        raise RenderError(f"bad {what} {text.strip()[:24]!r}")
    return value


def parse_window(text: str) -> Window:
    """``center,width,function`` (PS3.18 8.3.5.1.4); function linear (default), linear-exact
    or sigmoid."""
    fields = [f.strip() for f in text.split(",")]
    if len(fields) not in (2, 3):
        raise RenderError(f"bad window {text[:40]!r}: expected center,width,function")
    function = fields[2].lower() if len(fields) == 3 and fields[2] else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise RenderError(f"window function {fields[2][:16]!r} not supported; use one of "
                          f"{', '.join(WINDOW_FUNCTIONS)}")
    return Window(_number(fields[0], "window center"), _number(fields[1], "window width"),
                  WINDOW_FUNCTIONS[function])


def parse_viewport(text: str) -> Viewport:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (PS3.18 8.3.5.1.3); empty fields take defaults."""
    fields = [f.strip() for f in text.split(",")]
    if len(fields) not in (2, 6):
        raise RenderError(f"bad viewport {text[:40]!r}: expected vw,vh or vw,vh,sx,sy,sw,sh")
    values: list[int | None] = []
    for name, field in zip(("vw", "vh", "sx", "sy", "sw", "sh"), fields, strict=False):
        if not field:
            values.append(None)
            continue
        number = _number(field, f"viewport {name}")
        if name in ("vw", "vh") and number != int(number):
            raise RenderError(f"viewport {name} must be a whole number of pixels")
        values.append(round(number))
    if values[0] is None and values[1] is None:
        raise RenderError("viewport needs vw or vh")
    while len(values) < 6:
        values.append(None)
    return Viewport(values[0], values[1], values[2] or 0, values[3] or 0, values[4], values[5])


def parse_quality(text: str) -> int:
    """``quality`` 1..100 (PS3.18 8.3.5.1.2)."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 100:
        raise RenderError(f"bad quality {text[:16]!r}: an integer 1..100")
    return int(text)


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS (WindowCenter may have several)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0]
    return float(value)  # type: ignore[arg-type]  # a DS, IS, number or numeric string


def _window_linear(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI function onto 0..255."""
    if width < 1:
        raise RenderError(f"window width must be >= 1, got {width}")
    if width == 1:
        return np.where(arr > center - 0.5, 255, 0).astype(np.uint8)
    y = (arr - (center - 0.5)) / (width - 1) + 0.5
    return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _apply_window(arr: np.ndarray, window: Window) -> np.ndarray:
    """LINEAR (C.11.2.1.2.1), LINEAR_EXACT (C.11.2.1.3.2) or SIGMOID (C.11.2.1.3.1) onto 0..255."""
    c, w = window.center, window.width
    if window.function == "LINEAR":
        return _window_linear(arr, c, w)
    if window.function == "LINEAR_EXACT":
        y = (arr - c) / w + 0.5
    else:
        y = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (arr - c) / w, -60.0, 60.0)))
    return (np.clip(y, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _as_window(window: Window | tuple[float, ...] | None) -> Window | None:
    if window is None or isinstance(window, Window):
        return window
    if len(window) == 3:
        return Window(float(window[0]), float(window[1]), str(window[2]))
    return Window(float(window[0]), float(window[1]))


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return ((arr - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8)


def _dataset_window(ds: pydicom.Dataset) -> Window | None:
    """The dataset's first window with its VOI LUT Function, when usable (PS3.3 C.11.2.1.2)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    try:
        return Window(_first(ds.WindowCenter), _first(ds.WindowWidth), function)
    except (RenderError, TypeError, ValueError, IndexError):
        return None


def _monochrome(arr: np.ndarray, ds: pydicom.Dataset, window: Window | None) -> np.ndarray:
    """Modality LUT, then VOI (PS3.4 N.2.1.1, N.2.1.2), then MONOCHROME1 inversion."""
    values = apply_modality_lut(arr, ds).astype(np.float32, copy=False)
    window = window or _dataset_window(ds)
    if window is not None:
        out = _apply_window(values, window)
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
    scaled: np.ndarray = np.clip(arr.astype(np.float32) * scale + 0.5, 0, 255).astype(np.uint8)
    return scaled


def _frame_image(ds: pydicom.Dataset, frame: int, window: Window | None) -> Image.Image:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _NOT_IMAGES:
        raise RenderError(f"{_NOT_IMAGES[sop_class]} is not rendered as an image here")
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise RenderError("object has no pixel data to render")
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if is_video(ts):
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


def _fit(img: Image.Image, viewport: Viewport) -> Image.Image:
    """Crop to the source region, flip, and scale into the viewport (PS3.18 8.3.5.1.3)."""
    w, h = img.size
    if viewport.sx >= w or viewport.sy >= h:
        raise RenderError(f"viewport source region starts outside the {w}x{h} image")
    sw = abs(viewport.sw) if viewport.sw is not None else w - viewport.sx
    sh = abs(viewport.sh) if viewport.sh is not None else h - viewport.sy
    box = (viewport.sx, viewport.sy, min(w, viewport.sx + sw), min(h, viewport.sy + sh))
    if box != (0, 0, w, h):
        img = img.crop(box)
    if viewport.sw is not None and viewport.sw < 0:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if viewport.sh is not None and viewport.sh < 0:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    w, h = img.size
    scales = [s for s in (viewport.width and viewport.width / w,
                          viewport.height and viewport.height / h) if s]
    scale = min(scales)
    size = (min(MAX_VIEWPORT, max(1, round(w * scale))), min(MAX_VIEWPORT, max(1, round(h * scale))))
    if size != img.size:
        img = img.resize(size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC)
    return img


def render(
    ds: pydicom.Dataset,
    frame: int = 1,
    *,
    media_type: str = "image/jpeg",
    window: Window | tuple[float, ...] | None = None,
    viewport: Viewport | tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """Render one frame as JPEG, PNG or GIF (PS3.18 8.3.5.1).

    ``window`` (PS3.18 8.3.5.1.4) is a :class:`Window` or (center, width[, function]) in
    modality units; otherwise the dataset's first window with its VOI LUT Function, else its
    VOI LUT, else min/max.  It applies to grayscale images only.  ``viewport`` is a
    :class:`Viewport` or (width, height): the (cropped, flipped) image is scaled to fit inside
    it, keeping its aspect ratio (8.3.5.1.3).  ``quality`` 1..100 applies to JPEG (8.3.5.1.2).
    """
    if not 1 <= quality <= 100:
        raise RenderError(f"quality must be 1..100, got {quality}")
    if viewport is not None and not isinstance(viewport, Viewport):
        if viewport[0] < 1 or viewport[1] < 1:
            raise RenderError(f"viewport must be positive, got {viewport}")
        # A side beyond MAX_VIEWPORT means "unbounded" (WADO-URI gives rows or columns alone).
        sides = [int(v) if v <= MAX_VIEWPORT else None for v in viewport[:2]]
        viewport = Viewport(sides[0], sides[1]) if sides != [None, None] else None
    img = _frame_image(ds, frame, _as_window(window))
    if viewport is not None:
        img = _fit(img, viewport)
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
