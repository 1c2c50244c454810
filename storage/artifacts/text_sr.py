"""Text and RTF notes <-> Basic Text SR (PS3.3 A.35.1; SR modules C.17.1-C.17.3).

Content tree (no template; Basic Text SR allows CONTAINS and HAS CONCEPT MOD
from the root, PS3.3 A.35.1.3.1)::

    CONTAINER (LN 34109-9 "Note")                     document title
      HAS CONCEPT MOD TEXT (DCM 121050 "Equivalent Meaning of Concept Name") = title
      CONTAINS TEXT (DCM 121106 "Comment") = the note
      CONTAINS IMAGE | WAVEFORM | COMPOSITE              one per InstanceRef

The referenced instances are also listed in the Current Requested Procedure
Evidence Sequence (C.17.2.3). RTF becomes text with ``striprtf``; the RTF
itself -- and any text file the TEXT item cannot reproduce byte for byte
(not UTF-8, a byte-order mark, trailing spaces, which DICOM strips) -- is
kept in the private block (see ``common``) so it comes back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian
from striprtf.striprtf import rtf_to_text

from .common import (
    EL_ORIGINAL_BYTES,
    Provenance,
    base_dataset,
    finish,
    private_value,
    record_provenance,
)
from .errors import ArtifactError, InvalidArtifact
from .model import InstanceRef, Original, PatientInfo, StudyInfo

BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
NOTE_TITLE = ("34109-9", "LN", "Note")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def decode_text(data: bytes) -> str:
    """Decode a text note: UTF-8 (with or without BOM), else Windows-1252, else Latin-1."""
    for codec in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def rtf_text(data: bytes) -> str:
    """Plain text of an RTF document (``striprtf``); refuses a truncated RTF."""
    source = data.decode("latin-1")  # RTF is 7-bit; 8-bit bytes are code-page text
    if source.count("{") != source.count("}") or not source.rstrip("\x00\r\n ").endswith("}"):
        raise InvalidArtifact("the RTF is truncated (unbalanced braces)")
    try:
        text: str = rtf_to_text(source, errors="replace")
        return text.strip()
    except (ValueError, IndexError) as exc:
        raise InvalidArtifact(f"the RTF cannot be read: {exc}") from exc


def _value_type(sop_class_uid: str) -> str:
    name = UID(sop_class_uid).name
    if "Waveform Storage" in name:
        return "WAVEFORM"
    if "Image Storage" in name:
        return "IMAGE"
    return "COMPOSITE"


def _check_refs(references: Sequence[InstanceRef]) -> None:
    for ref in references:
        for uid in (
            ref.sop_class_uid,
            ref.sop_instance_uid,
            ref.series_instance_uid,
            ref.study_instance_uid,
        ):
            if not UID(uid).is_valid:
                raise ArtifactError(f"invalid UID in InstanceRef: {uid!r}")


def _sop_ref(ref: InstanceRef) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def evidence_sequence(references: Sequence[InstanceRef]) -> list[Dataset]:
    """Hierarchical SOP Instance Reference Macro items (PS3.3 C.17.2.1), study > series > SOP."""
    studies: dict[str, dict[str, list[InstanceRef]]] = {}
    for ref in references:
        studies.setdefault(ref.study_instance_uid, {}).setdefault(
            ref.series_instance_uid, []
        ).append(ref)
    out = []
    for study_uid, series in studies.items():
        st = Dataset()
        st.ReferencedSeriesSequence = []
        for series_uid, refs in series.items():
            se = Dataset()
            se.ReferencedSOPSequence = [_sop_ref(r) for r in refs]
            se.SeriesInstanceUID = series_uid
            st.ReferencedSeriesSequence.append(se)
        st.StudyInstanceUID = study_uid
        out.append(st)
    return out


def encapsulate_note(
    data: bytes,
    *,
    media_type: str,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str,
    title: str,
    series_description: str,
    references: Sequence[InstanceRef],
    content_datetime: datetime,
) -> Dataset:
    """Build a Basic Text SR holding a text or RTF note."""
    _check_refs(references)
    if media_type == "text/rtf":
        text, keep = rtf_text(data), True
    else:
        text = decode_text(data)
        keep = text.rstrip(" \x00").encode("utf-8") != data
    if not text.strip():
        raise InvalidArtifact("the note has no text")
    ds = base_dataset(
        sop_class_uid=BASIC_TEXT_SR_STORAGE,
        modality="SR",
        patient=patient,
        study=study,
        series_description=series_description,
        content_datetime=content_datetime,
    )
    ds.ReferencedPerformedProcedureStepSequence = []  # SR Document Series (C.17.1), type 2
    # SR Document General (C.17.2)
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    if references:
        ds.CurrentRequestedProcedureEvidenceSequence = evidence_sequence(references)
    # SR Document Content (C.17.3): the root container
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(*NOTE_TITLE)]
    ds.ContinuityOfContent = "SEPARATE"
    content = []
    if title:
        item = Dataset()
        item.RelationshipType = "HAS CONCEPT MOD"
        item.ValueType = "TEXT"
        eq = codes.DCM.EquivalentMeaningOfConceptName
        item.ConceptNameCodeSequence = [_code(eq.value, "DCM", eq.meaning)]
        item.TextValue = title
        content.append(item)
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [
        _code(codes.DCM.Comment.value, "DCM", codes.DCM.Comment.meaning)
    ]
    item.TextValue = text
    content.append(item)
    for ref in references:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = _value_type(ref.sop_class_uid)
        item.ReferencedSOPSequence = [_sop_ref(ref)]
        content.append(item)
    ds.ContentSequence = content
    record_provenance(ds, Provenance(media_type, filename, data, keep_bytes=keep))
    return finish(ds, ExplicitVRLittleEndian)


def note_text(ds: Dataset) -> str:
    """The text of the first TEXT item (the note) under the root container."""
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS":
            return str(item.TextValue)
    raise InvalidArtifact("the SR has no TEXT content item")


def extract_note(ds: Dataset, filename: str, media_type: str | None, size: int | None) -> Original:
    """The original note bytes if kept, else the TEXT item as UTF-8 text/plain."""
    kept = private_value(ds, EL_ORIGINAL_BYTES)
    if isinstance(kept, bytes):
        # OB values are padded to even length (PS3.5 7.1.1): cut at the original size.
        return Original(kept[:size] if size else kept, media_type or "text/plain", filename)
    return Original(note_text(ds).encode("utf-8"), "text/plain", filename)
