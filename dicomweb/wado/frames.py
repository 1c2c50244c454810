"""WADO-RS frames (PS3.18 10.4.1.1.5): frame numbers, per-frame reads, transcoded frames."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flask import Response
from pydicom.dataset import Dataset

from storage.archive import InstanceInfo
from storage.errors import BadInput

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
from ..transcode import TranscodeError, can_transcode, decode_frame
from .common import (
    MAX_FRAMES_PER_REQUEST,
    _accept,
    _location,
    _multipart,
)


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
    from pydicom.pixels.utils import pixel_array

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
