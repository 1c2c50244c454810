"""Authentication with brute-force protection (security.md "Patient letters").

Failed codes are counted per letter and per client address (an HMAC of it) in the index, so every
worker sees the same counts; after a few failures each try must wait a growing delay
(:class:`Throttled` with ``retry_after``, never a sleep); after ``letter_max_failures`` the letter
is locked; a global failure rate above :data:`ALARM_PER_MINUTE` raises an alarm.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import secrets
from ..index.models import AccessFailure, AuditEvent, Letter, Patient
from .records import (
    AccessDenied,
    Grant,
    LetterInvalid,
    Locked,
    Throttled,
    UnknownLetter,
    WrongCode,
    _studies,
    _utcnow,
)

if TYPE_CHECKING:
    from ..archive import Archive

log = logging.getLogger(__name__)

LETTER_FREE_FAILURES = 3  # per letter: tries before delays start
CLIENT_FREE_FAILURES = 20  # per client address (across letters)
MAX_DELAY = 3600.0  # seconds
CLIENT_FORGET_AFTER = timedelta(hours=24)
ALARM_PER_MINUTE = 100  # refused attempts per minute, all letters and clients together
ALARM_QUIET = timedelta(minutes=5)
_REFUSED = ("failure", "throttled", "locked", "unknown", "invalid")


def delay_for(failures: int, free: int) -> float:
    """Seconds a client must wait after ``failures`` failures: 0, then 1, 2, 4 ... up to an hour."""
    if failures < free:
        return 0.0
    return min(MAX_DELAY, 2.0 ** (failures - free))


_T = TypeVar("_T")


class CodeRow(Protocol):
    """What a letter and a share row both hold for their access code's failure counting."""

    code_hash: bytes
    failures: int
    last_failure_at: datetime | None
    locked_at: datetime | None
    last_used_at: datetime | None


def decided_once(sessions: Any, decide: Callable[[Session], _T]) -> _T:
    """Run ``decide`` in one write transaction; once more if PostgreSQL refused it because another
    worker or node inserted this client's first failure row at the same moment (decided again, on
    that row)."""
    for attempt in range(2):
        try:
            with sessions.begin() as s:
                return decide(s)
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def client_throttle(s: Session, client_id: str, now: datetime
                    ) -> tuple[AccessFailure | None, Throttled | None]:
    """The client's failure row (its count forgotten after a day), and a refusal while its delay runs."""
    cf = s.get(AccessFailure, client_id, with_for_update=True)
    if cf is not None and now - cf.last_failure_at > CLIENT_FORGET_AFTER:
        cf.failures = 0
    if cf is not None:
        wait = delay_for(cf.failures, CLIENT_FREE_FAILURES)
        ready = cf.last_failure_at + timedelta(seconds=wait)
        if wait and now < ready:
            return cf, Throttled("throttled", "too many failed codes from this address; wait",
                                 _seconds(ready - now))
    return cf, None


def count_client(s: Session, cf: AccessFailure | None, client_id: str, now: datetime) -> None:
    if cf is None:
        s.add(AccessFailure(client=client_id, failures=1, last_failure_at=now))
    else:
        cf.failures += 1
        cf.last_failure_at = now


def unknown_code(s: Session, secret: bytes, code: str, cf: AccessFailure | None, client_id: str,
                 now: datetime) -> None:
    """No such selector: the same hashing work as a real try, and the client's failure counted."""
    secrets.verify_access_code(secret, code, b"\0" * 32)
    count_client(s, cf, client_id, now)


def check_code(s: Session, row: CodeRow, code: str, *, secret: bytes, cf: AccessFailure | None,
               client_id: str, now: datetime, max_failures: int, locked: Locked) -> AccessDenied | None:
    """Lock, then the row's own delay, then the constant-time comparison; a wrong code counts for the
    row (locking it at ``max_failures``) and for the client. None: the code is right."""
    if row.locked_at is not None:
        return locked
    wait = delay_for(row.failures, LETTER_FREE_FAILURES)
    if wait and row.last_failure_at is not None:
        ready = row.last_failure_at + timedelta(seconds=wait)
        if now < ready:
            return Throttled("throttled", "too many wrong codes; wait before trying again",
                             _seconds(ready - now))
    if not secrets.verify_access_code(secret, code, row.code_hash):
        row.failures += 1
        row.last_failure_at = now
        if row.failures >= max_failures:
            row.locked_at = now
        count_client(s, cf, client_id, now)
        return WrongCode("failure", "wrong access code")
    return None


