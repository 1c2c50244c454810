"""Patient sessions: server-side rows (a random 256-bit id in the cookie, its SHA-256 in the index,
a fixed expiry), so a session can be ended and every worker sees it.
"""

from __future__ import annotations

import hashlib
import secrets as pysecrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from .. import secrets
from ..index.models import Letter, Patient, PatientSession
from .records import Grant, _studies, _utcnow

if TYPE_CHECKING:
    from ..archive import Archive


SESSION_LIFETIME = timedelta(minutes=30)


class Sessions:
    """Server-side sessions of a grant, and the export passcode check (a part of :class:`Letters`)."""

    archive: Archive

    def open_session(self, grant: Grant, *, now: datetime | None = None) -> str:
        """A new session for a grant: returns the random id for the cookie (kept hashed)."""
        now = now or _utcnow()
        token = pysecrets.token_urlsafe(32)
        with self.archive.write_sessions.begin() as s:
            s.execute(delete(PatientSession).where(PatientSession.expires_at < now))
            s.add(PatientSession(id_hash=hashlib.sha256(token.encode()).digest(), letter_id=grant.letter_id,
                                 created_at=now, expires_at=now + SESSION_LIFETIME))
        return token

    def session(self, selector: str | None, token: str, *, now: datetime | None = None) -> Grant | None:
        """The grant of a live session (of this letter, if a selector is given), or None when the
        session or its letter expired, was revoked or locked, or the patient was shredded."""
        now = now or _utcnow()
        if not token or len(token) > 128:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        with self.archive.sessions() as s:
            row = s.execute(select(PatientSession, Letter)
                            .join(Letter, Letter.id == PatientSession.letter_id)
                            .where(PatientSession.id_hash == digest)).first()
            if row is None:
                return None
            sess, letter = row
            if ((selector is not None and letter.selector != selector) or sess.expires_at <= now or letter.revoked_at is not None
                    or letter.locked_at is not None
                    or (letter.expires_at is not None and letter.expires_at <= now)
                    or s.get(Patient, letter.patient_ref) is None):
                return None
            studies = _studies(letter.study_uids)
            return Grant(letter.id, letter.patient_ref, frozenset(studies) if studies else None)

    def close_session(self, token: str) -> None:
        with self.archive.write_sessions.begin() as s:
            s.execute(delete(PatientSession).where(
                PatientSession.id_hash == hashlib.sha256(token.encode()).digest()))

    def check_passcode(self, letter_id: int, passcode: str) -> bool:
        """Whether a typed passcode is this letter's (Argon2id verify)."""
        with self.archive.sessions() as s:
            row = s.get(Letter, letter_id)
            return bool(row and row.passcode_hash) and secrets.verify_passcode(row.passcode_hash, passcode)
