"""Who a patient request is: a session cookie or HTTP Basic (selector, access code) -> a Scope.

Failures map to HTTP (security.md "Patient letters"): wrong code 401 (``WWW-Authenticate: Basic``),
too many tries 429 with ``Retry-After`` (the worker never sleeps), locked 403, revoked/expired/
shredded 410, unknown selector 404.
"""

from __future__ import annotations

import base64
import binascii

from flask import Response, abort, current_app, g, request

from storage.archive import Scope
from storage.letters import (
    AccessDenied,
    Grant,
    LetterInvalid,
    Letters,
    Locked,
    Throttled,
    UnknownLetter,
    WrongCode,
)
from storage.whole_record import grant_for, held_letters

from .. import context
from .scopes import Option, pick

COOKIE = "__Host-pacs"
SESSION_ROOT = "/patient/dicom-web"


def letters() -> Letters:
    """One :class:`Letters` per app (per worker), made on first use."""
    found = current_app.extensions.get("letters")
    if found is None:
        found = current_app.extensions["letters"] = Letters(context.archive())
    return found


#: The HTTP status of each refusal (storage/letters raises them without one).
_STATUS: tuple[tuple[type[AccessDenied], int], ...] = (
    (Throttled, 429), (Locked, 403), (LetterInvalid, 410), (UnknownLetter, 404), (WrongCode, 401))


def status_of(exc: AccessDenied) -> int:
    """The HTTP status a refused letter is answered with (401 for any other refusal)."""
    return next((code for kind, code in _STATUS if isinstance(exc, kind)), 401)


def deny(exc: AccessDenied, *, basic: bool) -> Response:
    resp = Response(str(exc) + "\n", status=status_of(exc), mimetype="text/plain")
    if isinstance(exc, Throttled) and exc.retry_after:
        resp.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, WrongCode) and basic:
        resp.headers["WWW-Authenticate"] = 'Basic realm="patient letter", charset="UTF-8"'
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _basic() -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _grant(grant: Grant) -> Scope:
    g.pacs_actor = grant.actor
    g.pacs_grant = grant
    return grant.scope()


def letter_authenticate() -> Scope:
    """For ``/letters/<selector>/...``: the session of this letter, else Basic with its code."""
    selector = g.get("pacs_selector") or (request.view_args or {}).get("selector", "")
    token = request.cookies.get(COOKIE, "")
    if token:
        grant = grant_for(letters(), selector, token)  # any letter the session holds
        if grant is not None:
            return _grant(grant)
    creds = _basic()
    if creds is None:
        resp = Response("this letter needs its access code (HTTP Basic: user = the letter's "
                        "selector, password = the access code)\n", status=401, mimetype="text/plain")
        resp.headers["WWW-Authenticate"] = 'Basic realm="patient letter", charset="UTF-8"'
        abort(resp)
    user, code = creds
    if user != selector:
        abort(deny(WrongCode("failure", "the user name must be the letter's selector"), basic=True))
    try:
        grant = letters().authenticate(selector, code, context.client_address())
    except AccessDenied as exc:
        abort(deny(exc, basic=True))
    return _grant(grant)


def session_authenticate() -> Scope:
    """For ``/patient/...`` (the viewer): the browser session alone, with every letter it holds
    (the scope of the letter covering the study asked for: :mod:`.scopes`)."""
    held = held_letters(letters(), request.cookies.get(COOKIE, ""), labels=False)
    if not held:
        abort(Response("no patient session: open your letter's address first\n", status=401,
                       mimetype="text/plain"))
    scope = pick([Option(h.grant.scope(), h.grant.actor) for h in held])
    g.pacs_grant = next((h.grant for h in held if h.grant.scope() == scope), held[0].grant)
    return scope
