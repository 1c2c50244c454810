"""Serve the prebuilt OHIF v3 viewer (npm ``@ohif/app`` dist) under a URL prefix.

The dist is built for ``/``: ``index.html`` has absolute ``/...`` URLs and
``window.PUBLIC_URL="/"``, the CSS has ``url(/font.woff2)``, and every webpack/rspack
runtime (main bundle and worker bundles) hard-codes ``__webpack_require__.p = "/"``.
We rewrite those few strings at serve time (cached in memory per file, prefix and mtime),
so the same installed dist can be mounted at any prefix without rebuilding.

``app-config.js`` is generated per request with one DICOMweb data source pointing at the
absolute DICOMweb root of the request. The service worker is disabled (its precache list
uses root URLs and a PACS viewer should not cache patient data offline).

Install the dist with ``scripts/install-ohif``; without it every route answers 503.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Request, Response, request, send_file
from werkzeug.security import safe_join

__all__ = ["default_dist_dir", "ohif_config", "viewer_blueprint"]

_MIME = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".ico": "image/x-icon",
    ".png": "image/png",
    ".xml": "application/xml",
}
# rspack output names carry a 16-hex content hash: "app.bundle.<hash>.js", "<hash>.wasm".
_HASHED = re.compile(r"(^|[./])[0-9a-f]{16}\.(js|wasm|woff2|css)$")
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_REWRITE_SUFFIXES = (".html", ".css", ".js", ".json")
_SW_STUB = (
    "// Service worker disabled by the PACS: unregister any left from an earlier install.\n"
    "if ('serviceWorker' in navigator) {\n"
    "  navigator.serviceWorker.getRegistrations()\n"
    "    .then(rs => rs.forEach(r => r.unregister())).catch(() => {});\n"
    "}\n"
)
_ISOLATION_HEADERS = {
    # SharedArrayBuffer (used by cornerstone's decoders) needs a cross-origin isolated page.
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def default_dist_dir() -> Path:
    """Where ``scripts/install-ohif`` put the dist (``$PACS_OHIF_DIR/DIST``), else its default."""
    base = Path(os.environ.get("PACS_OHIF_DIR") or Path.home() / ".cache/pacs/ohif")
    record = base / "DIST"
    if record.is_file():
        text = record.read_text().strip()
        if text:
            return Path(text)
    return base / "current" / "dist"


def rewrite_for_prefix(name: str, data: bytes, public_url: str) -> bytes:
    """Rewrite root-relative URLs of one dist file so the app works under ``public_url``.

    ``public_url`` ends with ``/`` (e.g. ``/viewer/``). Files needing no change come back
    unchanged (the same object).
    """
    p = public_url.encode()
    if name.endswith(".html"):
        data = re.sub(rb'(\b(?:href|src|content)=")/(?!/)', rb"\1" + p, data)
        return data.replace(b'window.PUBLIC_URL="/"', b'window.PUBLIC_URL="' + p + b'"')
    if name.endswith(".css"):
        return re.sub(rb"url\((['\"]?)/(?!/)", rb"url(\1" + p, data)
    if name.endswith(".json"):
        return re.sub(rb'("(?:src|start_url|scope)":\s*")/(?!/)', rb"\1" + p, data)
    if name.endswith(".js"):
        data = data.replace(
            b'__webpack_require__.p = "/";', b'__webpack_require__.p = "' + p + b'";'
        )
        return data.replace(b"'/dicom-microscopy-viewer/", b"'" + p + b"dicom-microscopy-viewer/")
    return data


@dataclass(frozen=True)
class _Rewritten:
    data: bytes
    etag: str


class _RewriteCache:
    """Rewritten file contents keyed by (path, prefix); ``None`` marks "serve as is".

    Least recently used entries are dropped beyond ``max_bytes`` (each prefix costs one
    copy of the ~17 MB main bundle).
    """

    def __init__(self, max_bytes: int = 128 << 20) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[tuple[int, int], _Rewritten | None]]
        self._items = OrderedDict()
        self._max_bytes = max_bytes

    def get(self, path: str, public_url: str) -> _Rewritten | None:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
        key = (path, public_url)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] == stamp:
                self._items.move_to_end(key)
                return hit[1]
        raw = Path(path).read_bytes()
        new = rewrite_for_prefix(path, raw, public_url)
        value = None
        if new is not raw and new != raw:
            value = _Rewritten(new, hashlib.sha256(new).hexdigest()[:32])
        with self._lock:
            self._items[key] = (stamp, value)
            self._items.move_to_end(key)
            self._evict()
        return value

    def _evict(self) -> None:
        total = sum(len(v[1].data) for v in self._items.values() if v[1] is not None)
        while total > self._max_bytes and len(self._items) > 1:
            _, (_, old) = self._items.popitem(last=False)
            total -= len(old.data) if old is not None else 0


def _first(value: str | None) -> str | None:
    """First item of a comma-separated forwarded header, stripped."""
    if not value:
        return None
    return value.split(",")[0].strip() or None


_SAFE_PROTO = re.compile(r"^https?$")
_SAFE_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_SAFE_PREFIX = re.compile(r"^(?:/[A-Za-z0-9._~-]+)*$")


def request_origin(req: Request, trust_forwarded: bool) -> tuple[str, str]:
    """``(origin, forwarded_prefix)`` of a request.

    X-Forwarded-Proto/Host/Prefix are used only if ``trust_forwarded``, and only when they
    look like a scheme, a host[:port] and a plain path (they end up in HTML and JS).
    """
    scheme, host, prefix = req.scheme, req.host, ""
    if trust_forwarded:
        fwd_proto = _first(req.headers.get("X-Forwarded-Proto"))
        fwd_host = _first(req.headers.get("X-Forwarded-Host"))
        fwd_prefix = (_first(req.headers.get("X-Forwarded-Prefix")) or "").rstrip("/")
        if fwd_proto and _SAFE_PROTO.match(fwd_proto):
            scheme = fwd_proto
        if fwd_host and _SAFE_HOST.match(fwd_host):
            host = fwd_host
        if _SAFE_PREFIX.match(fwd_prefix):
            prefix = fwd_prefix
    return f"{scheme}://{host}", prefix


def ohif_config(dicomweb_url: str, router_basename: str) -> dict[str, Any]:
    """The OHIF ``window.config``: one DICOMweb data source, no external hosts."""
    return {
        "routerBasename": router_basename,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 75, "prefetch": 25},
        "showErrorDetails": "production",
        "defaultDataSourceName": "dicomweb",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "dicomweb",
                "configuration": {
                    "friendlyName": "PACS",
                    "name": "pacs",
                    "qidoRoot": dicomweb_url,
                    "wadoRoot": dicomweb_url,
                    "wadoUriRoot": dicomweb_url,
                    "qidoSupportsIncludeField": True,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "omitQuotationForMultipartRequest": True,
                    "bulkDataURI": {"enabled": True},
                },
            }
        ],
    }


def _mimetype(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    return _MIME.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def viewer_blueprint(
    dist_dir: Path | None,
    dicomweb_root: str = "/dicom-web",
    url_prefix: str = "/viewer",
    *,
    trust_forwarded: bool = False,
    config_overrides: Mapping[str, Any] | None = None,
    name: str = "viewer",
) -> Blueprint:
    """Blueprint serving OHIF from ``dist_dir`` at ``url_prefix``.

    ``dicomweb_root`` is a path on this host (made absolute from each request) or an
    absolute URL. ``trust_forwarded`` lets X-Forwarded-Proto/Host/Prefix shape the URLs
    handed to the browser; enable it only behind a proxy that sets them.
    ``config_overrides`` are merged (top level) into the generated OHIF ``window.config``,
    e.g. ``{"investigationalUseDialog": {"option": "never"}}``.
    """
    dist = Path(dist_dir) if dist_dir is not None else default_dist_dir()
    prefix = "/" + url_prefix.strip("/")
    bp = Blueprint(name, __name__, url_prefix=prefix)
    cache = _RewriteCache()

    def public_url() -> str:
        return request_origin(request, trust_forwarded)[1] + prefix + "/"

    def installed() -> bool:
        return (dist / "index.html").is_file()

    def not_installed() -> Response:
        text = (
            "The OHIF viewer is not installed.\n"
            f"Run scripts/install-ohif (expected its dist at {dist}).\n"
        )
        return Response(text, 503, mimetype="text/plain", headers={"Retry-After": "3600"})

    def serve_file(rel: str) -> Response:
        full = safe_join(str(dist), rel)
        if full is None or not os.path.isfile(full):
            return Response("Not found\n", 404, mimetype="text/plain")
        mime = _mimetype(full)
        hashed = bool(_HASHED.search(rel))
        if full.endswith(_REWRITE_SUFFIXES):
            new = cache.get(full, public_url())
            if new is not None:
                resp = Response(new.data, mimetype=mime)
                resp.set_etag(new.etag)
                resp.headers["Cache-Control"] = _IMMUTABLE if hashed else _REVALIDATE
                resp.make_conditional(request)  # in place (it returns the same response)
                return resp
        resp = send_file(full, mimetype=mime, conditional=True, etag=True, max_age=None)
        resp.headers["Cache-Control"] = _IMMUTABLE if hashed else _REVALIDATE
        return resp

    @bp.after_request
    def add_headers(resp: Response) -> Response:
        for key, value in _ISOLATION_HEADERS.items():
            resp.headers.setdefault(key, value)
        return resp

    @bp.get("/")
    def index() -> Response:
        return serve_file("index.html") if installed() else not_installed()

    @bp.get("/app-config.js")
    def app_config() -> Response:
        if not installed():
            return not_installed()
        origin, fwd_prefix = request_origin(request, trust_forwarded)
        root = dicomweb_root.rstrip("/")
        if not re.match(r"^https?://", root):
            root = origin + fwd_prefix + "/" + root.lstrip("/")
        config = {**ohif_config(root, public_url()), **(config_overrides or {})}
        body = f"window.config = {json.dumps(config, indent=2)};\n"
        resp = Response(body, mimetype="text/javascript")
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.get("/init-service-worker.js")
    def service_worker_stub() -> Response:
        resp = Response(_SW_STUB, mimetype="text/javascript")
        resp.headers["Cache-Control"] = _REVALIDATE
        return resp

    @bp.get("/sw.js")
    def no_service_worker() -> Response:
        return Response("Not found\n", 404, mimetype="text/plain")

    @bp.get("/<path:rel>")
    def asset(rel: str) -> Response:
        if not installed():
            return not_installed()
        last = rel.rsplit("/", 1)[-1]
        full = safe_join(str(dist), rel)
        if full is not None and os.path.isfile(full):
            return serve_file(rel)
        if "." not in last:
            # A client-side route (/viewer/viewer?StudyInstanceUIDs=..., /viewer/local, ...).
            return serve_file("index.html")
        return Response("Not found\n", 404, mimetype="text/plain")

    return bp
