"""The index rows of one stored object: its patient (known, or new with a fresh key), study,
series, instance and audit event, written with the compiled statements of :mod:`.statements`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from sqlalchemy import (
    Connection,
)

from ..errors import (
    Conflict,
    NotFound,
)
from ..newpatient import NewPatient
from ..query import phi_aad
from ..retention import study_date_of
from ..tenancy import DEFAULT, FOREIGN_STUDY, ProviderRef, patient_identity
from .records import StoreResult, _Pending, _utcnow
from .state import ArchiveState
from .statements import _SQL, _int, _subset

log = logging.getLogger(__name__)


class IndexRows(ArchiveState):
    """The patient, study, series and instance rows one stored object adds (inside the commit).

    Calls on other rooms: ``_rekey`` (:mod:`.ingest_commit`).
    """

    def _patient_for(self, v: dict[str, Any], study_uid: str, provider: ProviderRef = DEFAULT
                     ) -> tuple[int | None, str, NewPatient | None]:
        """(row, key id, None) of a known patient; (None, key id, the new patient) of a new one.

        Nothing is written here: a new patient's key, row and tokens are written by the transaction
        that indexes the object (:meth:`_index`, storage/newpatient.py). Known patients are kept in
        a bounded LRU (pid hash -> row, key id): a patient row never changes its key, and a shredded
        one makes the index transaction fail (rowcount 0), which evicts it.
        """
        issuer = str(v.get("IssuerOfPatientID", ""))
        pid = str(v.get("PatientID", ""))
        pid_hash = self.vault.blind("pid", patient_identity(provider, issuer, pid))
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
            frozenset(self.blind.tokens("PATIENT", values)), provider.id))
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
                "num_instances": 0, "provider_id": new.provider_id}).fetchone()[0]
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
        assert isinstance(p.outcome, StoreResult)  # not failed: it is being indexed
        p.outcome = dataclasses.replace(p.outcome, patient_ref=patient_id)
        return dek or None

    def _check_study_owner(self, study_uid: str, patient_ref: int) -> None:
        """Refuse a study UID that belongs to another patient (cached; a mismatch is re-read)."""
        if self._study_owner.get(study_uid) == patient_ref:
            return
        with self.engine.connect() as c:
            owner = c.execute(_SQL.study_owner, {"uid": study_uid}).scalar()
        if owner is not None and owner != patient_ref:
            raise Conflict(FOREIGN_STUDY)
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
            tokens = p.study_tokens if p.study_tokens is not None else self.blind.tokens("STUDY", values)
            _SQL.insert_study_token.execute_many(c, [{"token": t, "study_id": study_id}
                                                     for t in sorted(tokens)])
            modalities: list[str] = []
            classes: list[str] = []
        elif study[1] != p.patient_ref:
            raise Conflict(FOREIGN_STUDY)
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
            tokens = (p.series_tokens if p.series_tokens is not None
                      else self.blind.tokens("SERIES", series_values))
            _SQL.insert_series_token.execute_many(
                c, [{"token": t, "series_id": series_id} for t in sorted(tokens)])
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
