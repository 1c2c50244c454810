"""The patient page: ``/letters/<selector>`` (issue 6 part 2; security.md "Patient letters").

Plain HTML that works without JavaScript (and so on any phone): a form for the access code; then
the record — studies with dates, descriptions, modalities and thumbnails (scoped WADO-RS
``/thumbnail``), a link to the viewer restricted to this patient, a zip per study (PS3.10 media
layout with DICOMDIR) and the whole record encrypted with the letter's passcode (gpg or age).

Sessions are server-side rows (:class:`storage.letters.Letters`): the ``__Host-pacs`` cookie holds
a random id (Secure, HttpOnly, SameSite=Strict, Path=/), the index keeps its SHA-256 and an expiry,
so every worker sees it and revoking a letter ends its sessions. Every answer carries
``Cache-Control: no-store``, ``Referrer-Policy: no-referrer``, ``X-Frame-Options: DENY`` and a CSP
allowing only this origin (styles by nonce, no scripts).
"""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable, Iterator
from html import escape
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from flask import Blueprint, Response, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from storage.errors import NotFound
from storage.export.record import write_record
from storage.letters import AccessDenied, Grant
from storage.whole_record import forget_session, grant_for

from .. import context
from .auth import COOKIE, deny, letters, status_of

if TYPE_CHECKING:
    from .notes import Note

# Flask's redirect is typed as returning werkzeug's Response (it makes the app's response class).
_R = TypeVar("_R", bound=BaseResponse)

_SELECTOR = "<string(length=32):selector>"
_STYLE = """body{font-family:system-ui,sans-serif;max-width:46rem;margin:1rem auto;padding:0 1rem;
line-height:1.5;color:#111}label,input,select,button{font-size:1.1rem}input{width:100%;padding:.5rem;
box-sizing:border-box}button{padding:.5rem 1rem;margin:.5rem 0}li{margin:1rem 0;list-style:none}
img{max-width:128px;height:auto;vertical-align:middle;margin-right:1rem;background:#000}
.error{color:#a00;font-weight:bold}ul{padding:0}li.note{margin:.3rem 0 .3rem 1rem;
white-space:pre-wrap}.choice{display:block}.choice input{width:auto}form.inline{display:inline}
.provider{color:#555}table{border-collapse:collapse;font-size:.9rem}td,th{padding:.2rem .4rem;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"""


def _headers(resp: _R, nonce: str = "") -> _R:
    style = f"'nonce-{nonce}'" if nonce else "'none'"
    resp.headers["Content-Security-Policy"] = (
        f"default-src 'none'; img-src 'self'; style-src {style}; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


def _page(title: str, body: str, status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(16)
    html = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style nonce=\"{nonce}\">{_STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>")
    return _headers(Response(html, status=status, mimetype="text/html"), nonce)


def _form(selector: str, message: str = "", status: int = 200) -> Response:
    error = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = (f"<h1>Your medical record</h1>{error}"
            f'<form method="post" action="/letters/{quote(selector)}">'
            '<label for="code">Access code from your letter</label>'
            '<input id="code" name="code" autocomplete="off" autocapitalize="characters" '
            'spellcheck="false" required placeholder="XXXX-XXXX-XXXX-XXXX-XXXX">'
            "<button type=\"submit\">Open</button></form>")
    return _page("Your medical record", body, status)


def _current(selector: str) -> Grant | None:
    """The grant of this letter if the session holds it (first or added: storage/whole_record.py)."""
    return grant_for(letters(), selector, request.cookies.get(COOKIE, ""))


def _date(value: str | None) -> str:
    v = value or ""
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) >= 8 else "date unknown"


def _notes(base: str, notes: list[Note]) -> str:
    """The artifacts about one study (see :mod:`.notes`), as a list under it."""
    if not notes:
        return ""
    items = []
    for n in notes:
        i = n.info
        href = (f"{base}/dicom-web/studies/{quote(i.study_uid)}/series/{quote(i.series_uid)}"
                f"/instances/{quote(i.sop_uid)}/rendered")
        text = escape(n.text[:1000] + ("…" if len(n.text) > 1000 else ""))
        items.append(f'<li class="note"><strong>{escape(n.kind)}</strong> {escape(n.title)}'
                     f'{"<br>" + text if text else ""} <a href="{href}">open</a></li>')
    return '<ul class="notes">' + "".join(items) + "</ul>"


