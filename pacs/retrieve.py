"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3).

The identifier (level + unique keys, UID lists allowed: PS3.4 C.4.2.2.1) resolves to stored
instances through the archive; pynetdicom's Q/R service class runs the C-STORE sub-operations
(on a new association to the move destination, or on the C-GET association itself), sends the
pending responses with the counts and the final Success / Warning 0xB000 / Failure with the
FailedSOPInstanceUIDList. Each instance is read and sent one at a time (see ``scu.py``).

A destination we know but cannot reach (switched off, refusing): pynetdicom answers that with
A801 "Move Destination unknown"; with the patches on (:mod:`pacs.dimse.move`) the answer is A702
"Refused: Out of resources - unable to perform sub-operations" naming the destination.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

from pydicom.dataset import Dataset
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # pynetdicom makes its SOP classes at import time
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from storage.archive import Archive, InstanceInfo, Scope
from storage.config import Settings
from storage.errors import NotFound
from storage.query import Query

from .dimse import move
from .find import IdentifierError, as_query_value, parse_level
from .scu import AssociationHolder, accepted_syntaxes, dataset_for_peer, proposed_contexts
from .status import (
    CANCEL,
    DATASET_MISMATCH,
    NOT_AUTHORIZED,
    PENDING,
    UNABLE_TO_PROCESS,
    status,
)
from .tenancy import REFUSED_COMMENT, Refused, Tenants

log = logging.getLogger(__name__)
_STUDY_ROOT = (StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet)


def _uids(identifier: Dataset, keyword: str) -> list[str]:
    value = identifier.get(keyword)
    if value in (None, ""):
        return []
    return [u.strip() for u in as_query_value(value).split("\\") if u.strip()]


def resolve(archive: Archive, identifier: Dataset, model_uid: str,
            scope: Scope | None = None) -> list[InstanceInfo]:
    """The instances a retrieve identifier names (PS3.4 C.4.2.2.1: unique keys, or UID lists)
    that ``scope`` (the association's provider) may see: others are as unknown."""
    level = parse_level(identifier, model_uid, study_root_models=_STUDY_ROOT)
    if level == "PATIENT":
        pids = _uids(identifier, "PatientID")
        if not pids:
            raise IdentifierError(DATASET_MISMATCH, "PatientID is required at PATIENT level")
        studies = [m["StudyInstanceUID"] for pid in pids
                   for m in archive.find(Query("STUDY", filters={"PatientID": pid}).within(scope))]
        return _collect(archive, [{"study_uid": s} for s in dict.fromkeys(studies)], scope)
    key, selector = _SELECTORS[level]
    uids = _uids(identifier, key)
    if not uids:
        raise IdentifierError(DATASET_MISMATCH, f"{key} is required at {level} level")
    return _collect(archive, [selector(u) for u in dict.fromkeys(uids)], scope)


class _Selector(TypedDict, total=False):
    """Keyword arguments of ``Archive.instances``: the instances under one UID."""

    study_uid: str
    series_uid: str
    sop_uid: str


_SELECTORS: dict[str, tuple[str, Callable[[str], _Selector]]] = {
    "STUDY": ("StudyInstanceUID", lambda u: {"study_uid": u}),
    "SERIES": ("SeriesInstanceUID", lambda u: {"series_uid": u}),
    "IMAGE": ("SOPInstanceUID", lambda u: {"sop_uid": u}),
}


def _collect(archive: Archive, selectors: list[_Selector],
             scope: Scope | None = None) -> list[InstanceInfo]:
    out: dict[int, InstanceInfo] = {}
    for sel in selectors:
        try:
            for info in archive.instances(**sel, scope=scope):
                out.setdefault(info.id, info)
        except NotFound:
            continue
    return list(out.values())


def _who(event: Event) -> tuple[str, str]:
    req = event.assoc.requestor
    return req.ae_title, f"{req.address}:{req.port}"


