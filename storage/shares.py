"""Shares: read-only grants a patient makes on their page for a follow-on doctor (issue 19 part 3).

A share is made only from a patient's letter session (never from a share: a share's credentials
reach no page that makes one). It covers the whole record the session holds (each letter's own
scope, never more) or chosen studies of it, lasts ``settings.share_days`` unless the patient
chooses fewer or more days (at most :data:`MAX_DAYS`), and has a fresh access code shown once.
Like a letter it is a random selector (in the URL) and an access code, kept as HMAC under the
letters' server secret (``letter-hmac``); its wrong codes count on the share and on the client
address in the same ``access_failures`` rows and with the same delays and lock bound as letters
(:func:`storage.letters.delay_for`, ``settings.letter_max_failures``).

The doctor uses it with HTTP Basic (user = selector, password = the code) or trades that once for
a bearer token (:meth:`Shares.open_session`, also the viewer's cookie) limited to the share.

Answers (mapped to HTTP by the front door, each refusal audited ``share-access`` on every patient
record the share covers): unknown selector 404; wrong code 401; throttled 429; locked 403;
expired **or revoked 410** (gone for good: the doctor must ask the patient for a new share; a
revoked share's bearer tokens answer 410 too, not 401, so the doctor learns why).
"""

from __future__ import annotations

import hashlib
import logging
import secrets as pysecrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from . import secrets
from .archive import Archive, Scope
from .errors import BadInput, NotFound
from .index.models import AuditEvent, Patient, Study
from .index.sharing_models import Share, ShareScope, ShareSession
from .letters import (
    ALARM_PER_MINUTE,
    ALARM_QUIET,
    AccessDenied,
    LetterInvalid,
    Letters,
    Locked,
    UnknownLetter,
)
from .letters.throttling import accepted, check_code, client_throttle, decided_once, unknown_code
from .whole_record import HeldLetter

log = logging.getLogger(__name__)

MAX_DAYS = 365
TOKEN_LIFETIME = timedelta(hours=1)  # a bearer token or viewer cookie; never past the share's end
_REFUSED = ("failure", "throttled", "locked", "unknown", "invalid")
NOWHERE = Scope(-1, None)  # no patient has row id -1: every UID answers as unknown


class ShareGone(LetterInvalid):
    """Expired or revoked (410), or every record it covered was shredded."""


@dataclass(frozen=True)
class IssuedShare:
    """What the patient gives the doctor. The code exists only here, once."""

    share_id: int
    selector: str
    access_code: str
    expires_at: datetime


@dataclass(frozen=True)
class ShareInfo:
    """A share as its patient's page lists it (no secrets)."""

    id: int
    selector: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    locked_at: datetime | None
    last_used_at: datetime | None
    studies: int | None  # studies it names in this session's records; None = whole records

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.locked_at:
            return "locked"
        if self.expires_at <= _now():
            return "expired"
        return "active"


@dataclass(frozen=True)
class ShareGrant:
    """What a share's credentials may read: one scope per patient record."""

    share_id: int
    scopes: tuple[Scope, ...]

    @property
    def actor(self) -> str:
        return f"share:{self.share_id}"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _seconds(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() + 0.999))


def study_owner(archive: Archive, study_uid: str) -> int | None:
    """The patient row id a study belongs to, or None."""
    with archive.sessions() as s:
        owner: int | None = s.scalar(select(Study.patient_id).where(Study.study_uid == study_uid))
        return owner


