"""The patient's whole record: several letters (from several providers) held in one page session.

A page session starts with one letter (:meth:`storage.letters.Letters.open_session`). The patient
may add further letters to it, each with its own access code checked by
:meth:`~storage.letters.Letters.authenticate` (so the letters' throttling, lockout and audit apply
unchanged); the added ones are rows of ``session_letters``. What a session may see is the union of
its letters' grants, each grant still one patient record (one provider's slice) with its own
scope: nothing here widens a letter. A letter that is revoked, expired, locked or whose patient
was shredded drops out of the session at the next request; the session ends with its first letter.

The export of the whole record is one zip (PS3.10 layout) of every held record, encrypted with a
passcode printed on one of the held letters or one the patient chooses (at least
:data:`MIN_CHOSEN_PASSCODE` characters, typed twice).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from sqlalchemy import delete, select

from .errors import BadInput
from .export.writer import ExportFormat, ExportSummary
from .index.models import Letter, Patient, PatientSession
from .index.sharing_models import SessionLetter
from .letters import Grant, Letters, record_items

MAX_LETTERS = 20  # letters one session may hold
MIN_CHOSEN_PASSCODE = 16  # characters of a passcode the patient chooses


@dataclass(frozen=True)
class HeldLetter:
    """One letter of a session: its selector (for its own URLs), grant and provider's name."""

    selector: str
    grant: Grant
    provider: str


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def held_letters(letters: Letters, token: str, *, now: datetime | None = None,
                 labels: bool = True) -> list[HeldLetter]:
    """Every live letter of a live session, its own letter first; [] for no session.

    ``labels=False`` leaves the provider names empty (one query less, for authentication)."""
    from .providers import provider_names

    now = now or _now()
    first = letters.session(None, token, now=now)
    if first is None:
        return []
    archive = letters.archive
    with archive.sessions() as s:
        extra = s.execute(select(Letter).join(SessionLetter, SessionLetter.letter_id == Letter.id)
                          .where(SessionLetter.id_hash == _digest(token))
                          .order_by(SessionLetter.added_at)).scalars().all()
        rows = [s.get(Letter, first.letter_id), *extra]
        refs = {r.patient_ref for r in rows if r is not None}
        providers = dict(s.execute(select(Patient.id, Patient.provider_id).where(Patient.id.in_(refs))).all())
    names = provider_names(archive) if labels else {}
    out: list[HeldLetter] = []
    for row in rows:
        if row is None or row.patient_ref not in providers:
            continue
        if row.id != first.letter_id and (
                row.revoked_at is not None or row.locked_at is not None
                or (row.expires_at is not None and row.expires_at <= now)):
            continue
        studies = tuple(u for u in row.study_uids.split("\\") if u)
        grant = first if row.id == first.letter_id else Grant(row.id, row.patient_ref,
                                                               frozenset(studies) if studies else None)
        out.append(HeldLetter(row.selector, grant, names.get(providers[row.patient_ref], "unknown")))
    return out


def grant_for(letters: Letters, selector: str | None, token: str) -> Grant | None:
    """The grant of the session's letter with this selector (any held letter), else None."""
    if not token or len(token) > 128:
        return None
    first = letters.session(selector, token)  # the session's own letter: one query
    if first is not None:
        return first
    for held in held_letters(letters, token, labels=False):
        if selector is None or held.selector == selector:
            return held.grant
    return None


def add_letter(letters: Letters, token: str, selector: str, code: str, client: str) -> HeldLetter:
    """Check another letter's code and add it to the session; AccessDenied as for the letter alone.

    BadInput when there is no session, or the session holds :data:`MAX_LETTERS` already."""
    held = held_letters(letters, token)
    if not held:
        raise BadInput("no patient session: open one of your letters first")
    if any(h.selector == selector for h in held):
        return next(h for h in held if h.selector == selector)
    if len(held) >= MAX_LETTERS:
        raise BadInput(f"a session holds at most {MAX_LETTERS} letters")
    grant = letters.authenticate(selector, code, client)  # throttled, locked, audited as ever
    with letters.archive.write_sessions.begin() as s:
        if s.get(PatientSession, _digest(token)) is None:
            raise BadInput("the session ended")
        s.merge(SessionLetter(id_hash=_digest(token), letter_id=grant.letter_id, added_at=_now()))
    letters.archive.audit.record("letter-add", actor=grant.actor, source=client,
                                 patient_ref=grant.patient_ref,
                                 detail=f"added to the session of letter {held[0].grant.letter_id}")
    return next(h for h in held_letters(letters, token) if h.grant.letter_id == grant.letter_id)


def forget_session(letters: Letters, token: str) -> None:
    """Drop the session's added letters (with :meth:`Letters.close_session` for the session)."""
    with letters.archive.write_sessions.begin() as s:
        s.execute(delete(SessionLetter).where(SessionLetter.id_hash == _digest(token)))


def passcode_ok(letters: Letters, held: list[HeldLetter], passcode: str, repeated: str) -> bool:
    """A held letter's passcode, or one the patient chose (typed twice, long enough)."""
    if not passcode:
        return False
    if any(letters.check_passcode(h.grant.letter_id, passcode) for h in held):
        return True
    return passcode == repeated and len(passcode) >= MIN_CHOSEN_PASSCODE


def records(held: list[HeldLetter]) -> list[tuple[int, frozenset[str] | None]]:
    """(patient_ref, studies or None for all) of each record the letters hold, once each (two
    letters of one patient: the union of their scopes)."""
    out: dict[int, frozenset[str] | None] = {}
    for h in held:
        ref, studies = h.grant.patient_ref, h.grant.study_uids
        if ref in out:
            before = out[ref]
            out[ref] = None if before is None or studies is None else before | studies
        else:
            out[ref] = studies
    return list(out.items())


def write_whole_record(letters: Letters, out: BinaryIO, held: list[HeldLetter], *, fmt: ExportFormat,
                       passcode: str, actor: str, origin: str,
                       age_work_factor: int | None = None) -> ExportSummary:
    """One encrypted export of every held record; each patient record audited as exported."""
    from .export import write_export

    archive = letters.archive
    items = itertools.chain.from_iterable(
        record_items(archive, ref, studies) for ref, studies in records(held))
    try:
        if age_work_factor is None:
            summary = write_export(out, items, passcode=passcode, fmt=fmt, patient_label="Medical record")
        else:
            summary = write_export(out, items, passcode=passcode, fmt=fmt, patient_label="Medical record",
                                   age_work_factor=age_work_factor)
    except Exception:
        for h in held:
            archive.audit.record("export", actor=actor, source=origin, outcome="failure",
                                 patient_ref=h.grant.patient_ref, detail=fmt)
        raise
    for h in held:
        archive.audit.record("export", actor=actor, source=origin, patient_ref=h.grant.patient_ref,
                             detail=f"{fmt}; whole record of {len(held)} letter(s), "
                                    f"{summary.instances} instance(s) in all")
    return summary
