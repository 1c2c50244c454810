"""WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

Served under the DICOMweb root (``/dicom-web/wado``) and, like Orthanc and dcm4chee, at ``/wado``
outside it (added once, when the blueprint is mounted at a fixed prefix; the patient mount with a
``<selector>`` prefix gets only its own). Both run the blueprint's authenticate hook.

``contentType``: ``application/dicom`` (as stored, or Explicit VR LE with ``transferSyntax``),
``image/jpeg`` / ``image/png`` / ``image/gif`` (rendered, with ``frameNumber``, ``rows``,
``columns``, ``windowCenter``, ``windowWidth``, ``imageQuality``), or the original of a non-image
artifact (``application/pdf``, ``video/mp4``...). Absent: JPEG for images, the original for
artifacts, else DICOM (PS3.18 9.4.1.1.3). ``anonymize``, ``annotation``, ``region`` and
presentation states are not supported: 400 with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, overload

from flask import Blueprint, Response, g, request, stream_with_context

from storage.archive import InstanceInfo
from storage.errors import BadInput

from . import context as ctx
from . import wado
from .mediatypes import AS_STORED, DICOM, EXPLICIT_VR_LE, WEB_FORBIDDEN_TS, NotAcceptable
from .transcode import can_transcode

__all__ = ["make_blueprint"]

_IMAGES = ("image/jpeg", "image/png", "image/gif")
_UNSUPPORTED = ("anonymize", "annotation", "region", "presentationUID", "presentationSeriesUID")


@overload
def _param(name: str, required: Literal[True]) -> str: ...
@overload
def _param(name: str, required: bool = False) -> str | None: ...


def _param(name: str, required: bool = False) -> str | None:
    value = request.args.get(name)
    if value is not None:
        value = value.strip()
    if required and not value:
        raise BadInput(f"WADO-URI: the {name} parameter is required")
    return value or None


def _int(name: str, low: int = 1, high: int = 1 << 16) -> int | None:
    raw = _param(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise BadInput(f"WADO-URI: {name} must be an integer {low}..{high}, got {raw[:16]!r}")
    return int(raw)


def _float(name: str) -> float | None:
    raw = _param(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadInput(f"WADO-URI: {name} must be a number, got {raw[:16]!r}") from None


def _content_type(info: InstanceInfo) -> str:
    """The first supported type of ``contentType`` (a comma list, PS3.18 9.4.1.2.5), or the default."""
    original = wado.original_media_type(info)
    raw = _param("contentType")
    if raw is None:
        if info.sop_class_uid in wado.ARTIFACT_CLASSES:
            return original or DICOM
        return "image/jpeg"
    wanted = [t.split(";")[0].strip().lower() for t in raw.split(",") if t.strip()]
    for media in wanted:
        if media in (DICOM, original):
            return media
        if media in _IMAGES and info.sop_class_uid not in wado.ARTIFACT_CLASSES:
            return media
        if media in ("*/*", "image/*") and info.sop_class_uid not in wado.ARTIFACT_CLASSES:
            return "image/jpeg"
    raise NotAcceptable(f"WADO-URI: cannot send this object as {raw[:80]!r}")


def _dicom(info: InstanceInfo) -> Response:
    """The object as Part 10: as stored unless ``transferSyntax`` asks otherwise (PS3.18 9.4.1.2.9)."""
    wanted = _param("transferSyntax")
    stored = info.transfer_syntax
    if wanted in (None, "*", stored):
        target = AS_STORED
    elif wanted == EXPLICIT_VR_LE:
        if not can_transcode(stored):
            raise NotAcceptable(f"WADO-URI: cannot transcode {stored} to {wanted}")
        target = EXPLICIT_VR_LE
    else:
        raise NotAcceptable(f"WADO-URI: cannot send {stored} as {wanted[:64]}; "
                            f"available: {stored}, {EXPLICIT_VR_LE}")
    if target == AS_STORED and stored in WEB_FORBIDDEN_TS and not can_transcode(stored):
        raise NotAcceptable(f"WADO-URI: cannot send {stored} on the web")
    body, ts = wado.instance_body(info, target)
    resp = Response(stream_with_context(iter(body)), content_type=DICOM, direct_passthrough=True)
    resp.headers["Content-Disposition"] = f'attachment; filename="{info.sop_uid}.dcm"'
    return resp


def _image(info: InstanceInfo, media_type: str) -> Response:
    from .render import render

    center, width = _float("windowCenter"), _float("windowWidth")
    if (center is None) != (width is None):
        raise BadInput("WADO-URI: windowCenter and windowWidth go together")
    if width is not None and width <= 0:
        raise BadInput("WADO-URI: windowWidth must be positive")
    rows, columns = _int("rows"), _int("columns")
    viewport = None
    if rows or columns:
        viewport = (columns or 1 << 16, rows or 1 << 16)
    quality = _int("imageQuality", 1, 100) or 90
    ds = ctx.archive().dataset(info)
    data = render(ds, _int("frameNumber") or 1, media_type=media_type,
                  window=(center, width) if center is not None and width is not None else None,
                  viewport=viewport, quality=quality)
    return Response(data, content_type=media_type)


def wado_uri() -> Response:
    """PS3.18 9.4: one object, as DICOM, a rendered image or its original document."""
    request_type = _param("requestType", required=True)
    if request_type != "WADO":
        raise BadInput(f"WADO-URI: requestType must be WADO, got {request_type[:16]!r}")
    for name in _UNSUPPORTED:
        value = _param(name)
        if value is not None and not (name == "anonymize" and value.lower() == "no"):
            raise BadInput(f"WADO-URI: {name} is not supported")
    study, series = _param("studyUID", True), _param("seriesUID", True)
    sop = _param("objectUID", True)
    info = wado.instances_in_scope(study, series, sop)[0]
    media_type = _content_type(info)
    wado.audit_read([info], f"WADO-URI {media_type}")
    if media_type == DICOM:
        return _dicom(info)
    if media_type in _IMAGES:
        return _image(info, media_type)
    return wado.send_original(info)


def make_blueprint(name: str, authenticate: ctx.Authenticate, url_prefix: str) -> Blueprint:
    """The WADO-URI route at ``{url_prefix}/wado``, and at ``/wado`` for a fixed prefix."""
    bp = ctx.service_blueprint(name, __name__, authenticate, url_prefix)
    bp.add_url_rule("/wado", "wado", wado_uri, methods=["GET"])
    if "<" not in url_prefix and url_prefix.strip("/"):
        bp.record_once(lambda state: state.app.add_url_rule(
            "/wado", f"{name}_outside_root", _outside(authenticate), methods=["GET"]))
    return bp


def _outside(authenticate: ctx.Authenticate) -> Callable[[], Response]:
    """``/wado`` outside the root: the same view, authenticated the same way."""

    def view() -> Response:
        g.pacs_scope = authenticate()
        return wado_uri()

    return view
