"""The audit trail: append-only rows of who did what to which patient's data, when, from where.

In the spirit of DICOM PS3.15 A.5 (ATNA): events name the patient by index reference and studies by
UID, never by name or ID. Recording never fails the operation it records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from .errors import disk_full
from .index.models import AuditEvent

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, sessions: sessionmaker[Session]):
        self._sessions = sessions

    @staticmethod
    def add(session: Session, action: str, *, actor: str = "", source: str = "",
            outcome: str = "success", patient_ref: int | None = None, study_uid: str = "",
            detail: str = "", at: datetime | None = None) -> None:
        """Add an event to the caller's transaction (it commits or rolls back with the operation).

        ``at`` is when it happened (UTC, naive), for events written later in a batch; default now."""
        session.execute(insert(AuditEvent).values(
            at=at or datetime.now(UTC).replace(tzinfo=None), actor=actor[:128], action=action[:32],
            outcome=outcome[:16], patient_ref=patient_ref, study_uid=study_uid[:64],
            source=source[:128], detail=detail))

    def record(self, action: str, *, actor: str = "", source: str = "", outcome: str = "success",
               patient_ref: int | None = None, study_uid: str = "", detail: str = "",
               at: datetime | None = None) -> None:
        """Record an event in its own transaction; a failure is logged, never raised."""
        try:
            with self._sessions.begin() as s:
                self.add(s, action, actor=actor, source=source, outcome=outcome,
                         patient_ref=patient_ref, study_uid=study_uid, detail=detail, at=at)
        except Exception as exc:  # an audit failure must not fail the operation; it is logged
            full = disk_full(exc)
            log.error("could not write an audit event (%s)%s", action,
                      ": no space left for the index" if full else "", exc_info=not full)

    def events(self, *, patient_ref: int | None = None, since: datetime | None = None,
               action: str | None = None, limit: int = 1000) -> Iterator[AuditEvent]:
        stmt = select(AuditEvent).order_by(AuditEvent.id)
        if patient_ref is not None:
            stmt = stmt.where(AuditEvent.patient_ref == patient_ref)
        if since is not None:
            stmt = stmt.where(AuditEvent.at >= since)
        if action is not None:
            stmt = stmt.where(AuditEvent.action == action)
        with self._sessions() as s:
            yield from s.scalars(stmt.limit(limit)).all()
