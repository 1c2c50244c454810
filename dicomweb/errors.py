"""One mapping from every domain error to an HTTP status, with the reason in the body.

Never a traceback to a client: anything unexpected is logged and answered 500 with a generic text.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from storage.errors import (
    ArchiveError,
    BadInput,
    Conflict,
    Duplicate,
    KeyUnavailable,
    NotFound,
    StorageFull,
)

from .mediatypes import NotAcceptable, UnsupportedMediaType
from .multipart import MultipartError, PayloadTooLarge

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[BaseException], int]] = [
    (NotFound, 404),
    (BadInput, 400),
    (Duplicate, 409),
    (Conflict, 409),
    (StorageFull, 507),
    (KeyUnavailable, 410),  # a shredded patient's data is gone for good
    (NotAcceptable, 406),
    (UnsupportedMediaType, 415),
    (PayloadTooLarge, 413),
    (MultipartError, 400),
]


def status_of(exc: BaseException) -> int | None:
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return code
    try:
        from storage.frames import FrameNotFound, FramesUnavailable

        from .render import FrameOutOfRange, RenderError
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, (FrameNotFound, FrameOutOfRange)):
        return 404
    if isinstance(exc, (RenderError, FramesUnavailable)):
        return 400
    return None


def error_response(code: int, reason: str) -> Response:
    """JSON for API clients, plain text otherwise; the reason is always in the body."""
    if "json" in (request.headers.get("Accept") or ""):
        resp = jsonify(error=reason, status=code)
    else:
        resp = Response(reason.rstrip() + "\n", mimetype="text/plain")
    resp.status_code = code
    return resp


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        resp = error_response(exc.code or 500, exc.description or exc.name)
        for key in ("WWW-Authenticate", "Retry-After", "Allow"):
            value = exc.get_response().headers.get(key)
            if value:
                resp.headers[key] = value
        return resp

    @app.errorhandler(Exception)
    def _any(exc: Exception) -> Response:
        code = status_of(exc)
        if code is not None:
            return error_response(code, str(exc) or type(exc).__name__)
        if isinstance(exc, ArchiveError):
            return error_response(400, str(exc))
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal error; the server log has the details")
