"""WADO-RS retrieval (PS3.18 10.4): instances, frames, bulk data, rendered, thumbnails, zip.

Handlers are thin: parse the path, negotiate (PS3.18 8.7 via :mod:`dicomweb.mediatypes`), ask the
archive with the caller's scope, format. Study and series responses are generators: one instance
at a time, each streamed from :meth:`storage.Archive.open` in 1 MiB chunks, so a study is never in
memory. Objects stored in a transfer syntax the web may not carry (Implicit VR LE, Explicit VR BE,
PS3.18 8.7.3) or not the one asked for are transcoded to Explicit VR LE one at a time.

Every read is audited without a commit on the request path: instances, bulk data and rendered
images as one event per request, frames and thumbnails counted per caller, series and minute
(:mod:`dicomweb.auth`'s background writer).
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Blueprint, Response, request, stream_with_context
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import VLPhotographicImageStorage

from storage import artifact_classes, transfer_syntaxes
from storage.archive import InstanceInfo
from storage.errors import BadInput, NotFound

from . import auth, multipart
from . import context as ctx
from .mediatypes import (
    AS_STORED,
    DICOM,
    EXPLICIT_VR_LE,
    OCTET_STREAM,
    WEB_FORBIDDEN_TS,
    NotAcceptable,
    Offer,
    frame_offers,
    instance_offers,
    is_native,
    negotiate,
    rendered_offers,
)
from .transcode import TranscodeError, can_transcode, decode_frame, to_explicit_le

__all__ = ["ARTIFACT_CLASSES", "audit_read", "instance_body", "instances_in_scope", "make_blueprint",
           "original_media_type", "send_original"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_FRAMES_PER_REQUEST = 10_000
ZIP = "application/zip"
#: Artifacts that are not images, by SOP class: the media type their original comes back as.
ARTIFACT_CLASSES = artifact_classes.NOT_IMAGES


# ------------------------------------------------------------------------------------- helpers


def _accept() -> str | None:
    """The Accept header, or the ``accept`` query parameter which overrides it (PS3.18 8.3.3.1)."""
    return request.args.get("accept") or request.headers.get("Accept")


def instances_in_scope(study: str, series: str | None = None, sop: str | None = None) -> list[InstanceInfo]:
    return ctx.archive().instances(study, series, sop, scope=ctx.scope())


def audit_read(infos: list[InstanceInfo], what: str) -> None:
    """One ``retrieve`` event per request, written off the request path (dicomweb.auth)."""
    auth.audit_read("retrieve", patient_ref=infos[0].patient_ref, study_uid=infos[0].study_uid,
                    detail=f"{what}: {len(infos)} instance(s)")


def _audit_small_read(info: InstanceInfo, what: str, items: int = 1) -> None:
    """Frames and thumbnails: counted per caller, series and minute (dicomweb.auth)."""
    auth.audit_read_coalesced("retrieve", study_uid=info.study_uid, series_uid=info.series_uid,
                              patient_ref=info.patient_ref, what=what, items=items)


def _stored_chunks(info: InstanceInfo) -> Iterator[bytes]:
    """The stored Part 10 bytes of one instance, 1 MiB at a time. Opened now: a patient shredded
    meanwhile is NotFound here, before a byte of it is sent (issue 13)."""
    reader = ctx.archive().open(info)

    def chunks() -> Iterator[bytes]:
        with reader:
            while chunk := reader.read(CHUNK):
                yield chunk

    return chunks()


def instance_body(info: InstanceInfo, target: str | None) -> tuple[Iterable[bytes], str]:
    """(body chunks, transfer syntax sent) for one instance: as stored, or transcoded."""
    stored = info.transfer_syntax
    if target in (None, AS_STORED, stored) and stored not in WEB_FORBIDDEN_TS:
        return _stored_chunks(info), stored
    if target not in (None, AS_STORED, EXPLICIT_VR_LE):
        raise NotAcceptable(f"cannot transcode {stored} to {target}")
    return _lazy(lambda: [to_explicit_le(ctx.archive().dataset(info))]), EXPLICIT_VR_LE


def _lazy(make: Callable[[], Iterable[bytes]]) -> Iterator[bytes]:
    yield from make()


def _location(info: InstanceInfo) -> str:
    return (f"{ctx.service_root()}/studies/{info.study_uid}/series/{info.series_uid}"
            f"/instances/{info.sop_uid}")


def _multipart(media_type: str, parts: Iterable[multipart.Part]) -> Response:
    content_type, body = multipart.encode(parts, media_type=media_type)
    return Response(stream_with_context(body), content_type=content_type, direct_passthrough=True)


def _check_transcodable(infos: list[InstanceInfo], offer: Offer) -> None:
    """406 before streaming when some instance cannot be sent in the chosen syntax."""
    ts = offer.transfer_syntax
    for info in infos:
        stored = info.transfer_syntax
        needs = (ts == EXPLICIT_VR_LE and stored != EXPLICIT_VR_LE) or stored in WEB_FORBIDDEN_TS
        if ts not in (AS_STORED, EXPLICIT_VR_LE) and stored != ts:
            raise NotAcceptable(f"instance {info.sop_uid} is stored as {stored}, not {ts}; "
                                "ask with transfer-syntax=*")
        if needs and not can_transcode(stored):
            raise NotAcceptable(f"instance {info.sop_uid} is stored as {stored}, which cannot be "
                                f"transcoded to {EXPLICIT_VR_LE}; ask with transfer-syntax=*")


# --------------------------------------------------------------------- study/series/instance


def _retrieve_offers(infos: list[InstanceInfo], single: bool) -> list[Offer]:
    stored = {i.transfer_syntax for i in infos}
    if single:
        ts = infos[0].transfer_syntax
        offers = [o for o in instance_offers(ts) if not o.transcode or can_transcode(ts)]
        offers += [Offer(DICOM, False, o.transfer_syntax, o.transcode) for o in list(offers)]
    else:
        offers = instance_offers(None)
        if len(stored) == 1 and not stored & WEB_FORBIDDEN_TS and EXPLICIT_VR_LE not in stored:
            offers.append(Offer(DICOM, True, next(iter(stored)), False))
    return [*offers, Offer(ZIP)]


def _retrieve(infos: list[InstanceInfo], what: str) -> Response:
    """PS3.18 10.4.1.1.1 (DICOM instances) and 8.7.3.2 (zip)."""
    offer = negotiate(_accept(), _retrieve_offers(infos, single=what == "instance"))
    if offer.media_type == ZIP:
        _check_transcodable(infos, Offer(DICOM, True, AS_STORED))
        audit_read(infos, f"{what} as zip")
        return _zip(infos)
    _check_transcodable(infos, offer)
    audit_read(infos, what)
    if not offer.multipart:
        body, ts = instance_body(infos[0], offer.transfer_syntax)
        return Response(stream_with_context(iter(body)), direct_passthrough=True,
                        content_type=offer.part_content_type(ts))

    def parts() -> Iterator[multipart.Part]:
        for info in infos:
            try:
                body, ts = instance_body(info, offer.transfer_syntax)
            except NotFound:  # its patient was shredded while this streamed (issue 13): left out
                log.info("retrieve: an instance went while the response was sent; left out")
                continue
            yield multipart.Part.make(body, offer.part_content_type(ts), _location(info))

    return _multipart(DICOM, parts())


class _Pipe:
    """An unseekable file for zipfile whose written bytes a generator drains."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.buf += data
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _zip(infos: list[InstanceInfo]) -> Response:
    """A zip of one Part 10 file per instance, streamed (zip64 data descriptors, stored)."""

    def generate() -> Iterator[bytes]:
        pipe = _Pipe()
        with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[arg-type]
            for info in infos:
                body, _ = instance_body(info, AS_STORED)
                name = f"{info.series_uid}/{info.sop_uid}.dcm"
                with zf.open(name, "w", force_zip64=True) as entry:
                    for chunk in body:
                        entry.write(chunk)
                        if len(pipe.buf) >= CHUNK:
                            yield pipe.drain()
                yield pipe.drain()
        yield pipe.drain()

    resp = Response(stream_with_context(generate()), content_type=ZIP, direct_passthrough=True)
    resp.headers["Content-Disposition"] = f'attachment; filename="{infos[0].study_uid}.zip"'
    return resp


