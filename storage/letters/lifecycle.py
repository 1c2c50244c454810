"""A letter's life: issue (its expiry from the retention clock), reissue, look up, list, revoke,
and forget every letter of a shredded patient.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update

from .. import secrets
from ..errors import NotFound
from ..index.models import Letter, Patient, PatientSession
from .records import IssuedLetter, LetterInfo, LetterRefused, _info, _utcnow

if TYPE_CHECKING:
    from ..archive import Archive


class Lifecycle:
    """Issue, reissue, get, list, revoke and forget letters (a part of :class:`Letters`)."""

    archive: Archive
    _secret: bytes

    def default_expiry(self, patient_ref: int) -> datetime:
        """End of retention: the day the record becomes due (storage/retention.py, its clock)."""
        from ..retention import due_date

        with self.archive.sessions() as s:
            p = s.get(Patient, patient_ref)
            if p is None:
                raise NotFound("no such patient")
            end = due_date(p.last_study_date, p.last_received_at, self.archive.settings)
        return datetime(end.year, end.month, end.day)

    def _refuse_expired(self, patient_ref: int, expires_at: datetime | None) -> datetime:
        """The expiry a new letter gets; LetterRefused if it would be expired already (issue 13)."""
        end = self.default_expiry(patient_ref)
        now = _utcnow()
        if end <= now:
            raise LetterRefused(
                f"the patient's record is past retention since {end:%Y-%m-%d} "
                f"(retention_years = {self.archive.settings.retention_years}, counted from "
                f"{_clock_words(self.archive.settings.retention_clock)}); it is shredded at the next "
                "retention run, so a letter would not open it")
        if expires_at is not None and expires_at <= now:
            raise LetterRefused(f"the expiry date {expires_at:%Y-%m-%d} is already past: "
                                "a letter that expired before it is mailed opens nothing")
        return expires_at or end

    def issue(self, patient_ref: int, *, study_uids: list[str] | None = None,
              expires_at: datetime | None = None, actor: str = "",
              origin: str = "") -> IssuedLetter:
        """Create a letter for a patient (optionally only some of their studies)."""
        studies = tuple(dict.fromkeys(study_uids or ()))
        if studies:
            for uid in studies:
                infos = self.archive.instances(study_uid=uid)
                if infos[0].patient_ref != patient_ref:
                    raise NotFound("no such study for this patient")
        expires = self._refuse_expired(patient_ref, expires_at)
        selector = secrets.new_selector()
        code = secrets.new_access_code()
        passcode = secrets.new_passcode()
        row = Letter(selector=selector, patient_ref=patient_ref,
                     code_hash=secrets.access_code_hash(self._secret, code),
                     passcode_hash=secrets.hash_passcode(passcode), study_uids="\\".join(studies),
                     created_at=_utcnow(), expires_at=expires, failures=0)
        with self.archive.write_sessions.begin() as s:
            s.add(row)
            s.flush()
            letter_id = row.id
        self.archive.audit.record("letter-issue", actor=actor, source=origin, patient_ref=patient_ref,
                                  detail=f"letter {letter_id}; {len(studies) or 'all'} stud(ies)")
        return IssuedLetter(letter_id, selector, code, passcode, patient_ref, studies, expires)

    def reissue(self, letter: int | str, *, actor: str = "",
                origin: str = "") -> IssuedLetter:
        """Revoke a letter (locked or not) and issue a new one for the same patient and studies."""
        old = self.get(letter)
        if old.expires_at is not None and old.expires_at <= _utcnow():
            raise LetterRefused(f"letter {old.id} expired on {old.expires_at:%Y-%m-%d}; a reissued "
                                "letter would expire with it. Issue a new one with `pacs letter issue`")
        self._refuse_expired(old.patient_ref, old.expires_at)  # before the old one is revoked
        self.revoke(old.id, actor=actor, origin=origin)
        return self.issue(old.patient_ref, study_uids=list(old.study_uids) or None,
                          expires_at=old.expires_at, actor=actor, origin=origin)

    def get(self, letter: int | str) -> LetterInfo:
        """A letter by id or selector."""
        with self.archive.sessions() as s:
            if isinstance(letter, int) or str(letter).isdigit():
                row = s.get(Letter, int(letter))
            else:
                row = s.scalars(select(Letter).where(Letter.selector == letter)).first()
            if row is None:
                raise NotFound("no such letter")
            return _info(row)

    def revoke(self, letter: int | str, *, actor: str = "", origin: str = "") -> LetterInfo:
        info = self.get(letter)
        with self.archive.write_sessions.begin() as s:
            s.execute(update(Letter).where(Letter.id == info.id, Letter.revoked_at.is_(None))
                      .values(revoked_at=_utcnow()))
            s.execute(delete(PatientSession).where(PatientSession.letter_id == info.id))
        self.archive.audit.record("letter-revoke", actor=actor, source=origin,
                                  patient_ref=info.patient_ref, detail=f"letter {info.id}")
        return self.get(info.id)

    def list(self, patient_ref: int | None = None) -> list[LetterInfo]:
        stmt = select(Letter).order_by(Letter.id)
        if patient_ref is not None:
            stmt = stmt.where(Letter.patient_ref == patient_ref)
        with self.archive.sessions() as s:
            return [_info(r) for r in s.scalars(stmt).all()]

    def forget_patient(self, patient_ref: int) -> int:
        """End every letter and session of a (shredded) patient; returns how many letters.

        The letters stay as revoked rows with their code and passcode hashes wiped, so a patient
        who comes back with one is told it is gone for good (410), not that it never existed."""
        with self.archive.write_sessions.begin() as s:
            ids = s.scalars(select(Letter.id).where(Letter.patient_ref == patient_ref)).all()
            if ids:
                s.execute(delete(PatientSession).where(PatientSession.letter_id.in_(ids)))
                s.execute(update(Letter).where(Letter.id.in_(ids)).values(
                    revoked_at=func.coalesce(Letter.revoked_at, _utcnow()), code_hash=b"\0" * 32,
                    passcode_hash="", study_uids=""))
        return len(ids)



def _clock_words(clock: str) -> str:
    return "the latest study date" if clock == "study_date" else \
        "the later of the latest study date and the last receipt"
