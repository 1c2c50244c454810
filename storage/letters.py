"""Patient letters: issue, revoke, authenticate (with brute-force protection), sessions, the record.

security.md "Patient letters":

* A letter is a random selector (in the URL), an access code (100 bits, Crockford base32) and an
  export passcode (EFF words). Only HMAC(server secret, code) and Argon2id(passcode) are stored
  (``storage.secrets``); the server secret is the ``letter-hmac`` system key, wrapped by the
  master key like every other system key (so key rotation rewraps it).
* Failed codes are counted per letter and per client address (an HMAC of it) in the index, so
  every gunicorn worker sees the same counts. After a few failures each further try must wait a
  growing delay (answered with :class:`Throttled` carrying ``retry_after``, never by sleeping);
  after ``settings.letter_max_failures`` the letter is locked for good: only a reissued letter
  (new selector and code) opens the record again. A global failure rate above
  :data:`ALARM_PER_MINUTE` raises an alarm (log + audit event ``alarm``).
* Sessions are server-side rows (a random 256-bit id in the cookie, its SHA-256 in the index,
  a fixed expiry), so a session can be ended and every worker sees it.
* Letters expire at the end of retention (storage/retention.py: its clock) unless given a date; a
  letter that would be expired already (a past date, a record past retention) is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets as pysecrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from . import secrets
from .artifact_classes import WITH_ORIGINAL
from .errors import ArchiveError, NotFound
from .index.models import AccessFailure, AuditEvent, Letter, Patient, PatientSession, SystemKey
from .keys import KEY_BYTES, WrappedKey

if TYPE_CHECKING:
    from .archive import Archive, Scope
    from .export import ExportItem

log = logging.getLogger(__name__)

HMAC_KEY_NAME = "letter-hmac"
LETTER_FREE_FAILURES = 3  # per letter: tries before delays start
CLIENT_FREE_FAILURES = 20  # per client address (across letters)
MAX_DELAY = 3600.0  # seconds
CLIENT_FORGET_AFTER = timedelta(hours=24)
ALARM_PER_MINUTE = 100  # refused attempts per minute, all letters and clients together
ALARM_QUIET = timedelta(minutes=5)
SESSION_LIFETIME = timedelta(minutes=30)
_REFUSED = ("failure", "throttled", "locked", "unknown", "invalid")


class AccessDenied(ArchiveError):
    """A letter cannot be used. ``reason``: unknown, wrong, throttled, locked, invalid."""

    status = 401

    def __init__(self, reason: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.patient_ref: int | None = None  # set when the letter is known (for the audit trail)


class WrongCode(AccessDenied):
    status = 401


class Throttled(AccessDenied):
    status = 429


class Locked(AccessDenied):
    status = 403


class LetterInvalid(AccessDenied):
    """Revoked, expired, or the patient's record is gone (shredded)."""

    status = 410


class UnknownLetter(AccessDenied):
    status = 404


class LetterRefused(ArchiveError):
    """A letter that would be expired already is not issued; the message says why."""


def _clock_words(clock: str) -> str:
    return "the latest study date" if clock == "study_date" else \
        "the later of the latest study date and the last receipt"


@dataclass(frozen=True)
class IssuedLetter:
    """What the provider prints and mails. The code and passcode exist only here, once."""

    letter_id: int
    selector: str
    url: str
    access_code: str
    passcode: str
    patient_ref: int
    study_uids: tuple[str, ...]
    expires_at: datetime | None


@dataclass(frozen=True)
class LetterInfo:
    """A letter without secrets (``pacs letter list``)."""

    id: int
    selector: str
    patient_ref: int
    study_uids: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    locked_at: datetime | None
    failures: int
    last_used_at: datetime | None

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.locked_at:
            return "locked"
        if self.expires_at and self.expires_at <= _utcnow():
            return "expired"
        return "active"


@dataclass(frozen=True)
class Grant:
    """A successful authentication: which letter, whose record, what it may see."""

    letter_id: int
    patient_ref: int
    study_uids: frozenset[str] | None

    def scope(self) -> Scope:
        from .archive import Scope

        return Scope(self.patient_ref, self.study_uids)

    @property
    def actor(self) -> str:
        return f"patient-letter:{self.letter_id}"


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _studies(text: str) -> tuple[str, ...]:
    return tuple(u for u in text.split("\\") if u)


