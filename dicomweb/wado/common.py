"""What every WADO-RS service shares: the caller's instances, the read audit, stored bytes, multipart."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from flask import Response, request, stream_with_context

from storage import artifact_classes
from storage.archive import InstanceInfo

from .. import auth, multipart
from .. import context as ctx
from ..mediatypes import (
    AS_STORED,
    EXPLICIT_VR_LE,
    WEB_FORBIDDEN_TS,
    NotAcceptable,
)
from ..transcode import to_explicit_le

CHUNK = 1 << 20
MAX_FRAMES_PER_REQUEST = 10_000
ZIP = "application/zip"
#: Artifacts that are not images, by SOP class: the media type their original comes back as.
ARTIFACT_CLASSES = artifact_classes.NOT_IMAGES


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
