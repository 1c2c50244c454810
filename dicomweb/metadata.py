"""WADO-RS metadata (PS3.18 10.4.1.1.2, 8.3.5; DICOM JSON per Annex F).

Series metadata comes from the per-series cache of :mod:`storage.metadata` (computed once, sealed in
the index); BulkDataURIs are kept relative there and made absolute here, per request, by one string
replacement with this request's service root (so they stay right behind a proxy and under
``/letters/<selector>/dicom-web``). Every read is audited once per request (who, which study),
off the request path (:func:`dicomweb.auth.audit_read`). Registering the blueprint starts this
process's :class:`storage.metadata.MetadataWarmer`, so caches are built before a viewer asks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState

from storage import metadata as cache

from . import context
from .auth import audit_read
from .mediatypes import metadata_offers, negotiate


def make_blueprint(name: str, authenticate: context.Authenticate, url_prefix: str) -> Blueprint:
    """Study, series and instance metadata resources (PS3.18 10.4.1.1.2) under ``url_prefix``."""
    bp = context.service_blueprint(name, __name__, authenticate, url_prefix)

    @bp.record_once
    def _warm(state: BlueprintSetupState) -> None:  # in the worker: gunicorn forks before create_app
        cache.ensure_warmer(state.app.extensions["archive"])

    @bp.get("/studies/<study>/metadata")
    def study(study: str) -> Response:
        media = _media_type()
        root = _bulk_root()
        chunks = cache.study_metadata(context.archive(), study, context.scope())
        first = next(chunks)  # runs the lookup now: NotFound becomes 404, not a broken stream
        _audit(study)
        return Response(_absolute_stream(first, chunks, root), content_type=media)

    @bp.get("/studies/<study>/series/<series>/metadata")
    def series(study: str, series: str) -> Response:
        media = _media_type()
        text = cache.series_metadata(context.archive(), study, series, context.scope())
        _audit(study)
        return Response(text.replace(cache.BULK_KEY, _bulk_root()), content_type=media)

    @bp.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
    def instance(study: str, series: str, instance: str) -> Response:
        media = _media_type()
        archive = context.archive()
        info = archive.instances(study, series, instance, scope=context.scope())[0]
        text = "[" + cache.instance_json(archive, info) + "]"
        _audit(study)
        return Response(text.replace(cache.BULK_KEY, _bulk_root()), content_type=media)

    return bp


def _media_type() -> str:
    return negotiate(request.headers.get("Accept"), metadata_offers()).media_type


def _bulk_root() -> str:
    """``"BulkDataURI":"<root>/`` with the root JSON-escaped."""
    return cache.BULK_KEY + json.dumps(context.service_root() + "/")[1:-1]


def _absolute_stream(first: str, rest: Iterator[str], replacement: str) -> Iterator[str]:
    yield first
    for chunk in rest:
        yield chunk.replace(cache.BULK_KEY, replacement)


def _audit(study_uid: str) -> None:
    audit_read("read-metadata", study_uid=study_uid, detail=request.path.rsplit("/", 1)[0][-200:])
