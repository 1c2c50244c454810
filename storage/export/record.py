"""A patient's record as export items, and writing it (zip, gpg or age) with its audit event.

What a patient takes home from the patient page (dicomweb/patient) and what ``pacs export
--patient`` writes. Non-DICOM artifacts also carry their original file.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO, cast

from ..artifact_classes import WITH_ORIGINAL
from ..errors import NotFound

if TYPE_CHECKING:
    from ..archive import Archive
    from . import ExportItem, ExportSummary

log = logging.getLogger(__name__)


def record_items(archive: Archive, patient_ref: int,
                 study_uids: frozenset[str] | None = None) -> Iterator[ExportItem]:
    """Export items for a patient's record (streamed: each instance is opened when written).

    Non-DICOM artifacts (objects stored with an original media type, or of an artifact SOP class)
    also carry their original file, recovered with :func:`storage.artifacts.extract_original`.
    """
    from ..archive import Scope
    from . import ExportItem, OriginalFile

    scope = Scope(patient_ref, study_uids)
    try:
        infos = archive.instances(scope=scope)
    except NotFound:
        return
    for info in infos:
        original = None
        if info.content_type or info.sop_class_uid in WITH_ORIGINAL:
            try:
                from ..artifacts import extract_original
                from ..originals import SpanReader, find_span

                span = find_span(archive, info)  # a video: copied from its byte range
                if span is not None:
                    original = OriginalFile(span.filename, span.media_type,
                                            _opener(functools.partial(SpanReader, archive, info, span)))
                else:
                    orig = extract_original(archive.dataset(info))
                    original = OriginalFile(orig.filename, orig.media_type,
                                            functools.partial(io.BytesIO, orig.data))
            except Exception:  # the DICOM object is exported whatever happens
                log.info("no original recovered for one artifact (%s)", info.sop_class_uid)
        yield ExportItem(header=archive.header(info),
                         open=_opener(functools.partial(archive.open, info)), original=original)


def _opener(open_stream: Callable[[], io.RawIOBase]) -> Callable[[], BinaryIO]:
    """``open_stream`` typed as opening the binary file it opens (typing's BinaryIO is a class of
    its own, which io.RawIOBase does not derive from, though it reads, seeks and closes like one)."""
    return cast("Callable[[], BinaryIO]", open_stream)


def write_record(archive: Archive, out: BinaryIO, patient_ref: int, *, fmt: str,
                 passcode: str | None, study_uids: frozenset[str] | None = None, actor: str = "",
                 origin: str = "", age_work_factor: int | None = None) -> ExportSummary:
    """Write a patient's record to ``out`` (zip, gpg or age) and audit it; returns the summary."""
    from . import ExportError, is_export_format, write_export

    kwargs = {} if age_work_factor is None else {"age_work_factor": age_work_factor}
    try:
        if not is_export_format(fmt):
            raise ExportError(f"unknown export format {fmt!r}")  # as write_export says it
        summary = write_export(out, record_items(archive, patient_ref, study_uids), passcode=passcode,
                               fmt=fmt, patient_label=_label(archive, patient_ref), **kwargs)
    except Exception:
        archive.audit.record("export", actor=actor, source=origin, outcome="failure",
                             patient_ref=patient_ref, detail=fmt)
        raise
    archive.audit.record("export", actor=actor, source=origin, patient_ref=patient_ref,
                         detail=f"{fmt}; {summary.instances} instance(s), {summary.originals} original(s)")
    return summary


def _label(archive: Archive, patient_ref: int) -> str:
    values = archive.patient_values(patient_ref)
    name = str(values.get("PatientName", "") or "").replace("^", " ").strip()
    return name or "Patient record"
