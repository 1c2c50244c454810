"""WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.6, 10.7)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Response, request
from pydicom.dataset import Dataset

from storage import transfer_syntaxes
from storage.archive import InstanceInfo

from .. import context as ctx
from .. import multipart
from ..mediatypes import (
    NotAcceptable,
    Offer,
    negotiate,
    rendered_offers,
)
from .bulkdata import original_media_type, send_original
from .common import (
    ARTIFACT_CLASSES,
    _accept,
    _audit_small_read,
    _location,
    _multipart,
    audit_read,
)

log = logging.getLogger(__name__)


def _render_params() -> dict[str, Any]:
    """``window``, ``viewport``, ``quality`` (PS3.18 8.3.5.1, Table 8.3.5-1); 400 when malformed.

    ``annotation`` and ``iccprofile`` are accepted and not applied (no burnt-in text: it would
    put PHI into pixels; images are sent in their own colour space).
    """
    from ..render import parse_quality, parse_viewport, parse_window

    params: dict[str, Any] = {}
    if (raw := request.args.get("window")) is not None:
        params["window"] = parse_window(raw)
    if (raw := request.args.get("viewport")) is not None:
        params["viewport"] = parse_viewport(raw)
    if (raw := request.args.get("quality")) is not None:
        params["quality"] = parse_quality(raw)
    return params


def _renderable(info: InstanceInfo) -> bool:
    """An instance with pixel data we render as images (not a document, video or SR)."""
    return (info.sop_class_uid not in ARTIFACT_CLASSES and bool(info.rows) and bool(info.columns)
            and not transfer_syntaxes.is_video(info.transfer_syntax))


def _frame_count(info: InstanceInfo) -> int:
    return max(1, info.number_of_frames or 1)


def _representative(infos: list[InstanceInfo]) -> InstanceInfo:
    """PS3.18 10.7: the middle image of the (ordered) list; any instance if none is an image."""
    images = [i for i in infos if _renderable(i)] or infos
    return images[(len(images) - 1) // 2]


def _rendered_location(info: InstanceInfo, frame: int | None) -> str:
    return _location(info) + (f"/frames/{frame}/rendered" if frame else "/rendered")


def _rendered(infos: list[InstanceInfo], frames: list[int] | None = None,
              level: str = "instance") -> Response:
    """Rendered study, series, instance or frames (PS3.18 10.4.1.1.3).

    ``multipart/related; type="image/jpeg"`` (or png, gif): every frame of every image instance
    in the resource, one part each, rendered and streamed one instance at a time.  A single-part
    image type: the resource's one image -- or, when it has several, its representative image
    (as Orthanc answers and dicomweb-client's ``retrieve_*_rendered`` expect), named by
    Content-Location.  Documents (PDF, MP4, WAV, text) of a single instance come back as their
    original when the Accept allows it; in study/series parts they are left out (206).
    """
    if level == "instance" and frames is None and not _renderable(infos[0]):
        return _rendered_original(infos[0])
    images = [i for i in infos if _renderable(i)]
    if not images:
        raise NotAcceptable(f"this {level} has no image to render; ask for its instances or "
                            "bulk data")
    if frames is not None:
        count = _frame_count(images[0])
        if max(frames) > count:
            from ..render import FrameOutOfRange

            raise FrameOutOfRange(f"frame {max(frames)} not in 1..{count}")
        plan = [(images[0], list(frames))]
    else:
        plan = [(i, list(range(1, _frame_count(i) + 1))) for i in images]
    total = sum(len(f) for _, f in plan)
    offer = negotiate(_accept(), rendered_offers(total))
    params = _render_params()
    audit_read(images, f"rendered {level}")
    if not offer.multipart:
        info, numbers = plan[0] if len(plan) == 1 else (_representative(images), [1])
        frame = numbers[0] if len(numbers) == 1 or frames is not None else 1
        data = _render_one(ctx.archive().dataset(info), info, frame, offer.media_type, params)
        resp = Response(data, content_type=offer.media_type)
        resp.headers["Content-Location"] = _rendered_location(
            info, frame if frames is not None or _frame_count(info) > 1 else None)
        return resp
    return _rendered_multipart(plan, offer.media_type, params, skipped=len(infos) - len(images))


def _render_one(ds: Dataset, info: InstanceInfo, frame: int, media_type: str,
                params: dict[str, Any]) -> bytes:
    from ..render import render

    return render(ds, frame, media_type=media_type, **params)


def _rendered_multipart(plan: list[tuple[InstanceInfo, list[int]]], media_type: str,
                        params: dict[str, Any], skipped: int) -> Response:
    """One part per rendered frame; one instance's dataset in memory at a time."""
    from ..render import RenderError

    archive = ctx.archive()
    first_info, first_frames = plan[0]
    held: list[Dataset] = [archive.dataset(first_info)]  # dropped once its frames are done
    # The first image is rendered before the response starts: a bad viewport region or an
    # undecodable object is a 4xx, not a truncated stream.
    first = _render_one(held[0], first_info, first_frames[0], media_type, params)

    def location(info: InstanceInfo, n: int) -> str:
        return _rendered_location(info, n if _frame_count(info) > 1 else None)

    def parts() -> Iterator[multipart.Part]:
        yield multipart.Part.make(first, media_type, location(first_info, first_frames[0]))
        for index, (info, numbers) in enumerate(plan):
            ds = held.pop() if index == 0 else None
            todo = numbers[1:] if index == 0 else numbers
            for n in todo:
                try:
                    if ds is None:
                        ds = archive.dataset(info)
                    data = _render_one(ds, info, n, media_type, params)
                except RenderError as exc:  # mid-stream: leave the image out, say so in the log
                    log.warning("rendered %s frame %d left out: %s", info.sop_uid, n, exc)
                    break
                yield multipart.Part.make(data, media_type, location(info, n))
            ds = None

    resp = _multipart(media_type, parts())
    if skipped:
        resp.status_code = 206  # PS3.18 10.4.3.2: some instances are not in the response
        resp.headers["Warning"] = (f'299 - "{skipped} instance(s) without an image to render '
                                   'were left out"')
    return resp


def _rendered_original(info: InstanceInfo) -> Response:
    """A document's rendered form is its original (PDF, MP4, WAV, text) when accepted."""
    original = original_media_type(info)
    if original is None:
        raise NotAcceptable("this object has no rendered image; ask for its bulk data")
    negotiate(_accept(), [Offer(original)])
    audit_read([info], "rendered original")
    return send_original(info)


def _thumbnail(infos: list[InstanceInfo], frame: int | None) -> Response:
    """Thumbnail of a study, series, instance or frame (PS3.18 10.7): one representative image.

    The middle image instance (its middle frame) of the resource; a document icon for
    non-image objects.  ``viewport`` bounds the size (default 128, at most 1024).
    """
    from ..render import parse_viewport, render, thumbnail

    info = _representative(infos)
    offer = negotiate(_accept(), rendered_offers()[:3])  # the single-part image types
    _audit_small_read(info, "thumbnail")
    if not _renderable(info):
        return Response(_icon(offer.media_type), content_type=offer.media_type)
    size = 128
    if (raw := request.args.get("viewport")) is not None:
        vp = parse_viewport(raw)
        size = max(1, min(vp.width or vp.height or size, vp.height or vp.width or size, 1024))
    ds = ctx.archive().dataset(info)
    if frame is None:
        data = thumbnail(ds, size, media_type=offer.media_type)
    else:
        data = render(ds, frame, media_type=offer.media_type, viewport=(size, size), quality=80)
    return Response(data, content_type=offer.media_type)


def _icon(media_type: str) -> bytes:
    """A generic document icon (PNG) for thumbnails of non-image objects."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("RGB", (128, 128), (40, 40, 48))
    draw = ImageDraw.Draw(img)
    draw.polygon([(32, 16), (80, 16), (96, 32), (96, 112), (32, 112)], fill=(235, 235, 235))
    for y in range(44, 100, 12):
        draw.line([(42, y), (86, y)], fill=(120, 120, 140), width=3)
    out = io.BytesIO()
    img.save(out, "PNG" if media_type == "image/png" else "GIF" if "gif" in media_type else "JPEG")
    return out.getvalue()
