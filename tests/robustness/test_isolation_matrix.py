"""Isolation matrix (issue 20 part 3), generated from the Flask route table, so a new route cannot be
missed: every route and method x every caller (no credentials from outside, read / write / admin
token, a revoked token, the patient's own letter, another patient's letter, an expired letter) gets
the status the policy below expects, and no refused or foreign answer carries a patient string.

The server runs with the loopback exemption off (``PACS_OPEN_LOOPBACK=false``): every client is
treated as remote. DIMSE: an unlisted calling AE title is refused for every service an allowed one
gets (``allowed_calling_aets``).
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    Verification,
)
from sqlalchemy import update

from dicomweb.upload import CSRF_HEADER
from storage.index.models import Letter
from storage.letters import Letters
from storage.tokens import create_token, revoke_token
from tests.conftest import start_server
from tests.dicomgen import make_image

ROLES = ("none", "read", "write", "admin", "revoked", "own_letter", "other_letter", "expired_letter",
         "own_share")
TOKEN_ROLES = ("read", "write", "admin", "revoked")
LETTER_ROLES = ("own_letter", "other_letter", "expired_letter")
SHARE_ROLES = ("own_share",)  # a share of patient A's whole record, by HTTP Basic at its own selector
ALLOWED = "allowed"  # any answer but 401/403 (and never 5xx)
PUBLIC = {"healthz", "readyz", "static", "openapi.openapi"}


def _service(endpoint: str) -> str:
    return endpoint.split(".", 1)[0]


def expected(endpoint: str, method: str, role: str, has_study: bool) -> set[int] | str:
    """The policy (dicomweb/auth.py, dicomweb/patient/auth.py, security.md) as a table."""
    service = _service(endpoint)
    if endpoint in PUBLIC or service in ("viewer",):
        return ALLOWED  # no data: static pages, the description, the health check
    if role == "own_share":
        return _share_expected(endpoint, service)
    if service.startswith("patient_session") or service == "patient_viewer":
        return {401}  # a patient session cookie only; nobody here has one
    if service == "patient_pages":
        if endpoint == "patient_pages.letter":
            return {200}  # the sign-in form, with nothing of the patient on it
        if endpoint == "patient_pages.sign_out":
            return {303}  # no session to end: back to the sign-in form
        # no session, no code in the form: refused (429 once this client has failed often, 410
        # for an expired letter)
        return {400, 401, 403, 410, 429}
    if service.startswith("share_session") or service == "share_viewer":
        return {401}  # a share's cookie only (dicomweb/patient/share_door.py); nobody here has one
    if service == "share_pages":
        if endpoint == "share_pages.share_page":
            return {200}  # the share's sign-in form
        return {400, 401, 404, 429}  # the letter's selector is no share: unknown (404), counted
    if service.startswith("share_"):  # /shares/<selector>/dicom-web: a share's Basic or bearer
        return {401, 404, 429}  # nobody here holds a share; a letter's code opens no share
    if service.startswith("patient_"):  # /letters/<selector>/dicom-web: HTTP Basic with the code
        if role == "own_letter":
            return ALLOWED
        if role == "other_letter":
            return {404} if has_study else ALLOWED  # a foreign UID answers as an unknown one
        if role == "expired_letter":
            return {410}
        return {401}
    # provider services: bearer tokens by scope
    if role in ("none", "revoked", *LETTER_ROLES):
        return {401}
    need = {"GET": "read", "POST": "write", "DELETE": "admin"}[method]
    rank = ("read", "write", "admin")
    return ALLOWED if rank.index(role) >= rank.index(need) else {403}


def _share_expected(endpoint: str, service: str) -> set[int] | str:
    """A share's credentials open its own DICOMweb root and token, nothing of a letter or provider."""
    if service in ("share_pages",):
        return {200} if endpoint in ("share_pages.share_page", "share_pages.share_token") else {401}
    if service.startswith("share_session") or service == "share_viewer":
        return {401}  # the viewer's cookie only, not Basic
    if service.startswith("share_"):
        return ALLOWED
    if service == "patient_pages":  # /letters/<the share's selector>: no such letter
        return {200} if endpoint == "patient_pages.letter" else \
            {303} if endpoint == "patient_pages.sign_out" else {401, 404, 429}
    if service.startswith("patient_"):
        return {401, 404, 429}  # the letters' Basic: a share's selector is no letter
    return {401}