def _audit(archive: Archive, event: Event, infos: list[InstanceInfo], detail: str, outcome: str,
           action: str = "retrieve") -> None:
    """One audit record per study retrieved (PS3.15 A.5 spirit); never fails the retrieve."""
    actor, origin = _who(event)
    studies: dict[str, int] = {}
    for i in infos:
        studies.setdefault(i.study_uid, i.patient_ref)
    for study_uid, patient_ref in studies.items():
        try:
            archive.audit.record(action, actor=actor, source=origin, outcome=outcome,
                                 patient_ref=patient_ref, study_uid=study_uid, detail=detail)
        except Exception:
            log.exception("audit record failed")


def _resolve_or_fail(archive: Archive, event: Event, tenants: Tenants | None = None
                     ) -> tuple[list[InstanceInfo] | None, Dataset | None]:
    try:
        scope = tenants.of(event.assoc).scope if tenants is not None else None
        return resolve(archive, event.identifier, str(event.request.AffectedSOPClassUID), scope), None
    except IdentifierError as exc:
        return None, status(exc.code, str(exc))
    except Refused:
        return None, status(NOT_AUTHORIZED, REFUSED_COMMENT)
    except Exception as exc:  # unreadable identifier, index failure
        log.warning("retrieve: identifier not resolved: %s", type(exc).__name__)
        return None, status(UNABLE_TO_PROCESS, "retrieve failed; see the server log")


def handle_move(event: Event, archive: Archive, settings: Settings,
                tenants: Tenants | None = None) -> Iterator[Any]:
    """EVT_C_MOVE handler (PS3.4 C.4.2.3): destination, sub-operation count, then one dataset each."""
    dest = settings.destinations.get((event.move_destination or "").strip())
    move.note_destination(event.assoc, dest.ae_title if dest is not None else None)
    if dest is None:
        log.info("C-MOVE to unknown destination refused")
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    infos, failure = _resolve_or_fail(archive, event, tenants)
    holder = AssociationHolder()
    contexts = proposed_contexts(infos or [])
    yield dest.host, dest.port, {"contexts": contexts or None, "evt_handlers": holder.handlers()}
    if failure is not None:
        yield 1  # pynetdicom needs a count before a status; the failure ends the operation
        yield failure, None
        return
    assert infos is not None
    yield len(infos)
    yield from _sub_operations(archive, event, infos, lambda sop: accepted_syntaxes(holder.assoc, sop),
                               f"C-MOVE to {dest.ae_title}")


def handle_get(event: Event, archive: Archive, settings: Settings,
               tenants: Tenants | None = None) -> Iterator[Any]:
    """EVT_C_GET handler (PS3.4 C.4.3.3): C-STORE sub-operations on the requesting association."""
    infos, failure = _resolve_or_fail(archive, event, tenants)
    if failure is not None:
        yield 1
        yield failure, None
        return
    assert infos is not None
    yield len(infos)
    yield from _sub_operations(archive, event, infos,
                               lambda sop: accepted_syntaxes(event.assoc, sop, as_scu_on_get=True), "C-GET")


def _sub_operations(archive: Archive, event: Event, infos: list[InstanceInfo],
                    accepted: Callable[[str], set[str]],
                    detail: str) -> Iterator[tuple[Any, Any]]:
    if infos:  # Begin Transferring DICOM Instances (PS3.15 A.5.3.3), one per study
        _audit(archive, event, infos, f"{detail}: {len(infos)} instance(s) to send", "success",
               "retrieve-begin")
    for sent, info in enumerate(infos):
        if event.is_cancelled:
            _audit(archive, event, infos[:sent], f"{detail}: cancelled after {sent}", "cancelled")
            yield CANCEL, None
            return
        yield PENDING, dataset_for_peer(archive, info, accepted(info.sop_class_uid))
    _audit(archive, event, infos, f"{detail}: {len(infos)} instance(s)", "success")
