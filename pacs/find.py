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
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]  # pynetdicom makes its SOP classes at import time

from storage.archive import Archive
from storage.attributes import UNIQUE_KEY, Level, is_level
from storage.config import Settings
from storage.errors import BadInput
from storage.query import Query

from .dimse import findrsp
from .find_encoding import encode_identifier
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


def parse_level(identifier: Dataset, model_uid: str, *, study_root_models: tuple[str, ...]
                ) -> Level:
    """The QueryRetrieveLevel, checked against the information model (PS3.4 C.6.1, C.6.2)."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not level:
        raise IdentifierError(DATASET_MISMATCH, "QueryRetrieveLevel is missing")
    if not is_level(level):
        raise IdentifierError(DATASET_MISMATCH, f"unknown QueryRetrieveLevel {level[:16]}")
    if level == "PATIENT" and model_uid in study_root_models:
        raise IdentifierError(DATASET_MISMATCH, "Study Root has no PATIENT level")
    return level


def as_query_value(value: Any) -> str:
    """A DICOM matching string from a pydicom value ('\\' joins UID lists and multi-values)."""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def identifier_to_query(identifier: Dataset, level: Level) -> Query:
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
    return Query(level=level, filters=filters, return_keys=keys)


def response_identifier(match: dict[str, Any], identifier: Dataset, level: Level, ae_title: str) -> Dataset:
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
    unique = UNIQUE_KEY[level]
    if unique not in out and match.get(unique) is not None:
        out.add(_element(_tag(unique), dictionary_VR(unique), match[unique]))
    out.QueryRetrieveLevel = level
    out.RetrieveAETitle = ae_title
    if "InstanceAvailability" in identifier:  # PS3.4 C.4.1.1.3.2: asked for, so answered
        out.InstanceAvailability = "ONLINE"  # all we hold is on line (as QIDO-RS says too)
    if non_ascii:
        out.SpecificCharacterSet = "ISO_IR 192"
    return out


def response_elements(match: dict[str, Any], identifier: Dataset, level: Level, ae_title: str
                      ) -> tuple[dict[int, tuple[str, Any]], bool]:
    """What :func:`response_identifier` holds, as tag -> (VR, value), and whether it is UTF-8."""
    out: dict[int, tuple[str, Any]] = {}
    non_ascii = False
    for elem in identifier:
        kw = elem.keyword
        if not kw or kw in CONTROL_KEYS or elem.tag.group in (0x0000, 0x0002):
            continue
        if elem.VR == "SQ":
            out[int(elem.tag)] = ("SQ", [])
            continue
        value = match.get(kw)
        out[int(elem.tag)] = (elem.VR, _plain(elem.VR, value))
        non_ascii = non_ascii or (isinstance(value, str) and not value.isascii())
    unique = UNIQUE_KEY[level]
    unique_tag = _tag(unique)
    if unique_tag not in out and match.get(unique) is not None:
        vr = dictionary_VR(unique)
        out[unique_tag] = (vr, _plain(vr, match[unique]))
    out[0x00080052] = ("CS", level)  # QueryRetrieveLevel
    out[0x00080054] = ("AE", ae_title)  # RetrieveAETitle
    if "InstanceAvailability" in identifier:
        out[0x00080056] = ("CS", "ONLINE")
    if non_ascii:
        out[0x00080005] = ("CS", "ISO_IR 192")  # SpecificCharacterSet
    return out, non_ascii


def response(match: dict[str, Any], identifier: Dataset, level: Level, ae_title: str) -> Dataset:
    """What the handler yields per match: encoded here when pacs.dimse can send it so (findrsp)."""
    if not findrsp.is_installed():
        return response_identifier(match, identifier, level, ae_title)
    elements, utf8 = response_elements(match, identifier, level, ae_title)
    return findrsp.PreEncoded(
        lambda: response_identifier(match, identifier, level, ae_title),
        lambda implicit: encode_identifier(elements, implicit=implicit, utf8=utf8))


def _tag(keyword: str) -> int:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None  # UNIQUE_KEY names dictionary keywords
    return tag


def _element(tag: Any, vr: str, value: Any) -> DataElement:
    return DataElement(tag, vr, _plain(vr, value))


def _plain(vr: str, value: Any) -> Any:
    """The value an element of ``vr`` holds for a match's ``value`` (None: empty)."""
    if value is None or value == "":
        return None
    if vr in ("US", "UL", "SS", "SL", "IS") and not isinstance(value, int):
        try:
            value = int(str(value).split("\\")[0]) if vr != "IS" else value
        except ValueError:
            return None
    return value


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
    count, outcome = 0, "success"
    try:
        for match in _chain(first, matches) if first is not None else ():
            if event.is_cancelled:
                outcome = "cancelled"
                yield CANCEL, None
                return
            count += 1
            yield PENDING, response(match, identifier, level, settings.ae_title)
    except BadInput as exc:
        outcome = "failure"
        yield status(CANNOT_UNDERSTAND, str(exc)), None
    finally:
        _audit(event, archive, query, level, count, outcome)


def _audit(event: Event, archive: Archive, query: Query, level: str, count: int, outcome: str) -> None:
    """One ``query`` audit event per C-FIND (PS3.15 A.5.3.9): the model, level, key names and count;
    no key values (they are PHI), as QIDO-RS records them."""
    try:
        req = event.assoc.requestor
        keys = ",".join(sorted(query.filters)) or "-"
        archive.audit.record("query", actor=req.ae_title.strip(), source=f"{req.address}:{req.port}",
                             outcome=outcome, detail=f"C-FIND {level} by {keys}: {count} match(es) "
                             f"[{event.request.AffectedSOPClassUID}]"[:500])
    except Exception:
        log.exception("audit record failed")


def _chain(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest
