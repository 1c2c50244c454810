"""The patient page's whole record (issue 19 part 2): every letter of the session on one timeline.

The page at ``/letters/<selector>`` lists every study of every letter the session holds, newest
first, each labelled with the provider whose letter opened it; thumbnails, zips and notes of a
study go through the URLs of its own letter (``/letters/<its selector>/...``), so each request is
checked against that letter alone. A form adds another letter (its URL or selector, and its
access code: the letters' throttling applies); the encrypted download is the whole record, with
the passcode of any held letter or one the patient chooses (typed twice, at least
:data:`storage.whole_record.MIN_CHOSEN_PASSCODE` characters). Shares (:mod:`.sharing`) and the
access list (:mod:`.trail`) follow on the same page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import escape
from typing import Any, BinaryIO
from urllib.parse import quote

from flask import Blueprint, Response, g, redirect, request
from werkzeug.wrappers import Response as BaseResponse

from storage.errors import BadInput
from storage.export.writer import ExportFormat
from storage.letters import AccessDenied, Grant
from storage.query import Query
from storage.whole_record import (
    MIN_CHOSEN_PASSCODE,
    HeldLetter,
    add_letter,
    held_letters,
    passcode_ok,
    write_whole_record,
)

from .. import context
from .auth import COOKIE, deny, letters, status_of

_SELECTOR_IN = re.compile(r"(?:/letters/)?([A-Za-z0-9_-]{16,64})/?$")


def studies_of(patient_ref: int, study_uids: frozenset[str] | None) -> list[dict[str, Any]]:
    q = Query(level="STUDY", return_keys=["StudyInstanceUID", "StudyDate", "StudyDescription",
                                          "ModalitiesInStudy", "NumberOfStudyRelatedInstances"],
              patient_scope=patient_ref, study_scope=study_uids)
    return list(context.archive().find(q))


def held() -> list[HeldLetter]:
    """The session's letters, read once a request (the page asks for them in every section)."""
    found: list[HeldLetter] | None = g.get("pacs_held")
    if found is None:
        found = g.pacs_held = held_letters(letters(), request.cookies.get(COOKIE, ""))
    return found


def timeline(selector: str, date: Callable[..., str], notes_html: Callable[..., str]) -> str:
    """The studies of every held letter, newest first, labelled by provider."""
    from .notes import notes_about

    rows = []
    for h in held():
        base = f"/letters/{quote(h.selector)}"
        about = notes_about(context.archive(), h.grant)
        for row in studies_of(h.grant.patient_ref, h.grant.study_uids):
            rows.append((str(row.get("StudyDate") or ""), h, base, about, row))
    rows.sort(key=lambda r: r[0], reverse=True)
    items, seen = [], set()
    for _, h, base, about, row in rows:
        uid = str(row["StudyInstanceUID"])
        if uid in seen:  # two letters of one patient: listed once
            continue
        seen.add(uid)
        desc = escape(str(row.get("StudyDescription") or "Study"))
        mods = escape(str(row.get("ModalitiesInStudy") or "").replace("\\", ", "))
        n = row.get("NumberOfStudyRelatedInstances") or 0
        items.append(
            f'<li class="study" data-provider="{escape(h.provider)}">'
            f'<img src="{base}/dicom-web/studies/{quote(uid)}/thumbnail" alt="" '
            f'width="128" height="128"><strong>{date(row.get("StudyDate"))}</strong> {desc} '
            f"({mods}; {n} object{'s' if n != 1 else ''}) "
            f'<span class="provider">from {escape(h.provider)}</span><br>'
            f'<a href="/patient/viewer/viewer?StudyInstanceUIDs={quote(uid)}">View images</a> · '
            f'<a href="{base}/studies/{quote(uid)}.zip" download>Download this study (zip)</a>'
            f"{notes_html(base, about.get(uid, []))}</li>")
    return "<ul>" + "".join(items) + "</ul>" if items else "<p>No studies are stored.</p>"


def letters_held_html(selector: str) -> str:
    hs = held()
    names = ", ".join(f"{escape(h.provider)}" for h in hs)
    base = f"/letters/{quote(selector)}"
    return (f'<h2>Letters in this session</h2><p id="held">{len(hs)} letter(s): {names}</p>'
            f'<form method="post" action="{base}/add">'
            '<label for="other">Another letter: its address (or the code after /letters/)</label>'
            '<input id="other" name="letter" autocomplete="off" spellcheck="false" required>'
            '<label for="othercode">Its access code</label>'
            '<input id="othercode" name="code" autocomplete="off" autocapitalize="characters" '
            'spellcheck="false" required placeholder="XXXX-XXXX-XXXX-XXXX-XXXX">'
            '<button type="submit">Add this letter</button></form>')


def export_form(selector: str) -> str:
    base = f"/letters/{quote(selector)}"
    return ("<h2>Take everything home</h2>"
            f'<form method="post" action="{base}/record">'
            '<label for="passcode">Passcode from one of your letters (the words), or one you '
            f'choose (at least {MIN_CHOSEN_PASSCODE} characters)</label>'
            '<input id="passcode" name="passcode" type="password" autocomplete="off" required>'
            '<label for="repeat">Your chosen passcode again (leave empty for a letter\'s)</label>'
            '<input id="repeat" name="repeat" type="password" autocomplete="off">'
            '<label for="format">File type</label><select id="format" name="format">'
            '<option value="gpg">OpenPGP (.gpg: opens with gpg, GnuPG, Kleopatra)</option>'
            '<option value="age">age (.age: opens with age)</option></select>'
            '<button type="submit">Download my record, encrypted</button></form>')


def record_download(selector: str, grant: Grant, page: Callable[..., Response],
                    download: Callable[..., Response]) -> Response:
    """POST ``/letters/<selector>/record``: the whole record, encrypted."""
    typed = request.form.get("format", "gpg")
    passcode = " ".join((request.form.get("passcode") or "").split())[:500]
    repeat = " ".join((request.form.get("repeat") or "").split())[:500]
    if typed not in ("gpg", "age"):
        return page("Bad request", "<p>Unknown file type.</p>", 400)
    fmt: ExportFormat = "gpg" if typed == "gpg" else "age"
    hs = held()
    if not passcode_ok(letters(), hs, passcode, repeat):
        context.archive().audit.record("export", actor=grant.actor, source=context.client_address(),
                                       outcome="failure", patient_ref=grant.patient_ref,
                                       detail="wrong passcode")
        return page("Wrong passcode", '<p class="error">That is not the passcode printed on one of '
                    "your letters, nor a passcode of your own typed twice (at least "
                    f"{MIN_CHOSEN_PASSCODE} characters).</p>"
                    f'<p><a href="/letters/{quote(selector)}">Back</a></p>', 403)
    archive_letters, source = letters(), context.client_address()

    def write(out: BinaryIO) -> None:
        write_whole_record(archive_letters, out, hs, fmt=fmt, passcode=passcode, actor=grant.actor,
                           origin=source)

    mimetype = "application/pgp-encrypted" if fmt == "gpg" else "application/octet-stream"
    return download(write, f"medical-record.zip.{fmt}", mimetype)


def register(bp: Blueprint, selector_rule: str, current: Callable[[str], Grant | None],
             form: Callable[..., Response], page: Callable[..., Response]) -> None:
    """Add the whole-record routes to the patient pages' blueprint."""

    @bp.post(f"/{selector_rule}/add")
    def add(selector: str) -> BaseResponse:
        if current(selector) is None:
            return form(selector, "Please type your access code first.", 401)
        match = _SELECTOR_IN.search((request.form.get("letter") or "").strip()[:300])
        code = (request.form.get("code") or "")[:100]
        back = f'<p><a href="/letters/{quote(selector)}">Back to your record</a></p>'
        if match is None:
            return page("Not a letter", '<p class="error" role="alert">That is not the address '
                        f"of a letter.</p>{back}", 400)
        try:
            add_letter(letters(), request.cookies.get(COOKIE, ""), match.group(1), code,
                       context.client_address())
        except AccessDenied as exc:
            resp = page("Letter not added", f'<p class="error" role="alert">{escape(str(exc))}</p>{back}',
                        status_of(exc))
            retry = deny(exc, basic=False).headers.get("Retry-After")
            if retry:
                resp.headers["Retry-After"] = retry
            return resp
        except BadInput as exc:
            return page("Letter not added", f'<p class="error" role="alert">{escape(str(exc))}</p>{back}',
                        400)
        return redirect(f"/letters/{quote(selector)}", code=303)