def _record(selector: str, grant: Grant) -> Response:
    """The whole record of the session (every letter it holds: :mod:`.record`), shares, accesses."""
    from . import record, sharing, trail

    base = f"/letters/{quote(selector)}"
    body = (f"<h1>Your medical record</h1><h2>Studies and documents</h2>"
            f"{record.timeline(selector, _date, _notes)}{record.letters_held_html(selector)}"
            f"{record.export_form(selector)}{sharing.section(selector)}{trail.section()}"
            f'<form method="post" action="{base}/logout"><button type="submit">Sign out</button></form>')
    return _page("Your medical record", body)


def _stream(write: Callable[[Any], None], chunk_queue_size: int = 8) -> Iterator[bytes]:
    """Run ``write(out)`` in a thread; yield what it writes (bounded queue: never the whole file)."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(chunk_queue_size)
    stop = threading.Event()

    class Out:
        def write(self, data: bytes) -> int:
            if stop.is_set():
                raise BrokenPipeError("client went away")
            if data:
                q.put(bytes(data))
            return len(data)

        def flush(self) -> None:
            pass

    def run() -> None:
        try:
            write(Out())
            q.put(None)
        except BaseException as exc:  # handed to the response generator
            q.put(exc)

    thread = threading.Thread(target=run, name="patient-export", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                return  # the encrypted stream stays without its trailer: it will not decrypt
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def _download(grant: Grant, filename: str, mimetype: str, fmt: str, passcode: str | None,
              studies: frozenset[str] | None) -> Response:
    archive = context.archive()
    source = context.client_address()

    def write(out: Any) -> None:  # the export stream of _stream
        write_record(archive, out, grant.patient_ref, fmt=fmt, passcode=passcode, study_uids=studies,
                     actor=grant.actor, origin=source)

    resp = Response(_stream(write), mimetype=mimetype)
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return _headers(resp)


def blueprint() -> Blueprint:
    bp = Blueprint("patient_pages", __name__, url_prefix="/letters")

    @bp.get(f"/{_SELECTOR}")
    def letter(selector: str) -> Response:
        grant = _current(selector)
        if grant is None:
            return _form(selector)
        return _record(selector, grant)

    @bp.post(f"/{_SELECTOR}")
    def sign_in(selector: str) -> BaseResponse:
        code = (request.form.get("code") or "")[:100]
        try:
            grant = letters().authenticate(selector, code, context.client_address())
        except AccessDenied as exc:
            resp = _form(selector, str(exc), status_of(exc))
            retry = deny(exc, basic=False).headers.get("Retry-After")
            if retry:
                resp.headers["Retry-After"] = retry
            return resp
        token = letters().open_session(grant)
        moved = redirect(f"/letters/{quote(selector)}", code=303)
        moved.set_cookie(COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/",
                        max_age=1800)
        return _headers(moved)

    @bp.post(f"/{_SELECTOR}/logout")
    def sign_out(selector: str) -> BaseResponse:
        token = request.cookies.get(COOKIE, "")
        if token:
            forget_session(letters(), token)
            letters().close_session(token)
        resp = redirect(f"/letters/{quote(selector)}", code=303)
        resp.delete_cookie(COOKIE, secure=True, httponly=True, samesite="Strict", path="/")
        return _headers(resp)

    @bp.get(f"/{_SELECTOR}/studies/<study>.zip")
    def study_zip(selector: str, study: str) -> Response:
        grant = _current(selector)
        if grant is None:
            return _form(selector, "Please type your access code first.", 401)
        if grant.study_uids is not None and study not in grant.study_uids:
            raise NotFound("no such study")
        context.archive().instances(study_uid=study, scope=grant.scope())  # 404 if not theirs
        return _download(grant, "study.zip", "application/zip", "zip", None, frozenset([study]))

    @bp.post(f"/{_SELECTOR}/record")
    def record(selector: str) -> Response:
        from .record import record_download

        grant = _current(selector)
        if grant is None:
            return _form(selector, "Please type your access code first.", 401)

        def download(write: Callable[[Any], None], filename: str, mimetype: str) -> Response:
            resp = Response(_stream(write), mimetype=mimetype)
            resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
            return _headers(resp)

        return record_download(selector, grant, _page, download)

    from . import record as whole
    from . import sharing

    whole.register(bp, _SELECTOR, _current, _form, _page)
    sharing.register(bp, _SELECTOR, _current, _form, _page)

    @bp.after_request
    def _all(resp: Response) -> Response:
        return _headers(resp) if "Content-Security-Policy" not in resp.headers else resp

    return bp

