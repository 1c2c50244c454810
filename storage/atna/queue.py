"""The queue of audit events waiting for the audit record repository: the audit table itself.

Why no queue of its own: every process that records an event (gunicorn workers, SCP workers, the
CLI, ``pacs serve``) already writes it durably to ``audit_events`` in the index database, in the
transaction of what it records. A second queue (files per process) would be a second copy to keep
in step, crash-safe and encrypted, for no gain. So the queue is that table, and ``audit_delivery``
(one row per repository) holds the id up to which events went out. The index keeps no PHI in clear
(patients by row reference, studies by UID), so the queue on disk holds none either, and nothing
new is written beside the database; a repository that is down for a week loses nothing, the rows
simply wait.

One sender per cluster: the row is also a lease. A sender delivers only while its ``owner`` holds
an unexpired ``lease_until``, renewed with every batch; a sender that dies is replaced by another
node's after the lease expires. The marker moves in a statement that checks the owner, so two
senders never both move it. Delivery is at least once: a sender that dies after sending and before
moving the marker sends that batch again (a repository sees a duplicate, never a gap).

Ids in commit order: PostgreSQL hands out ids before commit, so id 11 can be visible while id 10
is still committing, or was rolled back and never will be. Pending events are therefore taken only
up to the first missing id; a missing id is waited for ``gap_wait`` seconds, then passed over
(a rolled-back write). SQLite writes one transaction at a time and leaves no such gaps.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..index.models import AuditDelivery, AuditEvent

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class DeliveryQueue:
    """Pending audit events for one repository, and the marker of what was delivered."""

    def __init__(self, read_sessions: Any, write_sessions: Any, repository: str, owner: str, *,
                 lease_seconds: float = 30.0, gap_wait: float = 30.0):
        self._read, self._write = read_sessions, write_sessions
        self.repository, self.owner = repository[:255], owner[:128]
        self.lease = timedelta(seconds=lease_seconds)
        self.gap_wait = gap_wait
        self._gaps: dict[int, float] = {}  # missing id -> monotonic time first seen
        self.delivered_id = 0
        self._held_until: datetime | None = None  # our lease's expiry, as we last wrote it

    def claim(self, start_after: datetime | None = None) -> bool:
        """Take or renew the lease; True while this sender is the one. A new repository's marker
        starts after the last event recorded before ``start_after`` (default: now)."""
        now = _now()
        if self._held_until is not None and self._held_until - now > self.lease / 2:
            return True  # ours for a while yet: no write transaction every poll
        with self._write.begin() as s:
            got = s.execute(update(AuditDelivery).where(
                AuditDelivery.repository == self.repository,
                (AuditDelivery.owner == self.owner) | AuditDelivery.lease_until.is_(None)
                | (AuditDelivery.lease_until < now)).values(
                owner=self.owner, lease_until=now + self.lease)).rowcount
        if not got:
            with self._read() as s:
                exists = s.get(AuditDelivery, self.repository) is not None
            if exists:
                self._held_until = None
                return False
            with self._read() as s:
                first = s.scalar(select(func.max(AuditEvent.id)).where(
                    AuditEvent.at < (start_after or now))) or 0
            try:
                with self._write.begin() as s:
                    s.execute(insert(AuditDelivery).values(
                        repository=self.repository, delivered_id=first, owner=self.owner,
                        lease_until=now + self.lease))
            except IntegrityError:  # another sender made it at the same moment
                return False
        with self._read() as s:
            marker = s.get(AuditDelivery, self.repository)
            assert marker is not None  # made when the lease was taken
            self.delivered_id = marker.delivered_id
        self._held_until = now + self.lease
        return True

    def pending(self, limit: int = 500) -> list[AuditEvent]:
        """The next events in id order after the marker, up to the first id still missing."""
        with self._read() as s:
            rows = list(s.scalars(select(AuditEvent).where(AuditEvent.id > self.delivered_id)
                                  .order_by(AuditEvent.id).limit(limit)))
        out: list[AuditEvent] = []
        expected = self.delivered_id + 1
        now = time.monotonic()
        for row in rows:
            if row.id != expected:  # ids expected..row.id-1 are not visible (yet)
                missing = range(expected, row.id)
                for gap in missing:
                    self._gaps.setdefault(gap, now)
                if any(now - self._gaps[g] < self.gap_wait for g in missing):
                    break
                log.info("audit delivery: %d event id(s) never committed, passed over", len(missing))
            out.append(row)
            expected = row.id + 1
        for gap in [g for g in self._gaps if g < expected]:
            del self._gaps[gap]
        return out

    def delivered(self, last_id: int) -> bool:
        """Move the marker to ``last_id`` and renew the lease; False if the lease was lost."""
        now = _now()
        with self._write.begin() as s:
            moved = s.execute(update(AuditDelivery).where(
                AuditDelivery.repository == self.repository, AuditDelivery.owner == self.owner).values(
                delivered_id=last_id, delivered_at=now, lease_until=now + self.lease)).rowcount
        if moved:
            self.delivered_id = last_id
            self._held_until = now + self.lease
        else:
            self._held_until = None
        return bool(moved)

    def release(self) -> None:
        """Give the lease up (a clean stop): another node's sender may take over at once."""
        with self._write.begin() as s:
            s.execute(update(AuditDelivery).where(
                AuditDelivery.repository == self.repository, AuditDelivery.owner == self.owner).values(
                lease_until=None))
        self._held_until = None


def backlog(read_sessions: Any, repository: str) -> dict[str, float]:
    """For /metrics: events recorded and not yet delivered to ``repository``, and seconds since the
    last delivery (-1: none yet). Two index lookups (the newest id, the marker row)."""
    with read_sessions() as s:
        newest = s.scalar(select(func.max(AuditEvent.id))) or 0
        row = s.get(AuditDelivery, repository[:255])
    if row is None:
        return {"waiting": float(newest), "since_delivery": -1.0}
    since = (_now() - row.delivered_at).total_seconds() if row.delivered_at else -1.0
    return {"waiting": float(max(0, newest - row.delivered_id)), "since_delivery": since}
