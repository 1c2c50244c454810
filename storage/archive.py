"""The archive: the one facade the front doors call (store, find, open, delete, shred).

A C-STORE, a STOW-RS part and ``pacs import`` all end in :meth:`Archive.store`:

1. read the header (up to the pixel data) from the received bytes, as received;
2. find the patient and their data key, or mint a key for a new one (storage/newpatient.py);
3. stream the bytes through AES-256-GCM into a new blob under a random name, then fsync;
4. index patient (if new: key, row, blind-index tokens), study, series, instance in one group-
   committed transaction; if that fails, delete the blob.

So an indexed instance always has its blob; a crash between 3 and 4 leaves an orphan blob, which
:meth:`sweep_orphans` removes at start and in the daily `pacs retention apply` (after an hour).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import (
    Connection,
    DateTime,
    bindparam,
    case,
    delete,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import blobstores
from .attributes import PHI_BY_LEVEL
from .audit import AuditLog
from .blobstore import DatabaseBlobStore, is_inline
from .config import Settings
from .crypto import DecryptingReader, EncryptingWriter
from .errors import (
    ArchiveError,
    Conflict,
    Duplicate,
    NotFound,
    StorageFull,
    StudyMismatch,
    disk_full,
)
from .frames import FrameIndex, index_frames, native_frame_index, read_frame
from .header import Header, read_header
from .index.db import LockedSessions, WriteLock, make_engine, purge_deleted, sessions, upgrade
from .index.models import (
    AuditEvent,
    InlineBlob,
    Instance,
    Patient,
    PatientKey,
    PatientToken,
    Series,
    SeriesToken,
    ShredLogEntry,
    Study,
    StudyToken,
    SystemKey,
)
from .index.prepared import Prepared
from .keys import open_master_keys, uses_token
from .newpatient import KnownPatients, NewPatient, NewPatients
from .query import Query, QueryEngine, phi_aad, phi_where
from .retention import study_date_of
from .vault import Vault

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass(frozen=True)
class StoreResult:
    """What happened to one stored object."""

    status: Literal["stored", "duplicate", "replaced"]
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_ref: int
    transfer_syntax: str


@dataclass
class _Pending:
    """An object whose blob is written and fsynced, waiting to be indexed."""

    values: dict[str, Any]  # every indexed attribute of ds, decoded once
    patient_ref: int
    key_id: str
    blob_key: str
    blob_size: int
    size: int
    content_type: str
    replaced: int | None
    outcome: StoreResult | ArchiveError
    inline: bytes | None = None  # the encrypted object, when it is kept in the index database
    frame_index: bytes | None = None  # JSON FrameIndex of a native object, known at ingest
    failed: bool = False
    actor: str = ""
    origin: str = ""
    new_patient: NewPatient | None = None  # created by the transaction that indexes this object

    def fail(self, exc: ArchiveError) -> None:
        if isinstance(self.outcome, StoreResult):
            exc.sop_class_uid = self.outcome.sop_class_uid
            exc.sop_instance_uid = self.outcome.sop_instance_uid
        self.outcome, self.failed = exc, True


@dataclass(frozen=True)
class InstanceInfo:
    """Where an instance is and what a front door needs to serve it (no PHI)."""

    id: int
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    series_uid: str
    study_uid: str
    patient_ref: int
    key_id: str
    blob_key: str
    blob_size: int
    size: int
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    instance_number: int | None
    content_type: str


@dataclass(frozen=True)
class Scope:
    """What a caller may see: everything (None) or one patient, optionally only some studies."""

    patient_ref: int
    study_uids: frozenset[str] | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Archive:
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
        self.engine = make_engine(settings.database_url)
        self.write_engine = make_engine(settings.database_url)
        if self.engine.dialect.name == "sqlite":
            _serialise_sqlite_writes(self.write_engine)
        upgrade(self.engine)
        self.sessions = sessions(self.engine)
        self._write_lock = WriteLock(self.write_engine)
        self.write_sessions: Any = sessions(self.write_engine)
        if self.engine.dialect.name == "sqlite":  # every write transaction waits on the lock
            self.write_sessions = LockedSessions(self.write_sessions, self._write_lock)
        with self.sessions() as s:  # a new key only for a new index: never beside existing data
            fresh = s.scalars(select(SystemKey).limit(1)).first() is None
        ring = open_master_keys(settings, create=create_key and fresh)
        self.vault = Vault(ring, self.write_sessions, read_sessions=self.sessions,
                           reload=lambda: open_master_keys(settings),
                           cache_size=settings.key_cache_size)
        self.vault.check_master_key()
        self.blobs = blobstores.build(settings, self.write_engine)  # files, S3 or dispersal
        self.inline_blobs = DatabaseBlobStore(self.engine)
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
        self._integrity_errors = (IntegrityError, self.write_engine.dialect.dbapi.IntegrityError)
        self._committing = False

    def close(self) -> None:
        if self._ingest_conn is not None:
            self._ingest_conn.close()
            self._ingest_conn = None
        self.engine.dispose()
        self.write_engine.dispose()

    # -- ingest ---------------------------------------------------------------------------------------

    def store(self, source: bytes | BinaryIO | os.PathLike | str, *, actor: str = "",
              origin: str = "", content_type: str = "") -> StoreResult:
        """Store one DICOM Part 10 object exactly as received. Raises BadInput, Duplicate, Conflict."""
        [result] = self.store_many([source], actor=actor, origin=origin, content_type=content_type)
        if isinstance(result, ArchiveError):
            try:
                raise result
            finally:  # this frame must not keep its own exception alive (a reference cycle)
                result = None  # type: ignore[assignment]
        return result

    def store_many(self, sources: Iterable[bytes | BinaryIO | os.PathLike | str], *, actor: str = "",
                   origin: str = "", content_type: str = "",
                   study_uid: str | None = None) -> list[StoreResult | ArchiveError]:
        """Store several objects; their blobs are written one by one, then indexed in one transaction.

        One commit for a whole STOW-RS request instead of one per instance. Each source gets its own
        result: a StoreResult, or the ArchiveError that refused it (the others are still stored),
        naming the object's UIDs when they could be read. ``study_uid``: refuse objects of any other
        study (StudyMismatch). ``sources`` may be a generator: each source is consumed before the
        next is asked for.
        """
        results: list[StoreResult | ArchiveError | _Pending] = []
        for source in sources:
            fp, close = _open_source(source)
            try:
                results.append(self._write_blob(fp, content_type, study_uid))
            except ArchiveError as exc:
                results.append(exc)
            except Exception as exc:  # one object fails alone; details in the server log
                if disk_full(exc):
                    log.warning("an object was refused: no space left for the archive")
                    results.append(StorageFull("no space left in the archive"))
                    continue
                log.exception("storing an object failed")
                results.append(ArchiveError("internal error while storing this object"))
            finally:
                if close:
                    fp.close()
        pending = [r for r in results if isinstance(r, _Pending)]
        if pending:
            files = [p.blob_key for p in pending if p.inline is None]
            if self.settings.fsync and files:  # every blob file durable before its index row commits
                try:
                    self.blobs.sync(files)
                except OSError as exc:
                    for key in files:
                        self.blobs.delete(key)
                    raise StorageFull(f"stored objects could not be made durable ({exc.strerror})") from None
            self._commit(pending, actor=actor, origin=origin)
        return [r.outcome if isinstance(r, _Pending) else r for r in results]

    def _write_blob(self, fp: BinaryIO, content_type: str, study_uid: str | None = None
                    ) -> StoreResult | _Pending:
        """Check the object, apply the duplicate policy, write its encrypted blob."""
        header = read_header(fp)
        v = header.values
        try:
            return self._write_checked(fp, header, content_type, study_uid)
        except ArchiveError as exc:  # name the object refused
            exc.sop_class_uid, exc.sop_instance_uid = v["SOPClassUID"], v["SOPInstanceUID"]
            raise

    def _write_checked(self, fp: BinaryIO, header: Header, content_type: str,
                       study_uid: str | None) -> StoreResult | _Pending:
        v = header.values
        if study_uid and v["StudyInstanceUID"] != study_uid:
            raise StudyMismatch("StudyInstanceUID differs from the study it was sent to")
        sop_uid = v["SOPInstanceUID"]
        study_uid, series_uid = v["StudyInstanceUID"], v["SeriesInstanceUID"]
        policy = self.settings.duplicate_policy
        replaced: int | None = None
        with self.engine.connect() as c:
            old_id = c.execute(_SQL.select_instance, {"uid": sop_uid}).scalar()
        if old_id is not None:
            with self.sessions() as s:
                old = s.get(Instance, old_id)
                if policy == "reject":
                    raise Duplicate(f"SOP Instance {sop_uid} is stored already")
                if policy == "keep":
                    info = self._info(s, old)
                    return StoreResult("duplicate", info.sop_class_uid, sop_uid, info.study_uid,
                                       info.series_uid, info.patient_ref, info.transfer_syntax)
                replaced = old.id
        patient_ref, key_id, new = self._patient_for(v, study_uid)
        dek = None
        if self.settings.encrypt:
            dek = new.dek if new is not None else self.vault.dek(key_id)
        outcome = StoreResult("replaced" if replaced is not None else "stored", v["SOPClassUID"],
                              sop_uid, study_uid, series_uid, patient_ref or 0,
                              header.transfer_syntax)
        size = fp.seek(0, io.SEEK_END)
        frames = native_frame_index(header.transfer_syntax, v, header.pixel_head, header.pixel_at, size)
        frame_index = json.dumps(frames.to_dict()).encode() if frames is not None else None
        if size <= self.settings.inline_blob_limit:  # kept in the index
            blob_key, sink = self.inline_blobs.new_key(), io.BytesIO()
            writer = EncryptingWriter(sink, dek, blob_key)
            _copy(fp, writer)
            data = sink.getvalue()
            return _Pending(v, patient_ref or 0, key_id, blob_key, len(data), writer.plain_size,
                            content_type, replaced, outcome, inline=data, frame_index=frame_index,
                            new_patient=new)
        blob_key = self.blobs.new_key()
        fh = self.blobs.create(blob_key)
        full = False
        try:
            writer = EncryptingWriter(fh, dek, blob_key)
            _copy(fp, writer)
            blob_size = self.blobs.commit(fh, durable=False)  # durable in store_many, one sync per batch
        except BaseException as exc:
            with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails again
                fh.close()
            self._discard_blob(blob_key)
            if not disk_full(exc):
                raise
            full = True
        if full:
            # raised here, not in the handler: the OSError's frames, and the views into the received
            # buffer they hold, go now (a receive spool cannot be closed while something views it)
            raise StorageFull("no space left in the blob store")

        return _Pending(v, patient_ref or 0, key_id, blob_key, blob_size,
                        writer.plain_size, content_type, replaced, outcome, frame_index=frame_index,
                        new_patient=new)

    def _commit(self, pending: list[_Pending], *, actor: str, origin: str) -> None:
        """Index the written blobs; whatever is not indexed loses its blob (its outcome is the error).

        Group commit (leader/follower, no extra thread): the caller who finds no commit running
        indexes every batch queued meanwhile by other threads (other associations, other requests)
        in one transaction, one WAL fsync, then wakes them. If that transaction fails, each object
        is indexed alone, so a bad one fails alone.
        """
        for p in pending:
            p.actor, p.origin = actor, origin
            if p.new_patient is None:  # keys are fetched before the write lock is taken, not under it
                self.vault.dek(p.key_id)
            if p.replaced is not None:
                self._delete_instances([p.replaced])
        done = threading.Event()
        with self._commit_lock:
            self._commit_queue.append((pending, done))
            lead = not self._committing
            self._committing = True
        if not lead:
            done.wait()
            return
        batches: list[tuple[list[_Pending], threading.Event]] = []
        try:
            while True:
                with self._commit_lock:
                    batches, self._commit_queue = self._commit_queue, []
                    if not batches:
                        self._committing = False
                        return
                self._index_all([p for batch, _ in batches for p in batch])
                for _, event in batches:
                    event.set()
        except BaseException:
            with self._commit_lock:  # let the next caller lead; wake everyone waiting on us
                self._committing = False
                batches += self._commit_queue
                self._commit_queue = []
            for batch, event in batches:
                for p in batch:
                    if p.outcome is not None and not p.failed and isinstance(p.outcome, StoreResult):
                        p.fail(ArchiveError("the index could not be written"))
                event.set()
            raise

    def _index_all(self, pending: list[_Pending]) -> None:
        try:
            try:
                with self._ingest_transaction() as c:
                    created: dict[bytes, tuple[int, str, bytes]] = {}
                    for p in pending:
                        self._index(c, p, actor=p.actor, origin=p.origin, created=created)
                self._created(pending)
                return
            except Exception:  # retried one by one below, where each error is kept
                log.debug("batch index transaction failed; indexing one by one", exc_info=True)
            self._index_one_by_one(pending)
        finally:
            for p in pending:
                if p.new_patient is not None:
                    self._new_patients.done(p.new_patient)

    def _created(self, pending: list[_Pending]) -> None:
        """After a commit: the new patients' keys and rows are known like any other now."""
        for p in pending:
            if p.new_patient is not None and not p.failed:
                if p.key_id == p.new_patient.key_id:
                    self.vault.remember(p.key_id, p.new_patient.dek)
                self._patients[p.new_patient.pid_hash] = (p.patient_ref, p.key_id)

    def _index_one_by_one(self, pending: list[_Pending]) -> None:
        for p in pending:
            for attempt in range(2):  # a concurrent creator of the same study/series: retry once
                try:
                    with self._ingest_transaction() as c:
                        self._index(c, p, actor=p.actor, origin=p.origin, created={})
                    self._created([p])
                    break
                except self._integrity_errors:
                    if self._has_instance(p.outcome.sop_instance_uid):  # type: ignore[union-attr]
                        p.fail(Duplicate("SOP Instance was stored concurrently"))
                        break
                    if attempt == 1:
                        p.fail(Conflict("the index refused the object (concurrent change); send it again"))
                except ArchiveError as exc:
                    p.fail(exc)
                    break
                except Exception as exc:  # e.g. the database is gone: refuse, keep serving
                    if disk_full(exc):
                        log.warning("an object was refused: no space left for the index")
                        p.fail(StorageFull("no space left for the index"))
                    else:
                        log.exception("could not index an object")
                        p.fail(ArchiveError("the index could not be written"))
                    break
            if p.failed and p.inline is None:
                self._discard_blob(p.blob_key)

    @contextlib.contextmanager
    def _ingest_transaction(self) -> Iterator[Connection]:
        """The write lock, then a transaction on this process's ingest connection.

        The connection stays open between stores (the write lock makes its use exclusive): a pool
        checkout, reset and return per store cost ~0.1 ms. After any error it is closed, so the next
        store starts on a fresh one.
        """
        with self._write_lock:
            conn = self._ingest_conn
            if conn is None:
                conn = self._ingest_conn = self.write_engine.connect()
            try:
                with conn.begin():
                    yield conn
            except BaseException:
                self._ingest_conn = None
                conn.close()
                raise

    def _has_instance(self, sop_uid: str) -> bool:
        with self.sessions() as s:
            return s.scalar(select(Instance.id).where(Instance.sop_uid == sop_uid)) is not None

    def _patient_for(self, v: dict[str, Any], study_uid: str
                     ) -> tuple[int | None, str, NewPatient | None]:
        """(row, key id, None) of a known patient; (None, key id, the new patient) of a new one.

        Nothing is written here: a new patient's key, row and tokens are written by the transaction
        that indexes the object (:meth:`_index`, storage/newpatient.py). Known patients are kept in
        a bounded LRU (pid hash -> row, key id): a patient row never changes its key, and a shredded
        one makes the index transaction fail (rowcount 0), which evicts it.
        """
        issuer = str(v.get("IssuerOfPatientID", ""))
        pid = str(v.get("PatientID", ""))
        pid_hash = self.vault.blind("pid", f"{issuer}|{pid}")
        known = self._patients.get(pid_hash)
        if known is None:
            new = self._new_patients.get(pid_hash)  # before the index: its creator removes it after
            if new is not None:  # this process is creating the patient right now: the same key
                return None, new.key_id, new
            with self.engine.connect() as c:  # reads only: no write lock, no commit
                row = _SQL.select_patient.execute(c, {"h": pid_hash}).fetchone()
            known = (row[0], row[1]) if row is not None else None
        if known is not None:
            self._check_study_owner(study_uid, known[0])
            self._patients[pid_hash] = known
            return known[0], known[1], None
        key_id, dek, wrapped = self.vault.mint_patient_key()
        values = _subset(v, "PATIENT")
        new = self._new_patients.claim(NewPatient(
            pid_hash, self.vault.blind("pid", pid), key_id, dek, wrapped, values,
            frozenset(self.blind.tokens("PATIENT", values))))
        # no study check here: another process may be creating this patient and the study right
        # now; the index transaction refuses a study of another patient (Conflict)
        return None, new.key_id, new

    def _ensure_patient(self, c: Connection, p: _Pending,
                        created: dict[bytes, tuple[int, str, bytes]]) -> bytes | None:
        """The patient of ``p`` in this transaction, created if new; returns the data key to seal
        with when it is not in the index yet. ``created``: patients this transaction wrote."""
        new = p.new_patient
        if new is None:
            return None
        got = created.get(new.pid_hash)
        if got is None:
            row = _SQL.select_patient.execute(c, {"h": new.pid_hash}).fetchone()
            if row is not None:  # created meanwhile by another process
                got = (row[0], row[1], b"")
        if got is None:
            now = _utcnow()
            _SQL.insert_key.execute(c, {"key_id": new.key_id, "kek_version": new.wrapped.kek_version,
                                        "wrapped": new.wrapped.blob, "created_at": now})
            phi = self.vault.seal(new.key_id, phi_aad("PATIENT", new.pid_hash.hex()), new.values,
                                  new.dek)
            patient_id = _SQL.insert_patient.execute(c, {
                "pid_hash": new.pid_hash, "id_hash": new.id_hash, "key_id": new.key_id, "phi": phi,
                "last_study_date": "", "last_received_at": now, "created_at": now, "num_studies": 0,
                "num_series": 0,
                "num_instances": 0}).fetchone()[0]
            _SQL.insert_patient_token.execute_many(
                c, [{"token": t, "patient_id": patient_id} for t in sorted(new.tokens)])
            got = created[new.pid_hash] = (patient_id, new.key_id, new.dek)
        patient_id, key_id, dek = got
        if key_id != p.key_id:  # our blob is under a key that lost the race: the patient's, now
            dek = dek or self.vault.dek(key_id)
            if self.settings.encrypt:
                self._rekey(p, key_id, dek)
            p.key_id = key_id
        p.patient_ref = patient_id
        p.outcome = dataclasses.replace(p.outcome, patient_ref=patient_id)  # type: ignore[arg-type]
        return dek or None

    def _rekey(self, p: _Pending, key_id: str, dek: bytes) -> None:
        """Re-encrypt ``p``'s blob under the patient's key ``key_id`` (see storage/newpatient.py)."""
        assert p.new_patient is not None
        old = p.new_patient.dek
        if p.inline is not None:
            blob_key, sink = self.inline_blobs.new_key(), io.BytesIO()
            with DecryptingReader(io.BytesIO(p.inline), old, p.blob_key, p.blob_size) as source:
                _copy(source, EncryptingWriter(sink, dek, blob_key))  # type: ignore[arg-type]
            p.inline, p.blob_key = sink.getvalue(), blob_key
            p.blob_size = len(p.inline)
            return
        blob_key = self.blobs.new_key()
        fh = self.blobs.create(blob_key)
        try:
            with DecryptingReader(self.blobs.open(p.blob_key), old, p.blob_key, p.blob_size) as source:
                _copy(source, EncryptingWriter(fh, dek, blob_key))  # type: ignore[arg-type]
            size = self.blobs.commit(fh, durable=self.settings.fsync)
        except BaseException:
            with contextlib.suppress(OSError):
                fh.close()
            self._discard_blob(blob_key)
            raise
        self._discard_blob(p.blob_key)
        p.blob_key, p.blob_size = blob_key, size

    def _check_study_owner(self, study_uid: str, patient_ref: int) -> None:
        """Refuse a study UID that belongs to another patient (cached; a mismatch is re-read)."""
        if self._study_owner.get(study_uid) == patient_ref:
            return
        with self.engine.connect() as c:
            owner = c.execute(_SQL.study_owner, {"uid": study_uid}).scalar()
        if owner is not None and owner != patient_ref:
            raise Conflict("StudyInstanceUID is already stored under a different patient")
        if owner is not None:
            if len(self._study_owner) > 100_000:
                self._study_owner.clear()
            self._study_owner[study_uid] = owner

    def _index(self, c: Connection, p: _Pending, *, actor: str, origin: str,
               created: dict[bytes, tuple[int, str, bytes]]) -> None:
        """Add one stored blob's rows (and its audit event) to the caller's transaction.

        Statements compiled once (``_SQL``, storage/index/prepared.py), not ORM objects: this runs
        per stored instance. Measured per store: ORM 10 ms, fresh Core statements 6 ms, cached Core
        statements ~1 ms, compiled statements on the DBAPI cursor ~0.6 ms.
        Rows are locked in one order (study, series, patient) so PostgreSQL writers never deadlock;
        SQLite write transactions are serialised already (BEGIN IMMEDIATE).
        """
        dek = self._ensure_patient(c, p, created)
        v, now, seal = p.values, _utcnow(), functools.partial(self.vault.seal, dek=dek)
        o = p.outcome
        assert isinstance(o, StoreResult)
        modality = str(v.get("Modality", ""))
        study = _SQL.select_study.execute(c, {"uid": o.study_uid}).fetchone()  # (id, patient, mods, classes)
        if study is None:
            values = _subset(v, "STUDY")
            accession = values.get("AccessionNumber")
            study_id = _SQL.insert_study.execute(c, {
                "patient_id": p.patient_ref, "study_uid": o.study_uid,
                "study_date": str(v.get("StudyDate", "")),
                "study_time": str(v.get("StudyTime", "")),
                "accession_hash": self.vault.blind("AccessionNumber", accession) if accession else None,
                "modalities": "", "sop_classes": "", "num_series": 0, "num_instances": 0,
                "phi": seal(p.key_id, phi_aad("STUDY", o.study_uid), values), "updated_at": now,
            }).fetchone()[0]
            _SQL.insert_study_token.execute_many(c, [{"token": t, "study_id": study_id}
                                                     for t in sorted(self.blind.tokens("STUDY", values))])
            modalities: list[str] = []
            classes: list[str] = []
        elif study[1] != p.patient_ref:
            raise Conflict("StudyInstanceUID is already stored under a different patient")
        else:
            study_id = study[0]
            modalities = [m for m in study[2].split("\\") if m]
            classes = [c_ for c_ in study[3].split("\\") if c_]
        series = _SQL.select_series.execute(c, {"uid": o.series_uid}).fetchone()  # (id, study)
        if series is None:
            series_values = _subset(v, "SERIES")
            series_id = _SQL.insert_series.execute(c, {
                "study_id": study_id, "series_uid": o.series_uid, "modality": modality,
                "series_number": _int(v.get("SeriesNumber")),
                "series_date": str(v.get("SeriesDate", "")),
                "series_time": str(v.get("SeriesTime", "")),
                "body_part": str(v.get("BodyPartExamined", ""))[:16], "num_instances": 0,
                "phi": seal(p.key_id, phi_aad("SERIES", o.series_uid), series_values),
                "updated_at": now,
            }).fetchone()[0]
            _SQL.insert_series_token.execute_many(
                c, [{"token": t, "series_id": series_id}
                    for t in sorted(self.blind.tokens("SERIES", series_values))])
        elif series[1] != study_id:
            raise Conflict("SeriesInstanceUID is already stored in a different study")
        else:
            series_id = series[0]
        if modality and modality not in modalities:
            modalities = sorted([*modalities, modality])
        if o.sop_class_uid not in classes:
            classes = [*classes, o.sop_class_uid]
        new_series = int(series is None)
        _SQL.update_study.execute(c, {"sid": study_id, "new_series": new_series, "now": now,
                                      "mods": "\\".join(modalities), "classes": "\\".join(classes)})
        _SQL.update_series.execute(c, {"rid": series_id, "now": now})
        done = _SQL.update_patient.execute(c, {"pid": p.patient_ref, "new_series": new_series,
                                               "new_study": int(study is None),
                                               "study_date": study_date_of(v), "received": now})
        if done.rowcount != 1:
            self._patients.clear()
            raise NotFound("the patient was removed while the object was being stored")
        if p.inline is not None:
            _SQL.insert_blob.execute(c, {"key": p.blob_key, "data": p.inline})
        _SQL.insert_instance.execute(c, {
            "series_id": series_id, "sop_uid": o.sop_instance_uid, "sop_class_uid": o.sop_class_uid,
            "transfer_syntax": o.transfer_syntax, "instance_number": _int(v.get("InstanceNumber")),
            "number_of_frames": _int(v.get("NumberOfFrames")), "rows": _int(v.get("Rows")),
            "columns": _int(v.get("Columns")), "content_type": p.content_type,
            "blob_key": p.blob_key, "blob_size": p.blob_size, "size": p.size,
            "phi": seal(p.key_id, phi_aad("IMAGE", o.sop_instance_uid), _subset(v, "IMAGE")),
            "received_at": now, "frame_index": p.frame_index})
        _SQL.insert_audit.execute(c, {
            "at": now, "actor": actor[:128], "action": "store", "outcome": "success",
            "patient_ref": p.patient_ref, "study_uid": o.study_uid, "source": origin[:128],
            "detail": o.sop_instance_uid})

    # -- queries --------------------------------------------------------------------------------------

    def find(self, query: Query) -> Iterator[dict[str, Any]]:
        """Matches of a C-FIND or QIDO-RS query, as ``{keyword: value}``."""
        return self.queries.run(query)

    def instances(self, study_uid: str | None = None, series_uid: str | None = None,
                  sop_uid: str | None = None, scope: Scope | None = None) -> list[InstanceInfo]:
        """The instances under a study/series/instance (in series, instance-number order).

        Raises NotFound when nothing matches (also when the UIDs exist outside ``scope``)."""
        params: dict[str, Any] = {"study": study_uid, "series": series_uid, "sop": sop_uid}
        if scope is not None:
            params["patient"] = scope.patient_ref
            if scope.study_uids is not None:
                params["scope_studies"] = sorted(scope.study_uids)
        shape = (bool(study_uid), bool(series_uid), bool(sop_uid), "patient" in params,
                 "scope_studies" in params)
        with self.engine.connect() as c:  # Core, statement built once per shape: every WADO request
            out = [InstanceInfo(*row) for row in c.execute(_instances_stmt(*shape), params)]
        if not out:
            raise NotFound("no such study, series or instance")
        return out

    def instance(self, study_uid: str, series_uid: str, sop_uid: str,
                 scope: Scope | None = None) -> InstanceInfo:
        """One instance by its three UIDs (frame and bulk-data requests); NotFound as :meth:`instances`.

        A viewer scrolling a series asks for every frame on its own, so this is one statement run on
        the DBAPI cursor (storage/index/prepared.py; ~25 µs, against ~100 µs through
        ``Connection.execute``), and it brings the instance's frame index along: the frame request
        that follows finds it in memory instead of asking the database again.
        """
        if scope is not None and scope.study_uids is not None and study_uid not in scope.study_uids:
            raise NotFound("no such study, series or instance")
        params: dict[str, Any] = {"study": study_uid, "series": series_uid, "sop": sop_uid}
        stmt = _SQL.one_instance
        if scope is not None:
            params["patient"] = scope.patient_ref
            stmt = _SQL.one_instance_of_patient
        with self.engine.connect() as c:
            row = stmt.execute(c, params).fetchone()
        if row is None:
            raise NotFound("no such study, series or instance")
        info = InstanceInfo(*row[:-1])
        if row[-1] and info.blob_key not in self._frame_indexes:
            self._remember_frame_index(info.blob_key, FrameIndex.from_dict(json.loads(bytes(row[-1]))))
        return info

    def _info(self, s: Session, inst: Instance) -> InstanceInfo:
        series = s.get(Series, inst.series_id)
        study = s.get(Study, series.study_id)
        patient = s.get(Patient, study.patient_id)
        return _info(inst, series, study, patient)

    def open(self, info: InstanceInfo) -> DecryptingReader:
        """A seekable plaintext stream of the stored Part 10 bytes."""
        dek = self.vault.dek(info.key_id)
        source = (self.inline_blobs if is_inline(info.blob_key) else self.blobs).open(info.blob_key)
        return DecryptingReader(source, dek, info.blob_key, info.blob_size)

    def read_bytes(self, info: InstanceInfo) -> bytes:
        with self.open(info) as r:
            return r.read()

    def header(self, info: InstanceInfo) -> Dataset:
        """The stored dataset up to (not including) its pixel data."""
        with self.open(info) as r:
            return pydicom.dcmread(io.BufferedReader(r, CHUNK), stop_before_pixels=True)

    def dataset(self, info: InstanceInfo) -> Dataset:
        """The whole stored dataset (for rendering and transcoding of single objects)."""
        with self.open(info) as r:
            return pydicom.dcmread(io.BufferedReader(r, CHUNK))

    def patient_values(self, patient_ref: int) -> dict[str, Any]:
        with self.sessions() as s:
            p = s.get(Patient, patient_ref)
            if p is None:
                raise NotFound("no such patient")
            return self.vault.unseal(p.key_id, phi_where("PATIENT", p), p.phi)

    def find_patient(self, patient_id: str, issuer: str = "") -> int:
        """The patient row for an ID (exact); NotFound if unknown."""
        with self.sessions() as s:
            p = s.scalars(select(Patient).where(
                Patient.pid_hash == self.vault.blind("pid", f"{issuer}|{patient_id}"))).first()
            if p is None:
                raise NotFound("no such patient")
            return p.id

    # -- frames ---------------------------------------------------------------------------------------

    def frame_index(self, info: InstanceInfo) -> FrameIndex:
        """Where each frame is in the stored object.

        An uncompressed object's index is stored at ingest (storage/frames.py,
        ``native_frame_index``); any other is computed on first use, then kept in the index.
        Keeping it is not on the request path: a viewer opening a series asks for each image once,
        and a commit (an fsync) per first frame cost ~3 ms of its ~8. New indexes are written in
        batches by a background thread (:meth:`_keep_frame_indexes`); until then, and after, this
        process answers from memory. A lost batch costs only a recomputation.
        """
        index = self._frame_indexes.get(info.blob_key)  # a stored object's own random name
        if index is not None:
            return index
        with self.engine.connect() as c:
            cached = c.execute(_SQL.frame_index, {"id": info.id}).scalar()
        if cached:
            index = FrameIndex.from_dict(json.loads(cached))
        else:
            with self.open(info) as r:
                index = index_frames(io.BufferedReader(r, CHUNK))
            self._frame_index_writes.put((info.id, info.blob_key, json.dumps(index.to_dict()).encode()))
            self._start_frame_index_writer()
        self._remember_frame_index(info.blob_key, index)
        return index

    def _remember_frame_index(self, blob_key: str, index: FrameIndex) -> None:
        if len(self._frame_indexes) > 10_000:
            self._frame_indexes.clear()
        self._frame_indexes[blob_key] = index

    def _start_frame_index_writer(self) -> None:
        with self._lock:
            if self._frame_index_writer is None:
                self._frame_index_writer = threading.Thread(
                    target=self._keep_frame_indexes, name="pacs-frame-index", daemon=True)
                self._frame_index_writer.start()

    def _keep_frame_indexes(self) -> None:
        """Write queued frame indexes, whatever has queued up in one transaction."""
        while True:
            batch = [self._frame_index_writes.get()]
            time.sleep(0.2)  # let a series' worth gather
            while not self._frame_index_writes.empty() and len(batch) < 1000:
                batch.append(self._frame_index_writes.get_nowait())
            try:
                with self.write_sessions.begin() as s:
                    for instance_id, blob_key, data in batch:  # the same object, not a reused id
                        s.execute(update(Instance)
                                  .where(Instance.id == instance_id, Instance.blob_key == blob_key)
                                  .values(frame_index=data))
            except Exception:  # a cache: recomputed on next use
                log.warning("could not keep %d frame index(es)", len(batch), exc_info=True)

    def read_frame(self, info: InstanceInfo, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: reads and decrypts only the segments it spans."""
        index = self.frame_index(info)
        with self.open(info) as r:
            return read_frame(r, index, number)

    # -- deletion and shredding --------------------------------------------------------------------

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
               actor: str = "", origin: str = "") -> int:
        """Delete a study, series or instance; returns how many instances went."""
        infos = self.instances(study_uid, series_uid, sop_uid)
        n = self._delete_instances([i.id for i in infos])
        self.audit.record("delete", actor=actor, source=origin, patient_ref=infos[0].patient_ref,
                          study_uid=study_uid, detail=f"{n} instance(s)")
        return n

    def _delete_instances(self, ids: list[int]) -> int:
        """Remove index rows (and empty parents, fixing counts), then their blobs."""
        blob_keys: list[str] = []
        with self.write_sessions.begin() as s:
            rows = s.execute(select(Instance.id, Instance.blob_key, Instance.series_id)
                             .where(Instance.id.in_(ids))).all()
            for _id, key, series_id in rows:
                blob_keys.append(key)
                series = s.get(Series, series_id)
                study = s.get(Study, series.study_id)
                patient = s.get(Patient, study.patient_id)
                s.execute(delete(Instance).where(Instance.id == _id))
                series.num_instances -= 1
                series.metadata_cache = None
                study.num_instances -= 1
                patient.num_instances -= 1
                if series.num_instances <= 0:
                    s.delete(series)
                    study.num_series -= 1
                    patient.num_series -= 1
                    s.flush()
                    mods = s.scalars(select(Series.modality).where(Series.study_id == study.id)).all()
                    study.modalities = "\\".join(sorted({m for m in mods if m}))
                if study.num_instances <= 0:
                    s.delete(study)
                    patient.num_studies -= 1
                s.flush()
            self.inline_blobs.delete_in(s.connection(), blob_keys)
        self._delete_files(blob_keys)
        return len(blob_keys)

    def shred_patient(self, patient_ref: int, *, actor: str = "", origin: str = "",
                      reason: str = "request", check: Callable[[Patient], None] | None = None) -> int:
        """Crypto-shred: destroy the patient's wrapped key first, then index rows and blobs.

        ``check`` sees the patient's row, locked, before anything is destroyed; raising aborts
        (a retention run re-checks that the patient is still due: storage/retention.py)."""
        with self.write_sessions.begin() as s:
            patient = s.get(Patient, patient_ref, with_for_update=True)
            if patient is None:
                raise NotFound("no such patient")
            if check is not None:
                check(patient)
            key_id = patient.key_id
            blob_keys = s.scalars(select(Instance.blob_key).join(Series).join(Study)
                                  .where(Study.patient_id == patient_ref)).all()
            # the wrapped key is destroyed now (patients.key_id references the row: it goes below)
            s.execute(update(PatientKey).where(PatientKey.key_id == key_id).values(wrapped=b""))
            s.merge(ShredLogEntry(key_id=key_id, shredded_at=_utcnow()))  # replayed on restores
        self.vault.forget(key_id)
        with self.write_sessions.begin() as s:
            study_ids = select(Study.id).where(Study.patient_id == patient_ref).scalar_subquery()
            series_ids = select(Series.id).where(Series.study_id.in_(study_ids)).scalar_subquery()
            s.execute(delete(Instance).where(Instance.series_id.in_(series_ids)))
            s.execute(delete(Series).where(Series.study_id.in_(study_ids)))
            s.execute(delete(Study).where(Study.patient_id == patient_ref))
            s.execute(delete(Patient).where(Patient.id == patient_ref))
            s.execute(delete(PatientKey).where(PatientKey.key_id == key_id))
            self.inline_blobs.delete_in(s.connection(), list(blob_keys))
        self.engine.dispose()  # idle readers would hold the WAL open
        purge_deleted(self.write_engine, wait_ms=1000)  # a retention run purges again at its end
        self._delete_files(blob_keys)
        self.audit.record("shred", actor=actor, source=origin, patient_ref=patient_ref,
                          detail=f"{reason}; {len(blob_keys)} object(s)")
        return len(blob_keys)

    def _delete_files(self, blob_keys: Iterable[str]) -> None:
        for key in blob_keys:
            if not is_inline(key):
                self._discard_blob(key)

    def _discard_blob(self, key: str) -> None:
        """Delete a blob no index row names (any more); if the store cannot now, the orphan sweep will."""
        try:
            self.blobs.delete(key)
        except (ArchiveError, OSError) as exc:
            log.warning("a blob could not be deleted now (%s); the orphan sweep will remove it",
                        type(exc).__name__)

    def blob_keys(self) -> set[str]:
        """Every stored blob's key: files and rows of the index database."""
        return set(self.blobs.keys()) | set(self.inline_blobs.keys())

    def sweep_orphans(self, grace_seconds: float = 3600) -> int:
        """Delete blobs no index row names (a crash between blob write and index commit)."""
        cutoff = time.time() - grace_seconds
        with self.sessions() as s:
            known = set(s.scalars(select(Instance.blob_key)).all())
        n = self.blobs.sweep_incomplete(cutoff)  # S3 multipart uploads a crash left open
        for key in list(self.blobs.keys(older_than=cutoff)):
            if key not in known:
                self.blobs.delete(key)
                n += 1
        if n:
            log.warning("removed %d orphan blob(s) left by an interrupted store", n)
        return n


def _subset(values: dict[str, Any], level: str) -> dict[str, Any]:
    """The values a level keeps encrypted in its ``phi`` column."""
    return {k: values[k] for k in PHI_BY_LEVEL[level] if k in values}  # type: ignore[index]


def _instance_select(*extra: Any) -> Any:
    """The InstanceInfo columns (in its field order), then ``extra``, over the joined hierarchy."""
    return (select(Instance.id, Instance.sop_uid, Instance.sop_class_uid, Instance.transfer_syntax,
                   Series.series_uid, Study.study_uid, Patient.id, Patient.key_id, Instance.blob_key,
                   Instance.blob_size, Instance.size, Instance.number_of_frames, Instance.rows,
                   Instance.columns, Instance.instance_number, Instance.content_type, *extra)
            .join(Series, Instance.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id))


def _one_instance_select() -> Any:
    """:meth:`Archive.instance`'s select: InstanceInfo's columns and the frame index, by three UIDs."""
    return _instance_select(Instance.frame_index).where(
        Study.study_uid == bindparam("study"), Series.series_uid == bindparam("series"),
        Instance.sop_uid == bindparam("sop"))


class _SQL:
    """Statements built once: the ingest path's (see ``Archive._index``) and the one-instance lookup."""

    select_instance = select(Instance.id).where(Instance.sop_uid == bindparam("uid"))
    select_patient = Prepared(select(Patient.id, Patient.key_id).where(Patient.pid_hash == bindparam("h")))
    insert_key = Prepared(insert(PatientKey))
    insert_patient = Prepared(insert(Patient).returning(Patient.id))
    insert_patient_token = Prepared(insert(PatientToken))
    insert_study_token = Prepared(insert(StudyToken))
    insert_series_token = Prepared(insert(SeriesToken))
    study_owner = select(Study.patient_id).where(Study.study_uid == bindparam("uid"))
    select_study = Prepared(select(Study.id, Study.patient_id, Study.modalities, Study.sop_classes)
                            .where(Study.study_uid == bindparam("uid")).with_for_update())
    insert_study = Prepared(insert(Study).returning(Study.id))
    select_series = Prepared(select(Series.id, Series.study_id)
                             .where(Series.series_uid == bindparam("uid")).with_for_update())
    insert_series = Prepared(insert(Series).returning(Series.id))
    update_study = Prepared(update(Study).where(Study.id == bindparam("sid")).values(
        num_instances=Study.num_instances + 1, num_series=Study.num_series + bindparam("new_series"),
        updated_at=bindparam("now"), modalities=bindparam("mods"), sop_classes=bindparam("classes")))
    update_series = Prepared(update(Series).where(Series.id == bindparam("rid")).values(
        num_instances=Series.num_instances + 1, metadata_cache=None, updated_at=bindparam("now")))
    update_patient = Prepared(update(Patient).where(Patient.id == bindparam("pid")).values(
        num_instances=Patient.num_instances + 1,
        num_series=Patient.num_series + bindparam("new_series"),
        num_studies=Patient.num_studies + bindparam("new_study"),
        # the retention clock (storage/retention.py): each only ever moves forward
        last_study_date=case((Patient.last_study_date < bindparam("study_date"), bindparam("study_date")),
                             else_=Patient.last_study_date),
        last_received_at=case((or_(Patient.last_received_at.is_(None),
                                   Patient.last_received_at < bindparam("received", type_=DateTime)),
                               bindparam("received", type_=DateTime)),
                              else_=Patient.last_received_at)))
    insert_instance = Prepared(insert(Instance))
    insert_audit = Prepared(insert(AuditEvent))
    insert_blob = Prepared(insert(InlineBlob))
    frame_index = select(Instance.frame_index).where(Instance.id == bindparam("id"))
    one_instance = Prepared(_one_instance_select())
    one_instance_of_patient = Prepared(_one_instance_select().where(Patient.id == bindparam("patient")))


@functools.cache
def _instances_stmt(study: bool, series: bool, sop: bool, patient: bool, scope_studies: bool) -> Any:
    """The select behind :meth:`Archive.instances` for one combination of filters (InstanceInfo order)."""
    stmt = _instance_select()
    if study:
        stmt = stmt.where(Study.study_uid == bindparam("study"))
    if series:
        stmt = stmt.where(Series.series_uid == bindparam("series"))
    if sop:
        stmt = stmt.where(Instance.sop_uid == bindparam("sop"))
    if patient:
        stmt = stmt.where(Patient.id == bindparam("patient"))
    if scope_studies:
        stmt = stmt.where(Study.study_uid.in_(bindparam("scope_studies", expanding=True)))
    return stmt.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)


