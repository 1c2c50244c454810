"""Ingest and the group commit: :meth:`Archive.store` / :meth:`Archive.store_many`.

Each object is read as received (its header, storage/header.py), checked against the duplicate
policy, sealed into a new blob by :mod:`storage.core.sealed` (or, when small, into bytes kept in
the index, storage/blobstore.py ``DatabaseBlobStore``), then indexed by the group commit: the caller who
finds no commit running indexes every batch queued meanwhile in one transaction. The rows one
object adds are written by :mod:`storage.core.index_rows`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import (
    Connection,
    select,
)

from ..errors import (
    ArchiveError,
    Conflict,
    Duplicate,
    StorageFull,
    StudyMismatch,
    disk_full,
)
from ..frames import native_frame_index
from ..header import Header, read_header
from ..index.models import (
    Instance,
    Patient,
    Series,
    Study,
)
from ..tenancy import DEFAULT, FOREIGN_UID, ProviderRef, issuer_for
from .records import CHUNK, StoreResult, _Pending
from .state import ArchiveState
from .statements import _SQL, _subset

log = logging.getLogger(__name__)


class Ingest(ArchiveState):
    """Store objects: check, seal the blob (:mod:`.sealed`), then index it in a group commit.

    Calls on other rooms: ``_patient_for``, ``_index`` (:mod:`.index_rows`), ``_info``
    (:mod:`.reading`), ``_delete_instances`` and ``_discard_blob`` (:mod:`.removal`).
    """

    # -- ingest ---------------------------------------------------------------------------------------

    def store(self, source: bytes | BinaryIO | os.PathLike[str] | str, *, actor: str = "",
              origin: str = "", content_type: str = "",
              provider: ProviderRef | None = None) -> StoreResult:
        """Store one DICOM Part 10 object exactly as received. Raises BadInput, Duplicate, Conflict."""
        [result] = self.store_many([source], actor=actor, origin=origin, content_type=content_type,
                                   provider=provider)
        if isinstance(result, ArchiveError):
            try:
                raise result
            finally:  # this frame must not keep its own exception alive (a reference cycle)
                result = None  # type: ignore[assignment]
        return result

    def store_many(self, sources: Iterable[bytes | BinaryIO | os.PathLike[str] | str], *, actor: str = "",
                   origin: str = "", content_type: str = "",
                   study_uid: str | None = None,
                   provider: ProviderRef | None = None) -> list[StoreResult | ArchiveError]:
        """Store several objects; their blobs are written one by one, then indexed in one transaction.

        One commit for a whole STOW-RS request instead of one per instance. Each source gets its own
        result: a StoreResult, or the ArchiveError that refused it (the others are still stored),
        naming the object's UIDs when they could be read. ``study_uid``: refuse objects of any other
        study (StudyMismatch). ``sources`` may be a generator: each source is consumed before the
        next is asked for. ``provider``: whose patients they are (storage/tenancy.py; None: default).
        """
        provider = provider or DEFAULT
        results: list[StoreResult | ArchiveError | _Pending] = []
        for source in sources:
            fp, close = _open_source(source)
            try:
                results.append(self._write_blob(fp, content_type, study_uid, provider))
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

    def _write_blob(self, fp: BinaryIO, content_type: str, study_uid: str | None = None,
                    provider: ProviderRef = DEFAULT) -> StoreResult | _Pending:
        """Check the object, apply the duplicate policy, write its encrypted blob."""
        header = read_header(fp)
        v = header.values
        try:
            return self._write_checked(fp, header, content_type, study_uid, provider)
        except ArchiveError as exc:  # name the object refused
            exc.sop_class_uid, exc.sop_instance_uid = v["SOPClassUID"], v["SOPInstanceUID"]
            raise

    def _write_checked(self, fp: BinaryIO, header: Header, content_type: str,
                       study_uid: str | None, provider: ProviderRef = DEFAULT) -> StoreResult | _Pending:
        v = header.values
        if not provider.is_default and not v.get("IssuerOfPatientID"):
            v["IssuerOfPatientID"] = issuer_for(provider, "")  # in the index; the bytes stay
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
                if _provider_of_instance(s, old) != provider.id:  # another provider's: never
                    raise Conflict(FOREIGN_UID)  # replaced, never "kept" (storage/tenancy.py)
                if policy == "reject":
                    raise Duplicate(f"SOP Instance {sop_uid} is stored already")
                if policy == "keep":
                    info = self._info(s, old)
                    return StoreResult("duplicate", info.sop_class_uid, sop_uid, info.study_uid,
                                       info.series_uid, info.patient_ref, info.transfer_syntax)
                replaced = old.id
        patient_ref, key_id, new = self._patient_for(v, study_uid, provider)
        study_tokens = series_tokens = None
        if new is not None or study_uid not in self._study_owner:  # a study new to the index
            study_tokens = frozenset(self.blind.tokens("STUDY", _subset(v, "STUDY")))
            series_tokens = frozenset(self.blind.tokens("SERIES", _subset(v, "SERIES")))
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
            blob_key, data, plain_size = self.sealed.seal_inline(fp, dek)
            return _Pending(v, patient_ref or 0, key_id, blob_key, len(data), plain_size,
                            content_type, replaced, outcome, inline=data, frame_index=frame_index,
                            new_patient=new, study_tokens=study_tokens, series_tokens=series_tokens)
        blob_key, blob_size, plain_size = self.sealed.seal(fp, dek)
        return _Pending(v, patient_ref or 0, key_id, blob_key, blob_size,
                        plain_size, content_type, replaced, outcome, frame_index=frame_index,
                        new_patient=new, study_tokens=study_tokens, series_tokens=series_tokens)

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
                    if self._has_instance(p.outcome.sop_instance_uid):
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

    def _rekey(self, p: _Pending, key_id: str, dek: bytes) -> None:
        """Re-encrypt ``p``'s blob under the patient's key ``key_id`` (see storage/newpatient.py)."""
        assert p.new_patient is not None
        old = p.new_patient.dek
        if p.inline is not None:
            p.blob_key, p.inline = self.sealed.reseal_inline(p.inline, p.blob_key, p.blob_size, old, dek)
            p.blob_size = len(p.inline)
            return
        p.blob_key, p.blob_size = self.sealed.reseal(p.blob_key, p.blob_size, old, dek,
                                                     durable=self.settings.fsync)


def _open_source(source: bytes | BinaryIO | os.PathLike[str] | str) -> tuple[BinaryIO, bool]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source), True
    if isinstance(source, (str, os.PathLike)):
        return open(Path(source), "rb", buffering=CHUNK), True
    return source, False


def _provider_of_instance(s: Any, inst: Instance) -> int:
    """The provider of the patient a stored instance belongs to (a duplicate's owner)."""
    owner: int = s.scalar(select(Patient.provider_id).join(Study, Study.patient_id == Patient.id)
                          .join(Series, Series.study_id == Study.id).where(Series.id == inst.series_id))
    return owner
