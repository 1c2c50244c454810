"""Removal: delete (study, series, instance), crypto-shred a patient, and sweep orphan blobs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from sqlalchemy import (
    delete,
    select,
    update,
)

from .. import cluster
from ..errors import (
    NotFound,
)
from ..index.db import purge_deleted
from ..index.models import (
    Instance,
    Patient,
    PatientKey,
    Series,
    ShredLogEntry,
    Study,
)
from .records import Scope, _utcnow
from .state import ArchiveState

log = logging.getLogger(__name__)


class Removal(ArchiveState):
    """Take objects out of the index and their blobs out of the blob store.

    Calls on other rooms: ``instances`` (:mod:`.reading`).
    """

    # -- deletion and shredding --------------------------------------------------------------------

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *,
               actor: str = "", origin: str = "", scope: Scope | None = None) -> int:
        """Delete a study, series or instance; returns how many instances went (NotFound as
        :meth:`instances`: outside ``scope`` is unknown)."""
        infos = self.instances(study_uid, series_uid, sop_uid, scope=scope)
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
            cluster.bump(s.connection(), cluster.SHRED)  # other nodes forget the key
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
        self.sealed.discard_stored(blob_keys)

    def _discard_blob(self, key: str) -> None:
        """Delete a blob no index row names (any more); if the store cannot now, the orphan sweep will."""
        self.sealed.discard(key)

    def blob_keys(self) -> set[str]:
        """Every stored blob's key: files and rows of the index database."""
        return set(self.sealed.keys())

    def sweep_orphans(self, grace_seconds: float = 3600) -> int:
        """Delete blobs no index row names (a crash between blob write and index commit)."""
        cutoff = time.time() - grace_seconds
        with self.sessions() as s:
            known = set(s.scalars(select(Instance.blob_key)).all())
        n: int = self.blobs.sweep_incomplete(cutoff)  # S3 multipart uploads a crash left open
        for key in list(self.blobs.keys(older_than=cutoff)):
            if key not in known:
                self.blobs.delete(key)
                n += 1
        if n:
            log.warning("removed %d orphan blob(s) left by an interrupted store", n)
        return n
