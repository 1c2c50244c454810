"""The doctor's side of a share (issue 19 part 3): its page, its DICOMweb root, its viewer.

* ``/shares/<selector>``: a form for the access code; then the shared studies with links to the
  viewer. The session is a ``__Host-pacs-share`` cookie (never the patient's ``__Host-pacs``), so
  nothing a share opens can reach the patient page's routes, and a share makes no shares.
* ``/shares/<selector>/dicom-web/...``: the read services (QIDO-RS, metadata, WADO-RS, WADO-URI)
  for a DICOMweb client, with HTTP Basic (user = selector, password = access code; every request
  checked and counted like a letter's) or a bearer token;
* ``POST /shares/<selector>/token`` with that Basic: ``{"access_token", "token_type": "Bearer",
  "expires_in"}`` (RFC 6750), a token for this share alone, valid an hour (never past the share);
* ``/share/dicom-web/...`` and ``/share/viewer``: the same services and OHIF for the cookie.

Refusals (storage/shares.py): unknown 404, wrong code 401, throttled 429, locked 403, expired or
revoked 410 (Basic, bearer and cookie alike); a study the share does not cover answers exactly as
an unknown one (404, or an empty search) and is audited ``share-access`` / ``not-covered``.
Everything is read-only: only GET routes (and the token and sign-in POSTs) exist here.
"""

from __future__ import annotations

import importlib
from html import escape
from urllib.parse import quote

from flask import Blueprint, Flask, Response, abort, g, jsonify, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from storage.archive import Scope
from storage.letters import AccessDenied, WrongCode
from storage.shares import ShareGrant, Shares

from .. import context
from .auth import _basic, deny, status_of
from .scopes import Option, pick

SHARE_COOKIE = "__Host-pacs-share"
SHARE_ROOT = "/shares/<selector>/dicom-web"
SHARE_SESSION_ROOT = "/share/dicom-web"
_SELECTOR = "<string(length=32):selector>"
_REALM = 'Basic realm="share", charset="UTF-8"'


def shares() -> Shares:
    from .sharing import shares as make

    return make()


def _refuse(exc: AccessDenied) -> Response:
    resp = deny(exc, basic=True)
    if isinstance(exc, WrongCode):
        resp.headers["WWW-Authenticate"] = _REALM
    return resp


def _bearer() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _grant(selector: str | None) -> ShareGrant:
    """The share grant of this request (bearer, cookie, or Basic with the code), or abort."""
    client = context.client_address()
    try:
        token = _bearer()
        if token is not None:
            grant = shares().session(selector, token, client=client)
            if grant is None:
                resp = Response("unknown or timed-out token\n", status=401, mimetype="text/plain")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="share", error="invalid_token"'
                abort(resp)
            return grant
        cookie = request.cookies.get(SHARE_COOKIE, "")
        if cookie:
            grant = shares().session(selector, cookie, client=client)
            if grant is not None:
                return grant
        creds = _basic() if selector else None
        if creds is None:
            resp = Response("this share needs its access code (HTTP Basic: user = the share's "
                            "selector, password = the access code) or a bearer token\n", status=401,
                            mimetype="text/plain")
            resp.headers["WWW-Authenticate"] = _REALM
            abort(resp)
        user, code = creds
        if user != selector:
            abort(_refuse(WrongCode("failure", "the user name must be the share's selector")))
        return shares().authenticate(selector, code, client)
    except AccessDenied as exc:
        abort(_refuse(exc))


def _scope(grant: ShareGrant) -> Scope:
    g.pacs_share = grant

    def uncovered(study: str) -> None:
        for sc in grant.scopes:
            context.archive().audit.record("share-access", actor=grant.actor,
                                           source=context.client_address(), outcome="not-covered",
                                           patient_ref=sc.patient_ref,
                                           detail="a study the share does not cover")

    return pick([Option(sc, grant.actor) for sc in grant.scopes], uncovered=uncovered)


def share_authenticate() -> Scope:
    selector = g.get("pacs_selector") or (request.view_args or {}).get("selector", "")
    return _scope(_grant(selector))


def share_session_authenticate() -> Scope:
    return _scope(_grant(None))


def _page(title: str, body: str, status: int = 200) -> Response:
    from .pages import _page as page

    return page(title, body, status)


def _form(selector: str, message: str = "", status: int = 200) -> Response:
    error = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = (f"<h1>Shared medical record</h1>{error}"
            f'<form method="post" action="/shares/{quote(selector)}">'
            '<label for="code">Access code of the share</label>'
            '<input id="code" name="code" autocomplete="off" autocapitalize="characters" '
            'spellcheck="false" required placeholder="XXXX-XXXX-XXXX-XXXX-XXXX">'
            "<button type=\"submit\">Open</button></form>")
    return _page("Shared medical record", body, status)