# ---------------------------------------------------------------------------------- frames


def _frame_numbers(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5] (PS3.18 10.4.1.1.5, 1-based, duplicates kept in order)."""
    try:
        numbers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"bad frame list {text[:64]!r}: expected e.g. 1 or 1,3,5") from None
    if not numbers or len(numbers) > MAX_FRAMES_PER_REQUEST or min(numbers) < 1:
        raise BadInput(f"bad frame list {text[:64]!r}: frame numbers start at 1")
    return numbers


def _frame_reader(info: InstanceInfo) -> Callable[[int], bytes]:
    """Frame n as stored; for objects without byte-addressable frames, from the whole dataset."""
    from storage.frames import FramesUnavailable, read_frame

    archive = ctx.archive()
    try:
        index = archive.frame_index(info)

        def stored(n: int) -> bytes:  # one index lookup per request, not per frame
            with archive.open(info) as reader:
                return read_frame(reader, index, n)

        return stored
    except FramesUnavailable:
        if not is_native(info.transfer_syntax):
            raise
    ds = archive.dataset(info)
    from pydicom.pixels import pixel_array

    def native(n: int) -> bytes:
        from storage.frames import FrameNotFound

        count = int(ds.get("NumberOfFrames", 1) or 1)
        if not 1 <= n <= count:
            raise FrameNotFound(f"frame {n} not in 1..{count}")
        arr = pixel_array(ds, index=n - 1 if count > 1 else None, raw=True)
        return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()

    return native


def _frames_offers(stored: str, count: int) -> list[Offer]:
    native = is_native(stored)
    offers = frame_offers(stored, can_decode=can_transcode(stored))
    if native and stored != EXPLICIT_VR_LE:
        offers.append(Offer(OCTET_STREAM, True, stored, False))
    if count == 1:  # single part for one frame (PS3.18 8.7.3.5 Note)
        offers += [Offer(o.media_type, False, o.transfer_syntax, o.transcode) for o in list(offers)]
    return offers


def _frames(info: InstanceInfo, numbers: list[int]) -> Response:
    """PS3.18 10.4.1.1.5: frames as stored (octet-stream / bitstream media type) or decoded."""
    stored = info.transfer_syntax
    offer = negotiate(_accept(), _frames_offers(stored, len(numbers)))
    read = _frame_reader(info)
    decode = offer.transcode
    header: Dataset | None = ctx.archive().header(info) if decode else None
    sent_ts = EXPLICIT_VR_LE if decode or is_native(stored) else stored
    part_type = offer.part_content_type(sent_ts)
    location = _location(info) + "/frames/"

    def frame(n: int) -> bytes:
        data = read(n)
        if header is not None:
            try:
                return decode_frame(header, data)
            except TranscodeError as exc:
                raise NotAcceptable(str(exc)) from exc
        return data

    first = frame(numbers[0])  # errors (404, 406) before the response starts
    if not offer.multipart:
        return Response(first, content_type=part_type)
    first_part = multipart.Part.make(first, part_type, f"{location}{numbers[0]}")
    if len(numbers) == 1:  # a viewer's usual request: one body with a Content-Length, not chunked
        content_type, body = multipart.encode([first_part], media_type=offer.media_type)
        return Response(b"".join(body), content_type=content_type)

    def parts() -> Iterator[multipart.Part]:
        yield first_part
        for n in numbers[1:]:
            yield multipart.Part.make(frame(n), part_type, f"{location}{n}")

    return _multipart(offer.media_type, parts())


# -------------------------------------------------------------------------------- bulk data


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


# ------------------------------------------------------------------- rendered and thumbnail



def _render_params() -> dict[str, Any]:
    """``window``, ``viewport``, ``quality`` (PS3.18 8.3.5.1, Table 8.3.5-1); 400 when malformed.

    ``annotation`` and ``iccprofile`` are accepted and not applied (no burnt-in text: it would
    put PHI into pixels; images are sent in their own colour space).
    """
    from .render import parse_quality, parse_viewport, parse_window

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
            from .render import FrameOutOfRange

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
    from .render import render

    return render(ds, frame, media_type=media_type, **params)


def _rendered_multipart(plan: list[tuple[InstanceInfo, list[int]]], media_type: str,
                        params: dict[str, Any], skipped: int) -> Response:
    """One part per rendered frame; one instance's dataset in memory at a time."""
    from .render import RenderError

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
    from .render import parse_viewport, render, thumbnail

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


