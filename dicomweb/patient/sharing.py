"""Shares on the patient page (issue 19 part 3): make one, list them, revoke one.

Only a letter session reaches these routes (``/letters/<selector>/shares...``, the letter cookie);
a share's own credentials (Basic, bearer, its cookie) are not a letter session, so a share can
never make another share. The new share's address and access code are shown once, on the answer
to the form (``Cache-Control: no-store``), and never again.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape
from urllib.parse import quote

from flask import Blueprint, Response, current_app, request

from storage.errors import BadInput, NotFound
from storage.letters import Grant
from storage.shares import Shares

from .. import context
from .auth import letters
from .record import held, studies_of


def shares() -> Shares:
    found = current_app.extensions.get("shares")
    if found is None:
        found = current_app.extensions["shares"] = Shares(letters())
    return found


def share_url(selector: str) -> str:
    """A share's page address (storage builds no URLs): ``public_url`` or this request's host."""
    return f"{(context.settings().public_url or request.host_url).rstrip('/')}/shares/{selector}"


def section(selector: str) -> str:
    """The shares part of the page: the form (studies to choose, days) and the list."""
    base = f"/letters/{quote(selector)}"
    choices = []
    for h in held():
        for row in studies_of(h.grant.patient_ref, h.grant.study_uids):
            uid = str(row["StudyInstanceUID"])
            d = str(row.get("StudyDate") or "")
            day = f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) >= 8 else "date unknown"
            label = f"{day} {row.get('StudyDescription') or 'Study'} ({h.provider})"
            choices.append(f'<label class="choice"><input type="checkbox" name="study" value="{escape(uid)}"> '
                           f"{escape(label)}</label>")
    rows = []
    for info in shares().list_for(held()):
        what = "whole record" if info.studies is None else f"{info.studies} stud(ies)"
        revoke = ""
        if info.state == "active":
            revoke = (f'<form method="post" action="{base}/shares/{info.id}/revoke" class="inline">'
                      f'<button type="submit">Revoke share #{info.id}</button></form>')
        rows.append(f'<li class="share" data-share="{info.id}">Share #{info.id}: {what}, made '
                    f"{info.created_at:%Y-%m-%d}, until {info.expires_at:%Y-%m-%d}: "
                    f'<span class="state">{info.state}</span>{revoke}</li>')
    listing = "<ul>" + "".join(rows) + "</ul>" if rows else "<p>No shares.</p>"
    days = context.settings().share_days
    return ("<h2>Share with a doctor</h2>"
            f'<form method="post" action="{base}/shares">'
            "<p>Leave every study unticked to share your whole record.</p>"
            + "".join(choices) +
            f'<label for="days">Days it lasts</label><input id="days" name="days" type="number" '
            f'min="1" max="365" value="{days}">'
            '<button type="submit">Make a share</button></form>'
            f"<h3>Your shares</h3>{listing}")


def register(bp: Blueprint, selector_rule: str, current: Callable[[str], Grant | None],
             form: Callable[..., Response], page: Callable[..., Response]) -> None:

    @bp.post(f"/{selector_rule}/shares")
    def make_share(selector: str) -> Response:
        if current(selector) is None:
            return form(selector, "Please type your access code first.", 401)
        back = f'<p><a href="/letters/{quote(selector)}">Back to your record</a></p>'
        studies = [u.strip() for u in request.form.getlist("study") if u.strip()][:500]
        try:
            days = int(request.form.get("days") or context.settings().share_days)
            issued = shares().create(held(), study_uids=studies or None, days=days,
                                     origin=context.client_address())
        except ValueError:
            return page("Not made", f'<p class="error" role="alert">Days must be a number.</p>{back}', 400)
        except BadInput as exc:
            return page("Not made", f'<p class="error" role="alert">{escape(str(exc))}</p>{back}', 400)
        except NotFound:
            return page("Not made", f'<p class="error" role="alert">No such study.</p>{back}', 404)
        body = ("<h1>Your new share</h1><p>Give the doctor this address and access code. The code "
                "is shown only now: write it down or copy it.</p>"
                f'<p>Share #<span id="share-id">{issued.share_id}</span></p>'
                f'<p>Address: <code id="share-url">{escape(share_url(issued.selector))}</code></p>'
                f'<p>Access code: <code id="share-code">{escape(issued.access_code)}</code></p>'
                f"<p>It works until {issued.expires_at:%Y-%m-%d %H:%M} UTC, unless you revoke it.</p>"
                f"{back}")
        return page("Your new share", body, 201)

    @bp.post(f"/{selector_rule}/shares/<int:share_id>/revoke")
    def revoke_share(selector: str, share_id: int) -> Response:
        if current(selector) is None:
            return form(selector, "Please type your access code first.", 401)
        back = f'<p><a href="/letters/{quote(selector)}">Back to your record</a></p>'
        try:
            shares().revoke(held(), share_id, origin=context.client_address())
        except NotFound:
            return page("Not found", f'<p class="error">No such share.</p>{back}', 404)
        return page("Share revoked", f"<p>Share #{share_id} is revoked: its address and code open "
                    f"nothing any more.</p>{back}")
