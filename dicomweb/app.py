"""The app factory: settings, the archive in ``app.extensions``, one blueprint per service.

Registration contract (every service module):

    make_blueprint(name: str, authenticate: dicomweb.context.Authenticate, url_prefix: str) -> Blueprint

built with :func:`dicomweb.context.service_blueprint`. The *authenticate* callable returns the
caller's :class:`storage.archive.Scope` (None = provider) or aborts; views pass
:func:`dicomweb.context.scope` to every archive call. Here the read services (qido, metadata, wado,
wadouri) and the write services (stow, delete) are mounted at ``settings.dicomweb_root`` with the
provider authenticator (:func:`dicomweb.auth.provider_authenticate`); write views check their scope
themselves with :func:`dicomweb.auth.require_scope`. The upload page is at ``/upload``, OHIF at
``/viewer``. ``dicomweb.patient.init_app(app)`` mounts the read services again for patients
(``/letters/<selector>/dicom-web``) with a patient-scoped authenticator.

No access log: URLs carry query keys (names, IDs) that are PHI. Gunicorn runs without
``--access-logfile``; werkzeug's request log is silenced for the development server.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from storage.archive import Archive
from storage.config import Settings, load_settings

from . import auth, errors
from .spooling import SpoolingRequest

log = logging.getLogger(__name__)
READ_SERVICES = ("qido", "metadata", "wado", "wadouri")
WRITE_SERVICES = ("stow", "delete")
CORS_METHODS = "GET, POST, DELETE, OPTIONS"
CORS_EXPOSE = "Content-Type, Content-Length, Content-Location, Location, Warning, WWW-Authenticate"
CORS_MAX_AGE = "600"


def create_app(settings: Settings | None = None, archive: Archive | None = None) -> Flask:
    """The DICOMweb application (one per gunicorn worker: the archive opens after the fork)."""
    settings = settings or load_settings()
    app = Flask(__name__)
    app.request_class = SpoolingRequest  # uploaded files spooled encrypted
    app.config["PACS_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.extensions["archive"] = archive or Archive(settings)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    # Wrapping app.wsgi_app is Flask's documented way to add WSGI middleware (a method to mypy).
    if not settings.trust_proxy_headers:
        app.wsgi_app = HostPort(app.wsgi_app)  # type: ignore[method-assign]
    else:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1,  # type: ignore[method-assign]
                                x_prefix=1)
    errors.register(app)
    _cors(app, settings.cors_origins)
    if settings.http_tls:  # served over TLS by gunicorn itself: browsers keep to https (RFC 6797)
        hsts = f"max-age={settings.hsts_max_age}"
        app.after_request(lambda resp: (resp.headers.setdefault("Strict-Transport-Security", hsts), resp)[1])

    root = "/" + settings.dicomweb_root.strip("/")
    for name in (*READ_SERVICES, *WRITE_SERVICES):
        module = importlib.import_module(f"dicomweb.{name}")
        app.register_blueprint(module.make_blueprint(name, auth.provider_authenticate, root))
    from .openapi import make_blueprint as openapi_blueprint

    app.register_blueprint(openapi_blueprint("openapi", root))  # the description of these routes
    upload = importlib.import_module("dicomweb.upload")
    app.register_blueprint(upload.make_blueprint("upload", auth.provider_authenticate, "/upload"))

    from .viewer import viewer_blueprint

    app.register_blueprint(viewer_blueprint(None, root, "/viewer",
                                            trust_forwarded=settings.trust_proxy_headers))
    _patient_pages(app)

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        """The process is up (a load balancer's liveness check)."""
        return "ok\n", 200

    _metrics(app)

    @app.get("/readyz")
    def readyz() -> tuple[dict[str, str], int]:
        """The index and the blob store answer (readiness): 200, or 503 naming what does not."""
        from storage.health import readiness, ready

        checks = readiness(app.extensions["archive"])
        return checks, 200 if ready(checks) else 503

    return app


def _metrics(app: Flask) -> None:
    """Count every request by service (blueprint) and status class; serve ``/metrics``.

    ``/metrics`` takes the provider credentials of the DICOMweb services (open from this machine
    in the embedded default, else any API token): request volumes are not patient data, but they
    are the site's business.
    """
    import time

    from flask import g

    from storage import metrics

    @app.before_request
    def _started() -> None:
        g.pacs_started = time.perf_counter()

    @app.after_request
    def _counted(resp: Response) -> Response:
        started = g.get("pacs_started")
        if started is not None:
            metrics.http_request(request.blueprint or request.endpoint or "none",
                                 f"{resp.status_code // 100}xx", time.perf_counter() - started)
        return resp

    @app.get("/metrics")
    def metrics_view() -> Response:
        auth.provider_authenticate()
        archive = app.extensions["archive"]
        status = getattr(archive.blobs, "status", None)
        body, content_type = metrics.exposition(status() if callable(status) else None,
                                                _audit_backlog(archive))
        return Response(body, mimetype=content_type.split(";")[0],
                        content_type=content_type)


def _audit_backlog(archive: Any) -> dict[str, float] | None:
    """What waits for the audit record repository, when one is set (storage/atna/queue.py)."""
    if not archive.settings.audit_repository:
        return None
    from storage.atna.queue import backlog
    from storage.atna.target import parse

    return backlog(archive.sessions, parse(archive.settings.audit_repository).name)


class HostPort:
    """WSGI middleware: a ``Host`` header without a port gets the port the request really came to.

    dicomweb-client sends ``Host: 127.0.0.1`` (no port) to a server on another port, which would put
    a wrong port into every RetrieveURL and BulkDataURI. Without a trusted proxy the connection's own
    port (``SERVER_PORT``, from the listening socket under gunicorn) is the authoritative one.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        host = environ.get("HTTP_HOST", "")
        port = str(environ.get("SERVER_PORT", ""))
        default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
        if host and port.isdigit() and port != default and not _has_port(host):
            environ["HTTP_HOST"] = f"{host}:{port}"
        return self.app(environ, start_response)


def _has_port(host: str) -> bool:
    return host.rsplit("]", 1)[-1].count(":") == 1 if host.startswith("[") else ":" in host


def _patient_pages(app: Flask) -> None:
    """Mount the patient door if ``dicomweb.patient`` exists. If it fails to load, the provider
    services still start and the patient routes stay absent (closed), with the error logged."""
    try:
        patient = importlib.import_module("dicomweb.patient")
    except ModuleNotFoundError as exc:
        if exc.name == "dicomweb.patient":
            return
        log.exception("patient pages not mounted: dicomweb.patient cannot be imported")
        return
    try:
        patient.init_app(app)
    except Exception:  # closed rather than down; loud in the log
        log.exception("patient pages not mounted: dicomweb.patient.init_app failed")


def _cors(app: Flask, origins: Iterable[str]) -> None:
    """CORS for browser viewers served from another origin (Fetch standard; off when no origins)."""
    allowed = {o.rstrip("/") for o in origins}
    if not allowed:
        return
    any_origin = "*" in allowed

    def origin_ok() -> str | None:
        origin = request.headers.get("Origin")
        if origin and (any_origin or origin.rstrip("/") in allowed):
            return origin
        return None

    @app.before_request
    def _preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = origin_ok()
        if origin is None:
            return Response("origin not allowed\n", status=403, mimetype="text/plain")
        resp = Response(status=204)
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        wanted = request.headers.get("Access-Control-Request-Headers")
        resp.headers["Access-Control-Allow-Headers"] = wanted or "Authorization, Accept, Content-Type"
        resp.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
        resp.headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        return resp

    @app.after_request
    def _headers(resp: Response) -> Response:
        origin = origin_ok()
        if origin is not None and "Access-Control-Allow-Origin" not in resp.headers:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
            resp.vary.add("Origin")
        return resp
