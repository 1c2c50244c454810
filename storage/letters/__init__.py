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
  letter that would be expired already (a past date, a record past retention) is refus

The rooms: :mod:`.records` (the refusals, letters, grants), :mod:`.lifecycle` (issue, reissue,
revoke, list, forget), :mod:`.throttling` (authenticate, delays, locks, the alarm), :mod:`.sessions`
(server-side sessions, the passcode check). :class:`Letters` combines them; a patient's record for
export is :mod:`storage.export.record`.
"""

from __future__ import annotations

import secrets as pysecrets
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from ..errors import ArchiveError
from ..export.record import record_items, write_record
from ..index.models import SystemKey
from ..keys import KEY_BYTES, WrappedKey
from .lifecycle import Lifecycle
from .records import (
    AccessDenied,
    Grant,
    IssuedLetter,
    LetterInfo,
    LetterInvalid,
    LetterRefused,
    Locked,
    Throttled,
    UnknownLetter,
    WrongCode,
)
from .sessions import SESSION_LIFETIME, Sessions
from .throttling import (
    ALARM_PER_MINUTE,
    ALARM_QUIET,
    CLIENT_FORGET_AFTER,
    CLIENT_FREE_FAILURES,
    LETTER_FREE_FAILURES,
    MAX_DELAY,
    Throttling,
    delay_for,
)

if TYPE_CHECKING:
    from ..archive import Archive

__all__ = ["ALARM_PER_MINUTE", "ALARM_QUIET", "CLIENT_FORGET_AFTER", "CLIENT_FREE_FAILURES",
           "HMAC_KEY_NAME", "LETTER_FREE_FAILURES", "MAX_DELAY", "SESSION_LIFETIME", "AccessDenied",
           "Grant", "IssuedLetter", "LetterInfo", "LetterInvalid", "LetterRefused", "Letters", "Locked",
           "Throttled", "UnknownLetter", "WrongCode", "delay_for", "record_items", "write_record"]

HMAC_KEY_NAME = "letter-hmac"


class Letters(Lifecycle, Throttling, Sessions):
    """Letters of one archive. Cheap to make; holds the unwrapped HMAC key."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self._secret = self._hmac_key()

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
