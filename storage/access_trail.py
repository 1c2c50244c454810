"""The audit trail a patient may read: every access to the records their session holds (issue 19
part 4), from the ``audit_events`` the archive keeps (:mod:`storage.audit`).

An event belongs to a patient's trail when it names one of the held records (``patient_ref``) or
was made with one of their letters or shares (``patient-letter:N``, ``share:N``: searches are
audited without a patient). Each access says who (which provider, which of the patient's letters,
which share), what, when, the outcome and from where, the network address cut to its /24 (IPv4)
or /48 (IPv6) so that the page does not hand out another party's exact address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select

from .archive import Archive
from .index.models import AuditEvent, Letter, Patient
from .index.sharing_models import ShareScope
from .whole_record import HeldLetter, records

MAX_EVENTS = 500
_WHAT = {
    "store": "stored", "retrieve": "read", "read-metadata": "read (metadata)", "query": "searched",
    "export": "exported", "delete": "deleted", "letter-issue": "letter issued",
    "letter-use": "opened with a letter's access code", "letter-access": "refused a letter's code",
    "letter-revoke": "letter revoked", "letter-add": "letter added to a session",
    "letter-mail": "letter mailed", "share-create": "share made", "share-revoke": "share revoked",
    "share-use": "opened with a share's access code", "share-access": "refused a share",
    "shred": "destroyed", "retention": "retention",
}
_ADDRESS = re.compile(r"\[?([0-9A-Fa-f:.]*[:.][0-9A-Fa-f:.]+)\]?")


@dataclass(frozen=True)
class Access:
    at: datetime
    who: str
    what: str
    outcome: str
    where: str
    study_uid: str


def truncate_address(source: str) -> str:
    """An IP address (with or without a port) cut to its /24 or /48 network; other text kept."""
    if not source:
        return ""
    for candidate in (source, source.rsplit(":", 1)[0], *_ADDRESS.findall(source)):
        try:
            ip = ipaddress.ip_address(candidate.strip("[]"))
        except ValueError:
            continue
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        bits = 24 if ip.version == 4 else 48
        return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
    return "" if any(c.isdigit() for c in source) and ("." in source or ":" in source) else source[:32]


def trail(archive: Archive, held: list[HeldLetter], *, limit: int = MAX_EVENTS) -> list[Access]:
    """The accesses to the held records, newest first."""
    from .providers import provider_names

    allowed = dict(records(held))  # patient_ref -> the studies the letters may see (None: all)
    refs = set(allowed)
    if not refs:
        return []
    names = provider_names(archive)
    with archive.sessions() as s:
        providers = dict(s.execute(select(Patient.id, Patient.provider_id).where(Patient.id.in_(refs))).all())
        letters = dict(s.execute(select(Letter.id, Letter.patient_ref)
                                 .where(Letter.patient_ref.in_(refs))).all())
        shares = set(s.scalars(select(ShareScope.share_id).where(ShareScope.patient_ref.in_(refs))).all())
        actors = [f"patient-letter:{i}" for i in letters] + [f"share:{i}" for i in shares]
        cond: ColumnElement[bool] = AuditEvent.patient_ref.in_(refs)
        if actors:
            cond = or_(cond, AuditEvent.actor.in_(actors))
        rows = s.scalars(select(AuditEvent).where(cond).order_by(AuditEvent.id.desc())
                         .limit(limit)).all()

    def provider_of(ref: int | None) -> str:
        return names.get(providers.get(ref, -1), "") if ref is not None else ""

    out: list[Access] = []
    for e in rows:
        if e.patient_ref is not None and e.patient_ref not in refs:
            continue  # a share's event on another patient's record it also covers
        studies = allowed.get(e.patient_ref) if e.patient_ref is not None else None
        if e.study_uid and studies is not None and e.study_uid not in studies:
            continue  # a study of this record the session's letters do not open
        if e.actor.startswith("patient-letter:"):
            lid = int(e.actor.split(":", 1)[1]) if e.actor.split(":", 1)[1].isdigit() else -1
            who = f"your letter #{lid} from {provider_of(letters.get(lid)) or 'a provider'}"
        elif e.actor.startswith("share:"):
            who = f"share #{e.actor.split(':', 1)[1]}"
        elif e.actor == "share":
            who = "someone with a share's address"
        elif e.actor == "patient-letter":
            who = "someone with a letter's address"
        else:
            who = f"provider {provider_of(e.patient_ref) or '?'}" + (f" ({e.actor})" if e.actor else "")
        what = _WHAT.get(e.action, e.action)
        if e.detail and e.action in ("retrieve", "query", "read-metadata", "export", "share-create"):
            what += f": {e.detail[:120]}"
        access = Access(e.at, who, what, e.outcome, truncate_address(e.source), e.study_uid)
        if out and out[-1] == access:
            continue  # one act audited on each record it touched (a share of two records)
        out.append(access)
    return out
