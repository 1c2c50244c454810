"""C-FIND SCP (PS3.4 C.4.1, C.6.1/C.6.2): translate the identifier into one Query, yield matches.

Patient Root supports PATIENT/STUDY/SERIES/IMAGE; Study Root has no PATIENT level (PS3.4 C.6.2),
so a PATIENT-level query on it is refused with 0xA900 (Identifier does not match SOP Class), as
dcmtk's ``dcmqrscp`` does. Keys of every level at or above the query level filter (relational
queries are fine, PS3.4 C.4.1.2.2.1); only the requested keys are returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.events import Event
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from storage.archive import Archive
from storage.attributes import LEVELS, UNIQUE_KEY
from storage.config import Settings
from storage.errors import BadInput
from storage.query import Query

from .status import (
    CANCEL,
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    NOT_AUTHORIZED,
    PENDING,
    UNABLE_TO_PROCESS,
    status,
)
from .tenancy import REFUSED_COMMENT, Refused, Tenants

log = logging.getLogger(__name__)

#: Identifier elements that steer the query rather than match (PS3.4 C.4.1.1.3).
CONTROL_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC",
                "QueryRetrieveView", "InstanceAvailability"}


class IdentifierError(Exception):
    """The identifier cannot be turned into a query; carries the DIMSE status to answer."""

    def __init__(self, code: int, comment: str):
        super().__init__(comment)
        self.code = code


def parse_level(identifier: Dataset, model_uid: str, *, study_root_models: tuple[str, ...]) -> str:
    """The QueryRetrieveLevel, checked against the information model (PS3.4 C.6.1, C.6.2)."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        raise IdentifierError(DATASET_MISMATCH, "QueryRetrieveLevel is missing")
    if level not in LEVELS:
        raise IdentifierError(DATASET_MISMATCH, f"unknown QueryRetrieveLevel {level[:16]}")
    if level == "PATIENT" and model_uid in study_root_models:
        raise IdentifierError(DATASET_MISMATCH, "Study Root has no PATIENT level")
    return level


def as_query_value(value: Any) -> str:
    """A DICOM matching string from a pydicom value ('\\' joins UID lists and multi-values)."""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def identifier_to_query(identifier: Dataset, level: str) -> Query:
    """Filters are the non-empty keys, return keys are all keys of the identifier."""
    filters: dict[str, str] = {}
    keys: list[str] = []
    for elem in identifier:
        kw = elem.keyword or keyword_for_tag(elem.tag)
        if not kw or kw in CONTROL_KEYS or elem.tag.group in (0x0000, 0x0002):
            continue
        keys.append(kw)
        if elem.VR == "SQ" or elem.value in (None, "", b"") or elem.is_empty:
            continue
        if isinstance(elem.value, (bytes, bytearray)):
            continue
        filters[kw] = as_query_value(elem.value)
    return Query(level=level, filters=filters, return_keys=keys)  # type: ignore[arg-type]


def response_identifier(match: dict[str, Any], identifier: Dataset, level: str, ae_title: str) -> Dataset:
    """Only the requested keys, filled from the match (empty when unknown), plus the level's unique key."""
    out = Dataset()
    non_ascii = False
    for elem in identifier:
        kw = elem.keyword
        if not kw or kw in CONTROL_KEYS or elem.tag.group in (0x0000, 0x0002):
            continue
        if elem.VR == "SQ":
            out.add(DataElement(elem.tag, "SQ", []))  # sequence matching is not supported: empty
            continue
        value = match.get(kw)
        out.add(_element(elem.tag, elem.VR, value))
        non_ascii = non_ascii or (isinstance(value, str) and not value.isascii())
    unique = UNIQUE_KEY[level]  # type: ignore[index]
    if unique not in out and match.get(unique) is not None:
        out.add(_element(_tag(unique), dictionary_VR(unique), match[unique]))
    out.QueryRetrieveLevel = level
    out.RetrieveAETitle = ae_title
    if "InstanceAvailability" in identifier:  # PS3.4 C.4.1.1.3.2: asked for, so answered
        out.InstanceAvailability = "ONLINE"  # all we hold is on line (as QIDO-RS says too)
    if non_ascii:
        out.SpecificCharacterSet = "ISO_IR 192"
    return out


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(keyword)  # type: ignore[return-value]


def _element(tag: Any, vr: str, value: Any) -> DataElement:
    if value is None or value == "":
        return DataElement(tag, vr, None)
    if vr in ("US", "UL", "SS", "SL", "IS") and not isinstance(value, int):
        try:
            value = int(str(value).split("\\")[0]) if vr != "IS" else value
        except ValueError:
            return DataElement(tag, vr, None)
    return DataElement(tag, vr, value)


def handle_find(event: Event, archive: Archive, settings: Settings,
                tenants: Tenants | None = None) -> Iterator[tuple[Any, Any]]:
    """EVT_C_FIND handler: yields (0xFF00, identifier) per match, 0xFE00 on cancel, failures.
    Only the association's provider's patients match (pacs/tenancy.py)."""
    try:
        identifier = event.identifier
        level = parse_level(identifier, str(event.request.AffectedSOPClassUID),
                            study_root_models=(StudyRootQueryRetrieveInformationModelFind,))
        query = identifier_to_query(identifier, level)
        if tenants is not None:
            query.within(tenants.of(event.assoc).scope)
        matches = archive.find(query)
        first = next(matches, None)  # matching keys are compiled here: BadInput surfaces now
    except IdentifierError as exc:
        yield status(exc.code, str(exc)), None
        return
    except BadInput as exc:
        yield status(CANNOT_UNDERSTAND, str(exc)), None
        return
    except Refused:
        yield status(NOT_AUTHORIZED, REFUSED_COMMENT), None
        return
    except Exception as exc:  # unreadable identifier or index failure
        log.warning("C-FIND failed: %s", type(exc).__name__)
        yield status(UNABLE_TO_PROCESS, "C-FIND failed; see the server log"), None
        return
    if first is None:
        return
    try:
        for match in _chain(first, matches):
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, response_identifier(match, identifier, level, settings.ae_title)
    except BadInput as exc:
        yield status(CANNOT_UNDERSTAND, str(exc)), None


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