def test_every_route_by_every_caller(tmp_path: Path, figures) -> None:  # noqa: ANN001
    tag = generate_uid()[-10:].replace(".", "")
    people = {who: (f"ISO-{who}-{tag}", f"Iso{who}^Pat{tag}") for who in ("A", "B")}
    srv = start_server(tmp_path, PACS_OPEN_LOOPBACK="false")
    try:
        archive = srv.archive()
        try:
            uids = {}
            for who, (pid, name) in people.items():
                ds = make_image(patient_id=pid, patient_name=name, rows=8, columns=8)
                result = archive.store(_p10(ds))
                uids[who] = (result.study_uid, result.series_uid, result.sop_instance_uid,
                             result.patient_ref)
            tokens = {s: create_token(archive, f"iso-{s}-{tag}", s) for s in ("read", "write", "admin")}
            tokens["revoked"] = create_token(archive, f"iso-revoked-{tag}", "read")
            revoke_token(archive, f"iso-revoked-{tag}")
            letters = Letters(archive)
            far = datetime(2100, 1, 1)
            own = letters.issue(uids["A"][3], expires_at=far)
            other = letters.issue(uids["B"][3], expires_at=far)
            expired = letters.issue(uids["A"][3], expires_at=far)
            with archive.write_sessions.begin() as s:
                s.execute(update(Letter).where(Letter.selector == expired.selector).values(
                    expires_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)))
        finally:
            archive.close()
            from storage.shares import Shares
            from storage.whole_record import held_letters

            session = letters.open_session(letters.authenticate(own.selector, own.access_code, "x"))
            share = Shares(letters).create(held_letters(letters, session))
        letter_of = {"own_letter": own, "other_letter": other, "expired_letter": expired}

        from dicomweb import create_app
        from storage.config import load_settings

        app = create_app(load_settings(env=srv.env))
        rules, seen = [], set()
        for r in app.url_map.iter_rules():  # a rule shadowed by an earlier one of the same path
            for m in sorted(r.methods - {"HEAD", "OPTIONS"}):  # and method is never reached
                if (r.rule, m) not in seen:
                    seen.add((r.rule, m))
                    rules.append((r, m))
        app.extensions["archive"].close()

        study, series, sop, _ = uids["A"]
        secrets_of = [s for pair in people.values() for s in pair]
        outcome: Counter[str] = Counter()
        wrong: list[str] = []
        for rule, method in rules:
            for role in ROLES:
                letter = letter_of.get(role, own)
                values = {"study": study, "series": series, "sop": sop, "instance": sop,
                          "frames": "1", "tagpath": "7fe00010", "rel": "index.html",
                          "filename": "none.css", "share_id": "1",
                          "selector": share.selector if role in SHARE_ROLES else letter.selector}
                if method == "DELETE":  # never delete the fixture: an unknown study answers 404
                    values.update(study=generate_uid(), series=generate_uid(), sop=generate_uid(),
                                  instance=generate_uid())
                path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: values[m.group(1)], rule.rule)  # noqa: B023
                headers = {CSRF_HEADER: "1"}  # the upload page's own requests carry it
                if role in TOKEN_ROLES:
                    headers["Authorization"] = f"Bearer {tokens[role]}"
                elif role in SHARE_ROLES:
                    basic = base64.b64encode(f"{share.selector}:{share.access_code}".encode()).decode()
                    headers["Authorization"] = f"Basic {basic}"
                elif role in LETTER_ROLES:
                    basic = base64.b64encode(f"{letter.selector}:{letter.access_code}".encode()).decode()
                    headers["Authorization"] = f"Basic {basic}"
                r = requests.request(method, srv.http_url + path, headers=headers, timeout=60,
                                     allow_redirects=False)
                want = expected(rule.endpoint, method, role, "<study>" in rule.rule)
                ok = (r.status_code not in (401, 403) and r.status_code < 500) if want == ALLOWED \
                    else r.status_code in want
                outcome["as expected" if ok else "UNEXPECTED"] += 1
                if not ok:
                    wrong.append(f"{method} {rule.rule} as {role}: {r.status_code}, expected {want}")
                if r.status_code >= 400 or role in ("none", "revoked", "expired_letter"):
                    foreign: tuple[str, ...] = tuple(secrets_of)  # a refusal names nobody
                elif role in SHARE_ROLES:  # a share of A's record sees A only
                    foreign = people["B"]
                elif role in LETTER_ROLES:  # a letter sees its own patient only
                    foreign = people["A" if role == "other_letter" else "B"]
                else:
                    foreign = ()  # providers see every patient
                leaked = [s for s in foreign if s.encode() in r.content]
                if leaked:
                    wrong.append(f"{method} {rule.rule} as {role}: body carries a patient string")
    finally:
        srv.stop()
    assert not wrong, "\n".join(wrong[:60])
    figures(routes=len({r.rule for r, _ in rules}), route_methods=len(rules), roles=len(ROLES),
            requests=sum(outcome.values()), as_expected=outcome["as expected"])


@pytest.mark.parametrize("calling", ["ALLOWED_AE", "STRANGER"])
def test_dimse_services_by_calling_ae(tmp_path: Path, calling: str, figures) -> None:  # noqa: ANN001
    """Every presentation context the SCP supports (pacs/scp.py ``make_ae``), by calling AE title."""
    from pacs.scp import make_ae
    from storage.config import load_settings

    srv = start_server(tmp_path, PACS_ALLOWED_CALLING_AETS="ALLOWED_AE")
    services = sorted({cx.abstract_syntax for cx in make_ae(load_settings(env=srv.env)).supported_contexts})
    accepted = refused = associations = 0
    try:
        for i in range(0, len(services), 100):  # up to 128 contexts per association (PS3.8 9.3.2.2)
            ae = AE(ae_title=calling)
            for sop_class in services[i:i + 100]:
                ae.add_requested_context(sop_class)
            assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title)
            associations += 1
            if assoc.is_established:
                accepted += len({cx.abstract_syntax for cx in assoc.accepted_contexts})
                if Verification in services[i:i + 100]:
                    assert assoc.send_c_echo().Status == 0
                assoc.release()
            else:
                assert assoc.is_rejected, "refused by rejection (PS3.8 7.1.1.9), not a dropped socket"
                refused += len(services[i:i + 100])
    finally:
        srv.stop()
    if calling == "ALLOWED_AE":
        assert accepted == len(services), (accepted, len(services))
    else:
        assert accepted == 0, f"{accepted} service(s) accepted an unlisted calling AE"
    figures(calling_ae=calling, dimse_services=len(services), associations=associations,
            accepted=accepted, refused=refused)


def _p10(ds: pydicom.Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
