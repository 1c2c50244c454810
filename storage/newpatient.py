"""A patient the archive does not know yet, created inside the index transaction of its first object.

Before issue 14 a new patient had its own transaction (and its own fsync) before its first object's
blob was written, through the ORM: about 4 ms more than a store for a known patient. Now the data key
is minted in memory (:meth:`storage.vault.Vault.mint_patient_key`), the blob is encrypted with it,
and key, patient row and blind-index tokens are written by the group commit that indexes the object
(``Archive._index``), in compiled statements.

Two first objects of one patient:

* in one process, the second finds the first's :class:`NewPatient` in :class:`NewPatients` and uses
  the same key; whichever is indexed first writes the rows, the other finds them;
* in two processes (SCP workers, nodes), both mint a key; SQLite serialises the two transactions, so
  the second finds the patient; on PostgreSQL the second insert waits for the first commit and fails
  on the unique ``pid_hash``, and the object is indexed again alone (``Archive._index_all``), finds
  the patient, and has its blob re-encrypted under the patient's key (``Archive._rekey``), so a patient
  always has exactly one key. This costs one decryption and encryption of that object, only when
  two first objects of one patient race across processes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .keys import WrappedKey


@dataclass(frozen=True)
class NewPatient:
    """What the index transaction writes for a new patient (the key is not in the index yet)."""

    pid_hash: bytes
    id_hash: bytes
    key_id: str
    dek: bytes
    wrapped: WrappedKey
    values: dict[str, Any]  # the patient-level attributes, sealed at insert
    tokens: frozenset[bytes]  # blind-index tokens of those values
    provider_id: int = 1  # the provider whose credentials stored it (storage/tenancy.py)


class NewPatients:
    """New patients of this process whose first objects are being stored (bounded by concurrency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[bytes, NewPatient] = {}

    def get(self, pid_hash: bytes) -> NewPatient | None:
        with self._lock:
            return self._pending.get(pid_hash)

    def claim(self, new: NewPatient) -> NewPatient:
        """``new``, or the one another thread registered first for the same patient."""
        with self._lock:
            return self._pending.setdefault(new.pid_hash, new)

    def done(self, new: NewPatient) -> None:
        """Its transaction ended (committed or not): later stores read the index instead."""
        with self._lock:
            if self._pending.get(new.pid_hash) is new:
                del self._pending[new.pid_hash]


class KnownPatients:
    """pid hash -> (row id, key id): a bounded LRU, so memory does not grow with the archive."""

    def __init__(self, size: int = 10_000):
        self._size = size
        self._lock = threading.Lock()
        self._map: OrderedDict[bytes, tuple[int, str]] = OrderedDict()

    def get(self, pid_hash: bytes) -> tuple[int, str] | None:
        with self._lock:
            hit = self._map.get(pid_hash)
            if hit is not None:
                self._map.move_to_end(pid_hash)
            return hit

    def __setitem__(self, pid_hash: bytes, value: tuple[int, str]) -> None:
        with self._lock:
            self._map[pid_hash] = value
            self._map.move_to_end(pid_hash)
            while len(self._map) > self._size:
                self._map.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._map.clear()