def accepted(row: CodeRow, cf: AccessFailure | None, now: datetime) -> None:
    """A right code: the row's and the client's failure counts start again."""
    row.failures = 0
    row.last_failure_at = None
    row.last_used_at = now
    if cf is not None:
        cf.failures = 0


class Throttling:
    """Access codes checked with brute-force protection (a part of :class:`Letters`)."""

    archive: Archive
    _secret: bytes

    def _client_id(self, address: str) -> str:
        """Client addresses are counted under an HMAC, so the table holds no addresses."""
        return hmac.new(self._secret, f"client|{address}".encode(), hashlib.sha256).hexdigest()[:64]

    def authenticate(self, selector: str, code: str, client: str, *,
                     now: datetime | None = None) -> Grant:
        """Check an access code for a letter; raises an :class:`AccessDenied` subclass.

        Order: throttle of the client, existence, validity, lock, throttle of the letter, then the
        constant-time comparison. Only compared codes count as failures (a throttled or locked
        try compares nothing); every refusal is audited and feeds the global alarm.
        """
        now = now or _utcnow()
        client_id = self._client_id(client)
        try:
            grant = self._check(selector, code, client_id, now)
        except AccessDenied as exc:
            self._refused(exc, client, now)
            raise
        self.archive.audit.record("letter-use", actor=grant.actor, source=client,
                                  patient_ref=grant.patient_ref, detail="access code accepted")
        return grant

    def _check(self, selector: str, code: str, client_id: str, now: datetime) -> Grant:
        def decide(s: Session) -> Grant | AccessDenied:
            outcome = self._decide(s, selector, code, client_id, now)
            if isinstance(outcome, AccessDenied) and not isinstance(outcome, UnknownLetter):
                outcome.patient_ref = s.scalar(select(Letter.patient_ref)
                                               .where(Letter.selector == selector))
            return outcome

        outcome = decided_once(self.archive.write_sessions, decide)
        if isinstance(outcome, AccessDenied):  # raised after the commit: failures must be kept
            raise outcome
        return outcome

    def _decide(self, s: Session, selector: str, code: str, client_id: str,
                now: datetime) -> Grant | AccessDenied:
        cf, throttled = client_throttle(s, client_id, now)
        if throttled is not None:
            return throttled
        row = s.scalars(select(Letter).where(Letter.selector == selector)
                        .with_for_update()).first() if len(selector) <= 64 else None
        if row is None:
            unknown_code(s, self._secret, code, cf, client_id, now)
            return UnknownLetter("unknown", "no such letter")
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return LetterInvalid("invalid", "this letter is no longer valid; ask your provider for a new one")
        refused = check_code(s, row, code, secret=self._secret, cf=cf, client_id=client_id, now=now,
                             max_failures=self.archive.settings.letter_max_failures,
                             locked=Locked("locked", "this letter is locked after too many wrong codes; "
                                                     "ask your provider for a new letter"))
        if refused is not None:
            return refused
        if s.get(Patient, row.patient_ref) is None:
            return LetterInvalid("invalid", "this letter is no longer valid")
        accepted(row, cf, now)
        studies = _studies(row.study_uids)
        return Grant(row.id, row.patient_ref, frozenset(studies) if studies else None)

    def _refused(self, exc: AccessDenied, client: str, now: datetime) -> None:
        """Audit a refusal and raise the global alarm when refusals come too fast."""
        self.archive.audit.record("letter-access", actor="patient-letter", source=client,
                                  outcome=exc.reason, patient_ref=exc.patient_ref, detail=str(exc)[:200])
        with self.archive.sessions() as s:
            recent = s.scalar(select(func.count(AuditEvent.id)).where(
                AuditEvent.action == "letter-access", AuditEvent.outcome.in_(_REFUSED),
                AuditEvent.at >= now - timedelta(minutes=1)))
            if (recent or 0) < ALARM_PER_MINUTE:
                return
            raised = s.scalar(select(func.count(AuditEvent.id)).where(
                AuditEvent.action == "alarm", AuditEvent.at >= now - ALARM_QUIET))
        if raised:
            return
        log.warning("ALARM: %d refused patient-letter attempts in the last minute", recent)
        self.archive.audit.record("alarm", actor="pacs", source=client, outcome="alarm",
                                  detail=f"{recent} refused letter attempts in one minute")



def _seconds(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() + 0.999))
