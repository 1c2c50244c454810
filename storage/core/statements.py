"""The SQL the archive runs, built once: the ingest path's compiled statements (``_SQL``,
storage/index/prepared.py), the instance lookups, and the row helpers they share.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from sqlalchemy import (
    DateTime,
    bindparam,
    case,
    insert,
    or_,
    select,
    update,
)

from ..attributes import PHI_BY_LEVEL
from ..index.models import (
    AuditEvent,
    InlineBlob,
    Instance,
    Patient,
    PatientKey,
    PatientToken,
    Series,
    SeriesToken,
    Study,
    StudyToken,
)
from ..index.prepared import Prepared
from ..tenancy import provider_is
from .records import InstanceInfo

log = logging.getLogger(__name__)


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
    one_instance_of_provider = Prepared(_one_instance_select().where(
        provider_is(Patient.provider_id, bindparam("provider"))))
    one_instance_of_patient_of_provider = Prepared(_one_instance_select().where(
        Patient.id == bindparam("patient"), provider_is(Patient.provider_id, bindparam("provider"))))


@functools.cache
def _instances_stmt(study: bool, series: bool, sop: bool, patient: bool, scope_studies: bool,
                    provider: bool = False) -> Any:
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
    if provider:
        stmt = stmt.where(provider_is(Patient.provider_id, bindparam("provider")))
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
