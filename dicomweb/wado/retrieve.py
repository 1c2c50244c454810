"""WADO-RS instance retrieval (PS3.18 10.4.1.1.1-3): studies, series, instances; and zip."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator

from flask import Response, stream_with_context

from storage.archive import InstanceInfo
from storage.errors import NotFound

from .. import multipart
from ..mediatypes import (
    AS_STORED,
    DICOM,
    EXPLICIT_VR_LE,
    WEB_FORBIDDEN_TS,
    NotAcceptable,
    Offer,
    instance_offers,
    negotiate,
)
from ..transcode import can_transcode
from .common import (
    CHUNK,
    ZIP,
    _accept,
    _location,
    _multipart,
    audit_read,
    instance_body,
)

log = logging.getLogger(__name__)


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

    def close(self) -> None:
        """Nothing to close (zipfile never closes a file it was given)."""

    def drain(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


def _zip(infos: list[InstanceInfo]) -> Response:
    """A zip of one Part 10 file per instance, streamed (zip64 data descriptors, stored)."""

    def generate() -> Iterator[bytes]:
        pipe = _Pipe()
        with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
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
