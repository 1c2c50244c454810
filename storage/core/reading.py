"""Reading: queries, instance lookups and opening stored objects as plaintext streams."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import (
    select,
)
from sqlalchemy.orm import Session

from ..crypto import DecryptingReader
from ..errors import (
    NotFound,
)
from ..frames import FrameIndex
from ..index.models import (
    Instance,
    Patient,
    Series,
    Study,
)
from ..query import Query, phi_where
from ..tenancy import DEFAULT, ProviderRef, patient_identity
from .records import CHUNK, InstanceInfo, Scope
from .state import ArchiveState
from .statements import _SQL, _info, _instances_stmt

log = logging.getLogger(__name__)


class Reading(ArchiveState):
    """Find instances and open their decrypted bytes.

    Calls on other rooms: ``_remember_frame_index`` (:mod:`.frame_cache`).
    """

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
            if scope.patient_ref is not None:
                params["patient"] = scope.patient_ref
            if scope.study_uids is not None:
                params["scope_studies"] = sorted(scope.study_uids)
            if scope.provider_id is not None:
                params["provider"] = scope.provider_id
        shape = (bool(study_uid), bool(series_uid), bool(sop_uid), "patient" in params,
                 "scope_studies" in params, "provider" in params)
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
        if scope is not None and scope.patient_ref is not None:
            params["patient"] = scope.patient_ref
            stmt = _SQL.one_instance_of_patient
        if scope is not None and scope.provider_id is not None:
            params["provider"] = scope.provider_id
            stmt = _SQL.one_instance_of_provider if stmt is _SQL.one_instance \
                else _SQL.one_instance_of_patient_of_provider
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
        assert series is not None  # the foreign keys hold the rows together
        study = s.get(Study, series.study_id)
        assert study is not None
        patient = s.get(Patient, study.patient_id)
        assert patient is not None
        return _info(inst, series, study, patient)

    def open(self, info: InstanceInfo) -> DecryptingReader:
        """A seekable plaintext stream of the stored Part 10 bytes."""
        return self.sealed.open(info.blob_key, info.blob_size, self.vault.dek(info.key_id))

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

    def find_patient(self, patient_id: str, issuer: str = "", provider: ProviderRef | None = None) -> int:
        """The patient row for an ID (exact) of ``provider`` (None: default); NotFound if unknown."""
        identity = patient_identity(provider or DEFAULT, issuer, patient_id)
        with self.sessions() as s:
            p: Patient | None = s.scalars(select(Patient).where(
                Patient.pid_hash == self.vault.blind("pid", identity))).first()
            if p is None:
                raise NotFound("no such patient")
            return p.id