# ------------------------------------------------------------------------------- blueprint


def make_blueprint(name: str, authenticate: ctx.Authenticate, url_prefix: str) -> Blueprint:
    """The WADO-RS retrieval routes under ``url_prefix`` (e.g. ``/dicom-web``)."""
    bp = ctx.service_blueprint(name, __name__, authenticate, url_prefix)
    inst = "/studies/<study>/series/<series>/instances/<sop>"

    @bp.get("/studies/<study>")
    def study(study: str) -> Response:
        return _retrieve(instances_in_scope(study), "study")

    @bp.get("/studies/<study>/series/<series>")
    def series(study: str, series: str) -> Response:
        return _retrieve(instances_in_scope(study, series), "series")

    @bp.get(inst)
    def instance(study: str, series: str, sop: str) -> Response:
        return _retrieve(instances_in_scope(study, series, sop), "instance")

    @bp.get(inst + "/frames/<frames>")
    def frames(study: str, series: str, sop: str, frames: str) -> Response:
        numbers = _frame_numbers(frames)
        info = ctx.archive().instance(study, series, sop, scope=ctx.scope())
        resp = _frames(info, numbers)
        _audit_small_read(info, "frames", len(numbers))
        return resp

    @bp.get(inst + "/bulkdata/<path:tagpath>")
    def bulkdata(study: str, series: str, sop: str, tagpath: str) -> Response:
        return _bulkdata(ctx.archive().instance(study, series, sop, scope=ctx.scope()), tagpath)

    @bp.get("/studies/<study>/rendered")
    def study_rendered(study: str) -> Response:
        return _rendered(instances_in_scope(study), level="study")

    @bp.get("/studies/<study>/series/<series>/rendered")
    def series_rendered(study: str, series: str) -> Response:
        return _rendered(instances_in_scope(study, series), level="series")

    @bp.get(inst + "/rendered")
    def instance_rendered(study: str, series: str, sop: str) -> Response:
        return _rendered(instances_in_scope(study, series, sop))

    @bp.get(inst + "/frames/<frames>/rendered")
    def frame_rendered(study: str, series: str, sop: str, frames: str) -> Response:
        numbers = _frame_numbers(frames)
        return _rendered(instances_in_scope(study, series, sop), numbers, level="frames")

    @bp.get("/studies/<study>/thumbnail")
    def study_thumbnail(study: str) -> Response:
        return _thumbnail(instances_in_scope(study), None)

    @bp.get("/studies/<study>/series/<series>/thumbnail")
    def series_thumbnail(study: str, series: str) -> Response:
        return _thumbnail(instances_in_scope(study, series), None)

    @bp.get(inst + "/thumbnail")
    def instance_thumbnail(study: str, series: str, sop: str) -> Response:
        return _thumbnail(instances_in_scope(study, series, sop), None)

    @bp.get(inst + "/frames/<frames>/thumbnail")
    def frame_thumbnail(study: str, series: str, sop: str, frames: str) -> Response:
        numbers = _frame_numbers(frames)
        if len(numbers) != 1:
            raise BadInput("thumbnail: one frame at a time (PS3.18 10.7)")
        return _thumbnail(instances_in_scope(study, series, sop), numbers[0])

    return bp
