"""The archive: the one facade the front doors call (store, find, open, delete, shred).

A C-STORE, a STOW-RS part and ``pacs import`` all end in :meth:`Archive.store`:

1. read the header (up to the pixel data) from the received bytes, as received;
2. find the patient and their data key, or mint a key for a new one (storage/newpatient.py);
3. stream the bytes through AES-256-GCM into a new blob under a random name, then fsync;
4. index patient (if new: key, row, blind-index tokens), study, series, instance in one group-
   committed transaction; if that fails, delete the blob.

So an indexed instance always has its blob; a crash between 3 and 4 leaves an orphan blob, which
:meth:`sweep_orphans` removes at start and in the daily `pacs retention apply` (after an hour).

The work is done by the modules of :mod:`storage.core`, one job each, which this class combines:

* :mod:`storage.core.ingest_commit`: store, the blob write and the group commit;
* :mod:`storage.core.index_rows`: the rows one stored object adds;
* :mod:`storage.core.reading`: queries, instance lookups, opening stored objects;
* :mod:`storage.core.frame_cache`: the frame-index cache;
* :mod:`storage.core.removal`: delete, shred, orphan sweep;
* :mod:`storage.core.sealed`: encryption at rest, above the blob stores (and the inline one);
* :mod:`storage.core.statements`: the SQL, built once; :mod:`storage.core.engines`: engine set-up;
* :mod:`storage.core.records`: StoreResult, InstanceInfo, Scope.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import pydicom
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from . import blobstores, cluster
from .audit import AuditLog
from .blobstore import DatabaseBlobStore
from .config import Settings
from .core.engines import open_engines
from .core.frame_cache import FrameCache
from .core.index_rows import IndexRows
from .core.ingest_commit import Ingest
from .core.reading import Reading
from .core.records import CHUNK, InstanceInfo, Scope, StoreResult, _Pending
from .core.removal import Removal
from .core.sealed import SealedBlobs
from .frames import FrameIndex
from .index.models import SystemKey
from .keys import open_master_keys, uses_token
from .newpatient import KnownPatients, NewPatients
from .query import QueryEngine
from .vault import Vault

__all__ = ["CHUNK", "Archive", "InstanceInfo", "Scope", "StoreResult"]

log = logging.getLogger(__name__)


class Archive(Ingest, IndexRows, Reading, FrameCache, Removal):
    """One per process (per gunicorn worker, per SCP process); thread-safe."""

    def __init__(self, settings: Settings, *, create_key: bool = False):
        # Objects are stored as received; their values are read for the index, not judged.
        # pydicom's per-value validation on read (regex checks, warnings) cost ~3 ms per store.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self.settings = settings
        if uses_token(settings):  # log in to the HSM before anything is written: a wrong PIN
            from .hsm import log_in  # or a missing token is KeyUnavailable, nothing changed

            log_in(settings)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engines = open_engines(settings.database_url)  # storage/core/engines.py
        self.engine, self.write_engine = engines.engine, engines.write_engine
        self.sessions, self._write_lock = engines.sessions, engines.write_lock
        self.write_sessions: Any = engines.write_sessions
        with self.sessions() as s:  # a new key only for a new index: never beside existing data
            fresh = s.scalars(select(SystemKey).limit(1)).first() is None
        ring = open_master_keys(settings, create=create_key and fresh)
        self.vault = Vault(ring, self.write_sessions, read_sessions=self.sessions,
                           reload=lambda: open_master_keys(settings),
                           cache_size=settings.key_cache_size)
        self.vault.check_master_key()
        self.blobs = blobstores.build(settings, self.write_engine)  # files, S3 or dispersal
        cluster.tag_new_keys(self.blobs, cluster.node_tag(settings))  # a node's keys: storage/cluster.py
        self.inline_blobs = DatabaseBlobStore(self.engine)
        self.sealed = SealedBlobs(self.blobs, self.inline_blobs)  # encryption, above both stores
        self.queries = QueryEngine(self.sessions, self.vault,
                                   pn_ignore_case=not settings.case_sensitive_person_names,
                                   phonetic=settings.phonetic_fuzzy_matching)
        self.blind = self.queries.blind
        self.audit = AuditLog(self.write_sessions)
        self._tmp = settings.data_dir / "tmp"
        self._tmp.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._patients = KnownPatients()  # pid hash -> (row id, key id), bounded
        self._new_patients = NewPatients()
        self._study_owner: dict[str, int] = {}  # study UID -> patient row id
        self._commit_lock = threading.Lock()
        self._commit_queue: list[tuple[list[_Pending], threading.Event]] = []
        self._ingest_conn: Connection | None = None
        self._frame_indexes: dict[str, FrameIndex] = {}  # blob key -> index, this process
        self._frame_index_writes: queue.Queue[tuple[int, str, bytes]] = queue.Queue()
        self._frame_index_writer: threading.Thread | None = None
        # statements of the ingest path run on the DBAPI cursor: its errors are the driver's own
        dbapi = self.write_engine.dialect.dbapi
        assert dbapi is not None  # a dialect with its driver loaded
        self._integrity_errors = (IntegrityError, dbapi.IntegrityError)
        self._committing = False
        self._cluster = cluster.watch(self)  # drops what other nodes made stale (storage/cluster.py)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()
        if self._ingest_conn is not None:
            self._ingest_conn.close()
            self._ingest_conn = None
        self.engine.dispose()
        self.write_engine.dispose()
        if callable(close_blobs := getattr(self.blobs, "close", None)):  # dispersal's threads
            close_blobs()