class Shares:
    """Shares of one archive, with the letters' server secret and client counting."""

    def __init__(self, letters: Letters):
        self.letters = letters
        self.archive = letters.archive

    # -- made, listed, revoked by the patient -------------------------------------------------

    def create(self, held: list[HeldLetter], *, study_uids: list[str] | None = None,
               days: int | None = None, origin: str = "") -> IssuedShare:
        """A share of the held records (all, or only ``study_uids``, each checked against the
        letters' scopes: a study no held letter covers is NotFound, as an unknown one)."""
        if not held:
            raise BadInput("no patient session")
        days = self.archive.settings.share_days if days is None else days
        if not 1 <= days <= MAX_DAYS:
            raise BadInput(f"a share lasts 1 to {MAX_DAYS} days")
        scopes: dict[int, tuple[int, tuple[str, ...]]] = {}  # patient_ref -> (letter id, studies)
        if study_uids is None:
            for h in held:
                scopes.setdefault(h.grant.patient_ref,
                                  (h.grant.letter_id, tuple(sorted(h.grant.study_uids or ()))))
        else:
            chosen: dict[int, tuple[int, list[str]]] = {}
            for uid in dict.fromkeys(study_uids):
                owner = study_owner(self.archive, uid)
                holder = next((h for h in held if h.grant.patient_ref == owner and (
                    h.grant.study_uids is None or uid in h.grant.study_uids)), None)
                if owner is None or holder is None:
                    raise NotFound("no such study")
                chosen.setdefault(owner, (holder.grant.letter_id, []))[1].append(uid)
            scopes = {p: (lid, tuple(uids)) for p, (lid, uids) in chosen.items()}
        if not scopes:
            raise BadInput("choose at least one study")
        selector = secrets.new_selector()
        code = secrets.new_access_code()
        now = _now()
        expires = now + timedelta(days=days)
        with self.archive.write_sessions.begin() as s:
            row = Share(selector=selector, code_hash=secrets.access_code_hash(self.letters._secret, code),
                        created_by=held[0].grant.letter_id, created_at=now, expires_at=expires,
                        failures=0)
            s.add(row)
            s.flush()
            share_id = row.id
            for ref, (letter_id, uids) in scopes.items():
                s.add(ShareScope(share_id=share_id, patient_ref=ref, letter_id=letter_id,
                                 study_uids="\\".join(uids)))
        actor = held[0].grant.actor
        for ref, (_, uids) in scopes.items():
            self.archive.audit.record("share-create", actor=actor, source=origin, patient_ref=ref,
                                      detail=f"share {share_id}; {len(uids) or 'all'} stud(ies); "
                                             f"{days} day(s)")
        return IssuedShare(share_id, selector, code, expires)  # the front door makes its URL

    def list_for(self, held: list[HeldLetter]) -> list[ShareInfo]:
        """The shares that cover any of the held records, newest first."""
        refs = {h.grant.patient_ref for h in held}
        if not refs:
            return []
        with self.archive.sessions() as s:
            rows = s.execute(select(Share, ShareScope.study_uids)
                             .join(ShareScope, ShareScope.share_id == Share.id)
                             .where(ShareScope.patient_ref.in_(refs))
                             .order_by(Share.id.desc())).all()
        out: dict[int, ShareInfo] = {}
        counts: dict[int, int | None] = {}
        for share, uids in rows:
            n = len([u for u in uids.split("\\") if u]) or None
            so_far = counts.get(share.id, 0)
            counts[share.id] = None if n is None or so_far is None else so_far + n
            out[share.id] = ShareInfo(share.id, share.selector, share.created_at, share.expires_at,
                                      share.revoked_at, share.locked_at, share.last_used_at, None)
        return [ShareInfo(**{**i.__dict__, "studies": counts[i.id]}) for i in out.values()]

    def revoke(self, held: list[HeldLetter], share_id: int, *, origin: str = "") -> None:
        """Revoke a share covering one of the held records (else NotFound)."""
        refs = {h.grant.patient_ref for h in held}
        with self.archive.write_sessions.begin() as s:
            covered = s.scalars(select(ShareScope.patient_ref).where(
                ShareScope.share_id == share_id)).all()
            if not refs.intersection(covered):
                raise NotFound("no such share")
            s.execute(update(Share).where(Share.id == share_id, Share.revoked_at.is_(None))
                      .values(revoked_at=_now()))
        for ref in covered:
            self.archive.audit.record("share-revoke", actor=held[0].grant.actor, source=origin,
                                      patient_ref=ref, detail=f"share {share_id}")

    # -- used by the doctor ---------------------------------------------------------------------

    def authenticate(self, selector: str, code: str, client: str, *,
                     now: datetime | None = None) -> ShareGrant:
        """Check a share's access code (the letters' order and counting); AccessDenied if refused."""
        now = now or _now()
        client_id = self.letters._client_id(client)
        outcome = decided_once(self.archive.write_sessions,
                               lambda s: self._decide(s, selector, code, client_id, now))
        if isinstance(outcome, AccessDenied):
            self._refused(outcome, selector, client, now)
            raise outcome
        for scope in outcome.scopes:
            self.archive.audit.record("share-use", actor=outcome.actor, source=client,
                                      patient_ref=scope.patient_ref, detail="access code accepted")
        return outcome

    def _decide(self, s: Session, selector: str, code: str, client_id: str,
                now: datetime) -> ShareGrant | AccessDenied:
        cf, throttled = client_throttle(s, client_id, now)
        if throttled is not None:
            return throttled
        row = s.scalars(select(Share).where(Share.selector == selector)
                        .with_for_update()).first() if len(selector) <= 64 else None
        if row is None:
            unknown_code(s, self.letters._secret, code, cf, client_id, now)
            return UnknownLetter("unknown", "no such share")
        gone = self._gone(s, row, now)
        if gone is not None:
            return gone
        refused = check_code(s, row, code, secret=self.letters._secret, cf=cf, client_id=client_id,
                             now=now, max_failures=self.archive.settings.letter_max_failures,
                             locked=Locked("locked", "this share is locked after too many wrong codes; "
                                                     "ask the patient for a new share"))
        if refused is not None:
            return refused
        accepted(row, cf, now)
        return self._grant(s, row)

    @staticmethod
    def _gone(s: Session, row: Share, now: datetime) -> ShareGone | None:
        if row.revoked_at is not None or row.expires_at <= now:
            return ShareGone("invalid", "this share is no longer valid (expired or revoked); "
                                        "ask the patient for a new one")
        return None

    @staticmethod
    def _grant(s: Session, row: Share) -> ShareGrant | ShareGone:
        scopes = []
        for sc in s.scalars(select(ShareScope).where(ShareScope.share_id == row.id)
                            .order_by(ShareScope.patient_ref)):
            if s.get(Patient, sc.patient_ref) is None:
                continue  # shredded
            uids = frozenset(u for u in sc.study_uids.split("\\") if u)
            scopes.append(Scope(sc.patient_ref, uids or None))
        if not scopes:
            return ShareGone("invalid", "this share is no longer valid")
        return ShareGrant(row.id, tuple(scopes))

    def _refused(self, exc: AccessDenied, selector: str, client: str, now: datetime) -> None:
        """Audit a refusal on each record the share covers; alarm on a high global rate."""
        with self.archive.sessions() as s:
            refs = s.scalars(select(ShareScope.patient_ref).join(Share, Share.id == ShareScope.share_id)
                             .where(Share.selector == selector)).all() if len(selector) <= 64 else []
        for ref in refs or [None]:
            self.archive.audit.record("share-access", actor="share", source=client, outcome=exc.reason,
                                      patient_ref=ref, detail=str(exc)[:200])
        self._alarm(client, now)

    def _alarm(self, client: str, now: datetime) -> None:
        with self.archive.sessions() as s:
            recent = s.scalar(select(func.count(AuditEvent.id)).where(
                AuditEvent.action.in_(("letter-access", "share-access")),
                AuditEvent.outcome.in_(_REFUSED), AuditEvent.at >= now - timedelta(minutes=1)))
            if (recent or 0) < ALARM_PER_MINUTE:
                return
            raised = s.scalar(select(func.count(AuditEvent.id)).where(
                AuditEvent.action == "alarm", AuditEvent.at >= now - ALARM_QUIET))
        if raised:
            return
        log.warning("ALARM: %d refused letter and share attempts in the last minute", recent)
        self.archive.audit.record("alarm", actor="pacs", source=client, outcome="alarm",
                                  detail=f"{recent} refused letter/share attempts in one minute")

    # -- bearer tokens and the viewer's cookie --------------------------------------------------

    def open_session(self, grant: ShareGrant, *, now: datetime | None = None) -> tuple[str, int]:
        """A random token for a grant (kept hashed): (token, lifetime in seconds)."""
        now = now or _now()
        token = pysecrets.token_urlsafe(32)
        with self.archive.write_sessions.begin() as s:
            s.execute(delete(ShareSession).where(ShareSession.expires_at < now))
            s.add(ShareSession(id_hash=_digest(token), share_id=grant.share_id, created_at=now,
                               expires_at=now + TOKEN_LIFETIME))
        return token, int(TOKEN_LIFETIME.total_seconds())

    def session(self, selector: str | None, token: str, *, client: str = "",
                now: datetime | None = None) -> ShareGrant | None:
        """The grant of a live token (of this share, if a selector is given); None when unknown
        or timed out; :class:`ShareGone` (410) when its share was revoked or expired since."""
        now = now or _now()
        if not token or len(token) > 128:
            return None
        with self.archive.sessions() as s:
            found = s.execute(select(ShareSession, Share).join(Share, Share.id == ShareSession.share_id)
                              .where(ShareSession.id_hash == _digest(token))).first()
            if found is None:
                return None
            sess, share = found
            if (selector is not None and share.selector != selector) or sess.expires_at <= now:
                return None
            gone = self._gone(s, share, now)
            if gone is None:
                grant = self._grant(s, share)
                if isinstance(grant, ShareGrant):
                    return grant
                gone = grant
            refs = s.scalars(select(ShareScope.patient_ref).where(ShareScope.share_id == share.id)).all()
        gone.patient_ref = refs[0] if refs else None
        for ref in refs:
            self.archive.audit.record("share-access", actor=f"share:{share.id}", source=client,
                                      outcome="invalid", patient_ref=ref, detail="token of a gone share")
        raise gone

    def close_session(self, token: str) -> None:
        with self.archive.write_sessions.begin() as s:
            s.execute(delete(ShareSession).where(ShareSession.id_hash == _digest(token)))
