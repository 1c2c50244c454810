"""WADO-RS retrieval (PS3.18 10.4): instances, frames, bulk data, rendered, thumbnails, zip.

Handlers are thin: parse the path, negotiate (PS3.18 8.7 via :mod:`dicomweb.mediatypes`), ask the
archive with the caller's scope, format. Study and series responses are generators: one instance
at a time, each streamed from :meth:`storage.Archive.open` in 1 MiB chunks, so a study is never in
memory. Objects stored in a transfer syntax the web may not carry (Implicit VR LE, Explicit VR BE,
PS3.18 8.7.3) or not the one asked for are transcoded to Explicit VR LE one at a time.

Every read is audited without a commit on the request path: instances, bulk data and rendered
images as one event per request, frames and thumbnails counted per caller, series and minute
(:mod:`dicomweb.auth`'s background writer).

One module per service: :mod:`.retrieve` (instances, series, studies, zip), :mod:`.frames`,
:mod:`.bulkdata` (and originals), :mod:`.rendered` (rendered and thumbnails); :mod:`.common`
holds what they share. This module registers their routes on the blueprint.
"""

from __future__ import annotations

from flask import Blueprint, Response

from storage.errors import BadInput

from .. import context as ctx
from .bulkdata import _bulkdata, original_media_type, send_original
from .common import (
    ARTIFACT_CLASSES,
    _audit_small_read,
    audit_read,
    instance_body,
    instances_in_scope,
)
from .frames import _frame_numbers, _frames
from .rendered import _rendered, _thumbnail
from .retrieve import _retrieve

__all__ = ["ARTIFACT_CLASSES", "audit_read", "instance_body", "instances_in_scope", "make_blueprint",
           "original_media_type", "send_original"]


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
