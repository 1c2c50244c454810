"""The key vault: master key ring + the index's wrapped keys, and what is derived from them.

* ``dek(key_id)`` unwraps a patient's data key (cached in memory; never written in clear). With the
  master key in an HSM each cache miss is one ``C_Decrypt`` in the token (~28 us with SoftHSM2,
  ``bench/keys.py``; more with a network HSM), so a patient's key is unwrapped once, not per object.
* ``blind(label, value)`` is the keyed hash used for exact matching on identifiers without storing
  them (HMAC-SHA256 truncated to 128 bits, under a random installation key wrapped by the master key).
* ``seal`` / ``unseal`` encrypt index values (a patient's name, a study's description ...) under a key
  derived from the patient's DEK, bound to the table and row they belong to.

Nothing here grows with the number of patients: unwrapped data keys are kept in a bounded LRU
(``key_cache_size``, default ``_KEYS_MAX``), decrypted values are not kept at all (searching is
the blind indexes' job, storage/blindindex.py; a query decrypts only the rows it returns or must confirm).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from .crypto import open_small, seal_small
from .errors import KeyUnavailable, NotFound
from .index.models import PatientKey, SystemKey
from .keys import KEY_BYTES, KeyRing, WrappedKey, hkdf

_KEYS_MAX = 4096  # default of key_cache_size: unwrapped data keys kept per process (LRU); a miss
# costs one AES-GCM unwrap (in the token when the master key is in an HSM)


class _LRU(OrderedDict[str, bytes]):
    """A bounded map, least recently used entry evicted first (callers hold the vault's lock)."""

    def __init__(self, size: int):
        super().__init__()
        self._size = size

    def get_fresh(self, key: str) -> bytes | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self._size:
            self.popitem(last=False)


class Vault:
    def __init__(self, ring: KeyRing, sessions: sessionmaker[Session],
                 reload: Callable[[], KeyRing] | None = None,
                 read_sessions: sessionmaker[Session] | None = None, cache_size: int = 0):
        self.ring = ring
        self._sessions = sessions  # writes (new keys)
        # Reads go through the read engine: a key fetched while the caller holds the SQLite write
        # lock (e.g. sealing inside the index transaction) must not wait for that same lock.
        self._read = read_sessions or sessions
        self._reload = reload  # re-reads the key file: other processes may have rotated it
        size = cache_size or _KEYS_MAX  # 0: the built-in default (key_cache_size)
        self._deks = _LRU(size)
        self._field_keys = _LRU(size)
        self._lock = threading.Lock()
        self._blind_key = self._system_key("blind-index")

    @property
    def blind_key(self) -> bytes:
        """The installation's blind-index key (storage/blindindex.py derives its token key from it)."""
        return self._blind_key

    # -- installation keys ---------------------------------------------------------------------

    def check_master_key(self) -> None:
        """Refuse a master key ring that does not open what the index holds."""
        with self._read() as s:
            rows = s.scalars(select(SystemKey)).all()
            for row in rows:
                self.ring.unwrap(row.name, WrappedKey(row.kek_version, row.wrapped))
            versions = _distinct_versions(s)
        missing = sorted(v for v in versions if not self.ring.has(v))
        if missing:
            raise KeyUnavailable(f"master key version(s) {missing} needed by patient keys are not loaded")

    def _system_key(self, name: str) -> bytes:
        with self._read() as s:
            row = s.get(SystemKey, name)
            if row is not None:
                return self.ring.unwrap(name, WrappedKey(row.kek_version, row.wrapped))
        with self._sessions.begin() as s:
            row = s.get(SystemKey, name)
            if row is None:
                key = secrets.token_bytes(KEY_BYTES)
                w = self.ring.wrap(name, key)
                s.add(SystemKey(name=name, kek_version=w.kek_version, wrapped=w.blob))
                return key
            return self.ring.unwrap(name, WrappedKey(row.kek_version, row.wrapped))

    def blind(self, label: str, value: str) -> bytes:
        return hmac.new(self._blind_key, f"{label}|{value}".encode(), hashlib.sha256).digest()[:16]

    # -- patient keys -------------------------------------------------------------------------------

    def new_patient_key(self, session: Session) -> tuple[str, bytes]:
        """Create and add (not commit) a fresh patient data key; returns (key_id, dek)."""
        key_id, dek, w = self.mint_patient_key()
        session.add(PatientKey(key_id=key_id, kek_version=w.kek_version, wrapped=w.blob,
                               created_at=datetime.now(UTC).replace(tzinfo=None)))
        return key_id, dek

    def mint_patient_key(self) -> tuple[str, bytes, WrappedKey]:
        """A fresh data key and its wrapping, written nowhere yet (the caller's transaction does)."""
        key_id = secrets.token_hex(16)
        dek = secrets.token_bytes(KEY_BYTES)
        return key_id, dek, self.ring.wrap(key_id, dek)

    def dek(self, key_id: str) -> bytes:
        with self._lock:
            dek = self._deks.get_fresh(key_id)
        if dek is not None:
            return dek
        with self._read() as s:
            row = s.get(PatientKey, key_id)
        if row is None or not row.wrapped:
            raise NotFound("the patient's key no longer exists (shredded)")
        return self.dek_from(key_id, row.kek_version, row.wrapped)

    def dek_from(self, key_id: str, kek_version: int | None, wrapped: bytes | None) -> bytes:
        """The data key from its wrapped form read along with a query's rows (no query of its own).

        Raises NotFound when the key is gone (the patient was shredded meanwhile, maybe by another
        node: a key this process still holds is dropped then)."""
        if not wrapped or kek_version is None:
            self.forget(key_id)
            raise NotFound("the patient's key no longer exists (shredded)")
        with self._lock:
            dek = self._deks.get_fresh(key_id)
        if dek is not None:
            return dek
        if not self.ring.has(kek_version) and self._reload is not None:
            self.ring = self._reload()  # `pacs keys rotate` ran in another process
        dek = self.ring.unwrap(key_id, WrappedKey(kek_version, wrapped))
        self.remember(key_id, dek)
        return dek

    def reload(self) -> None:
        """Re-read the master key ring (another node rotated or retired a version)."""
        if self._reload is not None:
            self.ring = self._reload()

    def remember(self, key_id: str, dek: bytes) -> None:
        with self._lock:
            self._deks.put(key_id, dek)

    def forget(self, key_id: str) -> None:
        with self._lock:
            self._deks.pop(key_id, None)
            self._field_keys.pop(key_id, None)

    def _field_key(self, key_id: str, dek: bytes | None = None) -> bytes:
        with self._lock:
            k = self._field_keys.get_fresh(key_id)
        if k is None:
            k = hkdf(dek if dek is not None else self.dek(key_id), b"pacs/index-fields/v1")
            with self._lock:
                self._field_keys.put(key_id, k)
        return k

    # -- index values -----------------------------------------------------------------------------

    def seal(self, key_id: str, where: str, values: dict[str, Any], dek: bytes | None = None) -> bytes:
        """Encrypt index values; ``dek`` for a key not written yet (a patient created in this
        transaction)."""
        plain = json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()
        return seal_small(self._field_key(key_id, dek), plain, where.encode())

    def unseal(self, key_id: str, where: str, sealed: bytes, dek: bytes | None = None
               ) -> dict[str, Any]:
        """Decrypt an index value (not cached: a query decrypts only what it returns or confirms)."""
        values: dict[str, Any] = json.loads(open_small(self._field_key(key_id, dek), sealed,
                                                        where.encode()))
        return values


def _distinct_versions(s: Session) -> set[int]:
    """The master key versions patient keys are wrapped under, one index seek per version (a loose
    index scan on ``ix_patient_keys_kek_version``), not a pass over every patient's key at start."""
    versions: set[int] = set()
    last: int | None = None
    while True:
        q = select(func.min(PatientKey.kek_version))
        if last is not None:
            q = q.where(PatientKey.kek_version > last)
        last = s.scalar(q)
        if last is None:
            return versions
        versions.add(last)
