"""What letters are to their callers: the refusals (:class:`AccessDenied` and kinds), an issued
letter, a letter without secrets, a grant; and the row helpers the other modules share.

The refusals carry a ``reason``, not a status: the patient door maps them to HTTP
(dicomweb/patient/auth.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..errors import ArchiveError
from ..index.models import Letter

if TYPE_CHECKING:
    from ..archive import Scope


class AccessDenied(ArchiveError):
    """A letter cannot be used. ``reason``: unknown, wrong, throttled, locked, invalid."""


    def __init__(self, reason: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.patient_ref: int | None = None  # set when the letter is known (for the audit trail)


class WrongCode(AccessDenied):
    """The access code compared and did not match."""


class Throttled(AccessDenied):
    """Too many failures lately: try again after ``retry_after`` seconds."""


class Locked(AccessDenied):
    """Locked for good after too many wrong codes: only a reissued letter opens the record."""


class LetterInvalid(AccessDenied):
    """Revoked, expired, or the patient's record is gone (shredded)."""



class UnknownLetter(AccessDenied):
    """No letter has this selector."""


class LetterRefused(ArchiveError):
    """A letter that would be expired already is not issued; the message says why."""


def _clock_words(clock: str) -> str:
    return "the latest study date" if clock == "study_date" else \
        "the later of the latest study date and the last receipt"


@dataclass(frozen=True)
class IssuedLetter:
    """What the provider prints and mails. The code and passcode exist only here, once.

    ``url`` is the letter page's address, set by the front door that knows the public address
    (``pacs letter``: :func:`dicomweb.patient.letter_url`); storage builds no URLs.
    """

    letter_id: int
    selector: str
    access_code: str
    passcode: str
    patient_ref: int
    study_uids: tuple[str, ...]
    expires_at: datetime | None
    url: str = ""


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
        from ..archive import Scope

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