def _info(inst: Instance, series: Series, study: Study, patient: Patient) -> InstanceInfo:
    return InstanceInfo(inst.id, inst.sop_uid, inst.sop_class_uid, inst.transfer_syntax,
                        series.series_uid, study.study_uid, patient.id, patient.key_id,
                        inst.blob_key, inst.blob_size, inst.size, inst.number_of_frames,
                        inst.rows, inst.columns, inst.instance_number, inst.content_type)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _copy(fp: BinaryIO, writer: EncryptingWriter) -> None:
    """All of ``fp`` into ``writer``, which is then closed; an in-memory source goes in as one view."""
    if isinstance(fp, io.BytesIO):
        with fp.getbuffer() as view:
            writer.write_last(view)
        return
    fp.seek(0)
    shutil.copyfileobj(fp, writer, CHUNK)
    writer.close()


def _open_source(source: bytes | BinaryIO | os.PathLike | str) -> tuple[BinaryIO, bool]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source), True
    if isinstance(source, (str, os.PathLike)):
        return open(Path(source), "rb", buffering=CHUNK), True
    return source, False


def _serialise_sqlite_writes(engine: Any) -> None:
    """SQLite: every write transaction takes the write lock at BEGIN (no deadlocking upgrades)."""

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn, _record):
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
