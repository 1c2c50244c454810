"""WADO-RS bulk data (PS3.18 10.4.1.1.4): attribute values by tag path, pixel data, originals."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from flask import Response, stream_with_context
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import VLPhotographicImageStorage

from storage import transfer_syntaxes
from storage.archive import InstanceInfo
from storage.errors import BadInput, NotFound

from .. import context as ctx
from .. import multipart
from ..mediatypes import (
    EXPLICIT_VR_LE,
    OCTET_STREAM,
    NotAcceptable,
    Offer,
    frame_offers,
    is_native,
    negotiate,
)
from ..transcode import can_transcode
from .common import (
    ARTIFACT_CLASSES,
    CHUNK,
    _accept,
    _multipart,
    audit_read,
)
from .frames import _frames


def _tag_path(text: str) -> list[int | str]:
    """``00540016/0/00181074`` -> [tag, item, tag] (the BulkDataURI form our metadata uses)."""
    steps = [s for s in text.split("/") if s]
    if not steps or len(steps) % 2 == 0 or len(steps) > 31:
        raise BadInput(f"bad bulk data path {text[:80]!r}: expected tag(/item/tag)*")
    out: list[int | str] = []
    for i, step in enumerate(steps):
        if i % 2 == 0:
            if not re.fullmatch(r"[0-9A-Fa-f]{8}", step):
                raise BadInput(f"bad tag {step[:16]!r} in bulk data path")
            out.append(int(step, 16))
        else:
            if not (step.isascii() and step.isdigit()):
                raise BadInput(f"bad item index {step[:16]!r} in bulk data path")
            out.append(step)
    return out


def _element_bytes(ds: Dataset, path: list[int | str]) -> bytes:
    """The value bytes of the element at ``path`` (little endian, as PS3.18 bulk data)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element

    current: Any = ds
    for i in range(0, len(path) - 1, 2):
        tag, item = path[i], int(path[i + 1])
        elem = current.get(Tag(tag))
        if elem is None or elem.VR != "SQ" or item >= len(elem.value):
            raise NotFound(f"no bulk data at {_fmt(path)}")
        current = elem.value[item]
    elem = current.get(Tag(path[-1]))
    if elem is None or elem.VR == "SQ":
        raise NotFound(f"no bulk data at {_fmt(path)}")
    if isinstance(elem.value, (bytes, bytearray)):
        return bytes(elem.value)
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_data_element(fp, elem)
    return fp.getvalue()[8:]


def _fmt(path: list[int | str]) -> str:
    return "/".join(f"{p:08X}" if isinstance(p, int) else p for p in path)


def original_media_type(info: InstanceInfo) -> str | None:
    """The original media type of a non-DICOM artifact, when we can give it back.

    The index records it at ingest (``content_type``: MP3, MOV, HEIC... as well as the kinds
    each SOP class implies); objects from elsewhere fall back on the class's usual type."""
    media = ARTIFACT_CLASSES.get(info.sop_class_uid)
    if media == "video/mp4" and not transfer_syntaxes.is_video(info.transfer_syntax):
        return None
    if info.sop_class_uid == VLPhotographicImageStorage:
        if info.transfer_syntax in transfer_syntaxes.JPEG:
            return "image/jpeg"  # VL Photographic kept as JPEG
        return info.content_type or None  # decoded photo or scan page: its kept original or PNG
    return (info.content_type or media) if media else None


def send_original(info: InstanceInfo) -> Response:
    from storage.artifacts import ArtifactError, extract_original
    from storage.originals import find_span, read_span

    span = find_span(ctx.archive(), info)  # a video: streamed from its byte range
    if span is not None:
        resp = Response(stream_with_context(read_span(ctx.archive(), info, span)),
                        content_type=span.media_type, direct_passthrough=True)
        resp.headers["Content-Length"] = str(span.length)
        resp.headers["Content-Disposition"] = f'inline; filename="{span.filename}"'
        return resp
    try:
        original = extract_original(ctx.archive().dataset(info))
    except ArtifactError as exc:
        raise NotAcceptable(f"no original can be extracted: {exc}") from exc
    resp = Response(original.data, content_type=original.media_type)
    resp.headers["Content-Disposition"] = f'inline; filename="{original.filename}"'
    return resp


def _bulkdata(info: InstanceInfo, tagpath: str) -> Response:
    """PS3.18 10.4.1.1.4 bulk data; pixel data as frames; artifacts as their original."""
    path = _tag_path(tagpath)
    is_pixels = len(path) == 1 and path[0] in (0x7FE00010, 0x7FE00008, 0x7FE00009)
    original = original_media_type(info) if len(path) == 1 and path[0] in (0x7FE00010,
                                                                       0x00420011) else None
    offers: list[Offer] = []
    stored = info.transfer_syntax
    if is_pixels:
        offers = frame_offers(stored, can_decode=can_transcode(stored))
    else:
        offers = [Offer(OCTET_STREAM, True, EXPLICIT_VR_LE), Offer(OCTET_STREAM, False,
                                                                   EXPLICIT_VR_LE)]
    if original:
        offers.append(Offer(original))
    if is_pixels and not original:
        offers += [Offer(o.media_type, False, o.transfer_syntax, o.transcode) for o in list(offers)]
    offer = negotiate(_accept(), offers)
    audit_read([info], f"bulkdata {_fmt(path)}")
    if original and offer.media_type == original:
        return send_original(info)
    if is_pixels:
        return _pixel_bulk(info, offer)
    archive = ctx.archive()
    ds = archive.header(info) if int(path[0]) < 0x7FE00010 else archive.dataset(info)
    data = _element_bytes(ds, path)
    if not offer.multipart:
        return Response(data, content_type=OCTET_STREAM)
    return _multipart(OCTET_STREAM, [multipart.Part.make(data, OCTET_STREAM)])


def _pixel_bulk(info: InstanceInfo, offer: Offer) -> Response:
    """Native pixel data: all frames concatenated, streamed; encapsulated: one part per frame."""
    archive = ctx.archive()
    index = archive.frame_index(info)
    ts = info.transfer_syntax
    if not index.encapsulated and not offer.transcode:
        ct = offer.part_content_type(EXPLICIT_VR_LE if is_native(ts) else ts)

        def value() -> Iterator[bytes]:
            with archive.open(info) as r:
                r.seek(index.offset)
                left = index.length
                while left > 0:
                    chunk = r.read(min(CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    yield chunk

        if not offer.multipart:
            return Response(stream_with_context(value()), content_type=ct)
        return _multipart(offer.media_type, [multipart.Part.make(value(), ct)])
    numbers = list(range(1, index.number_of_frames + 1))
    return _frames(info, numbers) if offer.multipart else _frames(info, numbers[:1])