def _info(row: Letter) -> LetterInfo:
    return LetterInfo(row.id, row.selector, row.patient_ref, _studies(row.study_uids), row.created_at,
                      row.expires_at, row.revoked_at, row.locked_at, row.failures, row.last_used_at)


def delay_for(failures: int, free: int) -> float:
    """Seconds a client must wait after ``failures`` failures: 0, then 1, 2, 4 ... up to an hour."""
    if failures < free:
        return 0.0
    return min(MAX_DELAY, 2.0 ** (failures - free))


class Letters:
    """Letters of one archive. Cheap to make; holds the unwrapped HMAC key."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self._secret = self._hmac_key()

    # -- the server secret --------------------------------------------------------------------

    def _hmac_key(self) -> bytes:
        """The ``letter-hmac`` system key, created (wrapped by the current master key) on first use."""
        ring = self.archive.vault.ring
        for _ in range(3):
            with self.archive.sessions() as s:
                row = s.get(SystemKey, HMAC_KEY_NAME)
            if row is not None:
                return ring.unwrap(HMAC_KEY_NAME, WrappedKey(row.kek_version, row.wrapped))
            key = pysecrets.token_bytes(KEY_BYTES)
            w = ring.wrap(HMAC_KEY_NAME, key)
            try:
                with self.archive.write_sessions.begin() as s:
                    s.add(SystemKey(name=HMAC_KEY_NAME, kek_version=w.kek_version, wrapped=w.blob))
                return key
            except IntegrityError:  # another worker created it at the same moment: read theirs
                continue
        raise ArchiveError("could not create the letter key")

    def _client_id(self, address: str) -> str:
        """Client addresses are counted under an HMAC, so the table holds no addresses."""
        return hmac.new(self._secret, f"client|{address}".encode(), hashlib.sha256).hexdigest()[:64]

    # -- issue, revoke, list ------------------------------------------------------------------

    def default_expiry(self, patient_ref: int) -> datetime:
        """End of retention: the day the record becomes due (storage/retention.py, its clock)."""
        from .retention import due_date

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
              expires_at: datetime | None = None, base_url: str = "", actor: str = "",
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
        url = f"{base_url.rstrip('/')}/letters/{selector}"
        return IssuedLetter(letter_id, selector, url, code, passcode, patient_ref, studies, expires)

    def reissue(self, letter: int | str, *, base_url: str = "", actor: str = "",
                origin: str = "") -> IssuedLetter:
        """Revoke a letter (locked or not) and issue a new one for the same patient and studies."""
        old = self.get(letter)
        if old.expires_at is not None and old.expires_at <= _utcnow():
            raise LetterRefused(f"letter {old.id} expired on {old.expires_at:%Y-%m-%d}; a reissued "
                                "letter would expire with it. Issue a new one with `pacs letter issue`")
        self._refuse_expired(old.patient_ref, old.expires_at)  # before the old one is revoked
        self.revoke(old.id, actor=actor, origin=origin)
        return self.issue(old.patient_ref, study_uids=list(old.study_uids) or None,
                          expires_at=old.expires_at, base_url=base_url, actor=actor, origin=origin)

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

    # -- authentication --------------------------------------------------------------------------

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
        with self.archive.write_sessions.begin() as s:
            outcome = self._decide(s, selector, code, client_id, now)
            if isinstance(outcome, AccessDenied) and not isinstance(outcome, UnknownLetter):
                outcome.patient_ref = s.scalar(select(Letter.patient_ref).where(Letter.selector == selector))
        if isinstance(outcome, AccessDenied):  # raised after the commit: failures must be kept
            raise outcome
        return outcome

    def _decide(self, s, selector: str, code: str, client_id: str,
                now: datetime) -> Grant | AccessDenied:
        cf = s.get(AccessFailure, client_id, with_for_update=True)
        if cf is not None and now - cf.last_failure_at > CLIENT_FORGET_AFTER:
            cf.failures = 0
        if cf is not None:
            wait = delay_for(cf.failures, CLIENT_FREE_FAILURES)
            ready = cf.last_failure_at + timedelta(seconds=wait)
            if wait and now < ready:
                return Throttled("throttled", "too many failed codes from this address; wait",
                                 _seconds(ready - now))
        row = s.scalars(select(Letter).where(Letter.selector == selector)
                        .with_for_update()).first() if len(selector) <= 64 else None
        if row is None:
            secrets.verify_access_code(self._secret, code, b"\0" * 32)  # same work as a real try
            self._count_client(s, cf, client_id, now)
            return UnknownLetter("unknown", "no such letter")
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return LetterInvalid("invalid", "this letter is no longer valid; ask your provider for a new one")
        if row.locked_at is not None:
            return Locked("locked", "this letter is locked after too many wrong codes; "
                                    "ask your provider for a new letter")
        wait = delay_for(row.failures, LETTER_FREE_FAILURES)
        if wait and row.last_failure_at is not None:
            ready = row.last_failure_at + timedelta(seconds=wait)
            if now < ready:
                return Throttled("throttled", "too many wrong codes; wait before trying again",
                                 _seconds(ready - now))
        if not secrets.verify_access_code(self._secret, code, row.code_hash):
            row.failures += 1
            row.last_failure_at = now
            if row.failures >= self.archive.settings.letter_max_failures:
                row.locked_at = now
            self._count_client(s, cf, client_id, now)
            return WrongCode("failure", "wrong access code")
        if s.get(Patient, row.patient_ref) is None:
            return LetterInvalid("invalid", "this letter is no longer valid")
        row.failures = 0
        row.last_failure_at = None
        row.last_used_at = now
        if cf is not None:
            cf.failures = 0
        studies = _studies(row.study_uids)
        return Grant(row.id, row.patient_ref, frozenset(studies) if studies else None)

    @staticmethod
    def _count_client(s, cf: AccessFailure | None, client_id: str, now: datetime) -> None:
        if cf is None:
            s.add(AccessFailure(client=client_id, failures=1, last_failure_at=now))
        else:
            cf.failures += 1
            cf.last_failure_at = now

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

    # -- sessions -------------------------------------------------------------------------------

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


def _seconds(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() + 0.999))


# -- the record: what a patient takes home --------------------------------------------------------

def record_items(archive: Archive, patient_ref: int,
                 study_uids: frozenset[str] | None = None) -> Iterator[ExportItem]:
    """Export items for a patient's record (streamed: each instance is opened when written).

    Non-DICOM artifacts (objects stored with an original media type, or of an artifact SOP class)
    also carry their original file, recovered with :func:`storage.artifacts.extract_original`.
    """
    import io

    from .archive import Scope
    from .export import ExportItem, OriginalFile

    scope = Scope(patient_ref, study_uids)
    try:
        infos = archive.instances(scope=scope)
    except NotFound:
        return
    for info in infos:
        original = None
        if info.content_type or info.sop_class_uid in WITH_ORIGINAL:
            try:
                from .artifacts import extract_original
                from .originals import SpanReader, find_span

                span = find_span(archive, info)  # a video: copied from its byte range
                if span is not None:
                    original = OriginalFile(span.filename, span.media_type,
                                            lambda i=info, sp=span: SpanReader(archive, i, sp))
                else:
                    orig = extract_original(archive.dataset(info))
                    original = OriginalFile(orig.filename, orig.media_type,
                                            lambda data=orig.data: io.BytesIO(data))
            except Exception:  # the DICOM object is exported whatever happens
                log.info("no original recovered for one artifact (%s)", info.sop_class_uid)
        yield ExportItem(header=archive.header(info), open=lambda info=info: archive.open(info),
                         original=original)


def write_record(archive: Archive, out, patient_ref: int, *, fmt: str, passcode: str | None,
                 study_uids: frozenset[str] | None = None, actor: str = "", origin: str = "",
                 age_work_factor: int | None = None):
    """Write a patient's record to ``out`` (zip, gpg or age) and audit it; returns the summary."""
    from .export import write_export

    kwargs = {} if age_work_factor is None else {"age_work_factor": age_work_factor}
    try:
        summary = write_export(out, record_items(archive, patient_ref, study_uids), passcode=passcode,
                               fmt=fmt, patient_label=_label(archive, patient_ref), **kwargs)
    except Exception:
        archive.audit.record("export", actor=actor, source=origin, outcome="failure",
                             patient_ref=patient_ref, detail=fmt)
        raise
    archive.audit.record("export", actor=actor, source=origin, patient_ref=patient_ref,
                         detail=f"{fmt}; {summary.instances} instance(s), {summary.originals} original(s)")
    return summary


def _label(archive: Archive, patient_ref: int) -> str:
    values = archive.patient_values(patient_ref)
    name = str(values.get("PatientName", "") or "").replace("^", " ").strip()
    return name or "Patient record"
