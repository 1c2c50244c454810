"""What the rooms of the archive share: the attributes :class:`storage.archive.Archive` sets up.

Each room (ingest, index rows, reading, frame cache, removal) is a base class of ``Archive`` and
works on this state; declared here once (annotations only, no values) so each room reads on its
own. The methods one room calls on another are named in that room's docstring.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Session

    from ..audit import AuditLog
    from ..blindindex import BlindIndex
    from ..blobstore import DatabaseBlobStore
    from ..config import Settings
    from ..crypto import DecryptingReader
    from ..frames import FrameIndex
    from ..index.db import WriteLock
    from ..index.models import Instance
    from ..newpatient import KnownPatients, NewPatient, NewPatients
    from ..query import QueryEngine
    from ..tenancy import ProviderRef
    from ..vault import Vault
    from .records import InstanceInfo, Scope, _Pending
    from .sealed import SealedBlobs


class ArchiveState:
    """The archive's state (set in ``Archive.__init__``)."""

    settings: Settings
    engine: Engine
    write_engine: Engine
    sessions: Any  # sessionmaker of the read engine
    write_sessions: Any  # sessionmaker of the write engine (SQLite: behind the write lock)
    _write_lock: WriteLock
    vault: Vault
    blobs: Any  # the configured BlobStore: files, S3 or dispersal (storage/blobstores.py)
    inline_blobs: DatabaseBlobStore
    sealed: SealedBlobs
    queries: QueryEngine
    blind: BlindIndex
    audit: AuditLog
    _lock: threading.Lock
    _patients: KnownPatients
    _new_patients: NewPatients
    _study_owner: dict[str, int]
    _commit_lock: threading.Lock
    _commit_queue: list[tuple[list[_Pending], threading.Event]]
    _committing: bool
    _ingest_conn: Connection | None
    _integrity_errors: tuple[type[BaseException], ...]
    _frame_indexes: dict[str, FrameIndex]
    _frame_index_writes: queue.Queue[tuple[int, str, bytes]]
    _frame_index_writer: threading.Thread | None

    if TYPE_CHECKING:  # what one room calls on another, for the type checker (defined where named)
        # reading
        def instances(self, study_uid: str | None = None, series_uid: str | None = None,
                      sop_uid: str | None = None, scope: Scope | None = None
                      ) -> list[InstanceInfo]: ...
        def _info(self, s: Session, inst: Instance) -> InstanceInfo: ...
        def open(self, info: InstanceInfo) -> DecryptingReader: ...
        # index rows
        def _patient_for(self, v: dict[str, Any], study_uid: str, provider: ProviderRef = ...
                         ) -> tuple[int | None, str, NewPatient | None]: ...
        def _index(self, c: Connection, p: _Pending, *, actor: str, origin: str,
                   created: dict[bytes, tuple[int, str, bytes]]) -> None: ...
        # ingest
        def _rekey(self, p: _Pending, key_id: str, dek: bytes) -> None: ...
        # frame cache
        def _remember_frame_index(self, blob_key: str, index: FrameIndex) -> None: ...
        # removal
        def _delete_instances(self, ids: list[int]) -> int: ...
        def _discard_blob(self, key: str) -> None: ...
