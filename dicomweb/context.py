"""What a DICOMweb view needs from the request: the archive, the caller's scope, absolute URLs.

Every service blueprint is made by :func:`service_blueprint` with an *authenticate* callable run
before each request. It returns the caller's :class:`~storage.archive.Scope` (``None`` = a
cross-tenant caller who may see everything; ``provider_id`` = one provider's patients; ``patient_ref``
= one patient's letter) or aborts (401/403/404). The same read services are mounted twice: at the
provider root (``/dicom-web``) and, by the patient pages, at ``/letters/<selector>/dicom-web`` with a
patient's scope. Views call :func:`scope` and pass it to every archive call; they never decide access.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, g, request

from storage.archive import Archive, Scope
from storage.config import Settings
from storage.tenancy import ProviderRef

Authenticate = Callable[[], Scope | None]


# Flask keeps app and request state in untyped maps: each value is typed once, here.

def archive() -> Archive:
    value: Archive = current_app.extensions["archive"]
    return value


def settings() -> Settings:
    value: Settings = current_app.config["PACS_SETTINGS"]
    return value


def scope() -> Scope | None:
    """The caller's scope, set by the blueprint's authenticate hook (None: everything)."""
    value: Scope | None = g.get("pacs_scope")
    return value


def provider() -> ProviderRef | None:
    """The provider a provider's token acts for (stores land in it); None: default (a
    cross-tenant token, the loopback exemption). Issue 19, storage/tenancy.py."""
    found: ProviderRef | None = g.get("pacs_provider")
    return found


def actor() -> str:
    """Who is asking, for the audit trail (token name, 'patient:<letter id>', or 'loopback')."""
    value: str = g.get("pacs_actor", "anonymous")
    return value


def client_address() -> str:
    return request.remote_addr or ""


def service_root() -> str:
    """Absolute URL of the DICOMweb root this request came through, without trailing slash.

    Built from the request (X-Forwarded-* honoured when ``trust_proxy_headers``, via ProxyFix in
    the app factory), so BulkDataURIs and RetrieveURLs stay right behind a proxy.
    """
    root: str | None = g.get("pacs_service_root")
    if root is None:
        prefix = request.blueprint and current_app.blueprints[request.blueprint].url_prefix or ""
        if "<" in prefix:  # a patient's door: the prefix holds the request's own selector
            root = _root(_fill(prefix))
        else:  # werkzeug's URL building costs ~40 µs a request: once per scheme, host and prefix
            env = request.environ
            key = (env.get("wsgi.url_scheme"), env.get("HTTP_HOST"), env.get("SERVER_NAME"),
                   env.get("SERVER_PORT"), env.get("SCRIPT_NAME"), prefix)
            root = _ROOTS.get(key)
            if root is None:
                if len(_ROOTS) > 1000:
                    _ROOTS.clear()
                root = _ROOTS[key] = _root(prefix)
        g.pacs_service_root = root
    return root


_ROOTS: dict[tuple[object, ...], str] = {}  # request's scheme, host, script root, prefix -> root


def _root(rule_prefix: str) -> str:
    return request.host_url.rstrip("/") + request.script_root + rule_prefix.rstrip("/")


def _fill(prefix: str) -> str:
    """Substitute URL variables (e.g. <selector>) in a blueprint prefix from the request."""
    out = prefix
    values = dict(request.view_args or {})
    if g.get("pacs_selector"):  # popped from the view args by service_blueprint
        values.setdefault("selector", g.pacs_selector)
    for key, value in values.items():
        out = out.replace(f"<{key}>", str(value)).replace(f"<string:{key}>", str(value))
    return out


def service_blueprint(name: str, import_name: str, authenticate: Authenticate,
                      url_prefix: str) -> Blueprint:
    """A blueprint whose every request is authenticated first and carries the caller's scope."""
    bp = Blueprint(name, import_name, url_prefix=url_prefix)

    @bp.url_value_preprocessor
    def _keep_prefix_values(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values and "selector" in values:
            g.pacs_selector = values.pop("selector")

    @bp.before_request
    def _authenticate() -> None:
        g.pacs_scope = authenticate()

    return bp
