"""Index tables of the patient's whole record and of shares (migration 0013, issue 19 parts 2-3).

Kept apart from :mod:`storage.index.models` (same declarative ``Base``) so the tables of one
feature live together. Nothing identifying: patients by row id, secrets only as hashes.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class SessionLetter(Base):
    """A further letter a patient added to their page session (the session's own letter is
    ``patient_sessions.letter_id``)."""

    __tablename__ = "session_letters"
    id_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)  # the session's
    letter_id: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    added_at: Mapped[datetime] = mapped_column(DateTime)


class Share(Base):
    """A read-only grant for a follow-on doctor: selector in the URL, HMAC of the access code."""

    __tablename__ = "shares"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    selector: Mapped[str] = mapped_column(String(64), unique=True)
    code_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_by: Mapped[int] = mapped_column(Integer)  # the letter whose session made it
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)


class ShareScope(Base):
    """What a share covers of one patient record: all of it ("") or the listed studies."""

    __tablename__ = "share_scopes"
    share_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_ref: Mapped[int] = mapped_column(Integer, primary_key=True, index=True)
    letter_id: Mapped[int] = mapped_column(Integer)  # the letter that granted this part
    study_uids: Mapped[str] = mapped_column(Text, default="")  # backslash separated; "" = all


class ShareSession(Base):
    """A share's viewer cookie or DICOMweb bearer token (the SHA-256 of the random value)."""

    __tablename__ = "share_sessions"
    id_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    share_id: Mapped[int] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