def _listing(selector: str, grant: ShareGrant) -> Response:
    from .record import studies_of

    rows = []
    for sc in grant.scopes:
        if sc.patient_ref is not None:  # a share's scopes each name a patient
            rows.extend(studies_of(sc.patient_ref, sc.study_uids))
    rows.sort(key=lambda r: str(r.get("StudyDate") or ""), reverse=True)
    items = [f'<li class="study"><strong>{escape(str(r.get("StudyDate") or ""))}</strong> '
             f'{escape(str(r.get("StudyDescription") or "Study"))} '
             f'<a href="/share/viewer/viewer?StudyInstanceUIDs={quote(str(r["StudyInstanceUID"]))}">'
             "View images</a></li>" for r in rows]
    root = f"{request.host_url.rstrip('/')}/shares/{quote(selector)}/dicom-web"
    body = ("<h1>Shared medical record</h1><p>Read-only, shared by the patient.</p>"
            + ("<ul>" + "".join(items) + "</ul>" if items else "<p>No studies.</p>")
            + f"<p>DICOMweb: <code>{escape(root)}</code> (HTTP Basic: the share's selector and "
            "access code, or a bearer token from <code>POST /shares/&lt;selector&gt;/token</code>)</p>")
    return _page("Shared medical record", body)


def pages_blueprint() -> Blueprint:
    bp = Blueprint("share_pages", __name__, url_prefix="/shares")

    @bp.get(f"/{_SELECTOR}")
    def share_page(selector: str) -> Response:
        cookie = request.cookies.get(SHARE_COOKIE, "")
        try:
            grant = shares().session(selector, cookie, client=context.client_address()) if cookie else None
        except AccessDenied as exc:
            return _form(selector, str(exc), status_of(exc))
        return _form(selector) if grant is None else _listing(selector, grant)

    @bp.post(f"/{_SELECTOR}")
    def share_sign_in(selector: str) -> BaseResponse:
        code = (request.form.get("code") or "")[:100]
        try:
            grant = shares().authenticate(selector, code, context.client_address())
        except AccessDenied as exc:
            resp = _form(selector, str(exc), status_of(exc))
            retry = deny(exc, basic=False).headers.get("Retry-After")
            if retry:
                resp.headers["Retry-After"] = retry
            return resp
        token, lifetime = shares().open_session(grant)
        moved = redirect(f"/shares/{quote(selector)}", code=303)
        moved.set_cookie(SHARE_COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/",
                         max_age=lifetime)
        return moved

    @bp.post(f"/{_SELECTOR}/token")
    def share_token(selector: str) -> Response:
        """A bearer token for a DICOMweb client (RFC 6750), for HTTP Basic with the share's code."""
        creds = _basic()
        if creds is None or creds[0] != selector:
            resp = Response("HTTP Basic with the share's selector and access code\n", status=401,
                            mimetype="text/plain")
            resp.headers["WWW-Authenticate"] = _REALM
            return resp
        try:
            grant = shares().authenticate(selector, creds[1], context.client_address())
        except AccessDenied as exc:
            return _refuse(exc)
        token, lifetime = shares().open_session(grant)
        resp = jsonify(access_token=token, token_type="Bearer", expires_in=lifetime)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @bp.after_request
    def _all(resp: Response) -> Response:
        from .pages import _headers

        return _headers(resp) if "Content-Security-Policy" not in resp.headers else resp

    return bp


def init_app(app: Flask, read_services: tuple[str, ...]) -> None:
    """Mount the share pages, the share's DICOMweb roots and its viewer."""
    app.register_blueprint(pages_blueprint())
    for name in read_services:
        try:
            module = importlib.import_module(f"dicomweb.{name}")
        except ModuleNotFoundError:
            continue
        app.register_blueprint(module.make_blueprint(f"share_{name}", share_authenticate, SHARE_ROOT))
        app.register_blueprint(module.make_blueprint(f"share_session_{name}", share_session_authenticate,
                                                     SHARE_SESSION_ROOT))
    from ..viewer import viewer_blueprint

    settings = app.config["PACS_SETTINGS"]
    viewer = viewer_blueprint(None, SHARE_SESSION_ROOT, "/share/viewer", name="share_viewer",
                              trust_forwarded=settings.trust_proxy_headers)

    @viewer.before_request
    def _need_share() -> None:
        share_session_authenticate()

    app.register_blueprint(viewer)
