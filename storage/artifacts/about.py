"""The study an artifact is about (a dictation discussing a lab study, a note on a CT).

Recorded the standard way, in every kind of object:

* General Study module (PS3.3 C.7.2.1): Referenced Study Sequence (0008,1110), one item whose
  Referenced SOP Instance UID is the Study Instance UID of the study discussed and whose
  Referenced SOP Class UID is the Study's class (1.2.840.10008.3.1.2.3.1, Detached Study
  Management, the class the standard uses for a study reference, PS3.3 10.11).
* Basic Text SR notes (A.35.1) also get a content item, as TID 1005 "Procedure Context" words it:
  ``HAS OBS CONTEXT UIDREF (DCM 110180 "Study Instance UID") = the study``.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import UID

from .errors import ArtifactError

STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
STUDY_INSTANCE_UID_CONCEPT = ("110180", "DCM", "Study Instance UID")


def record_about(ds: Dataset, study_uid: str) -> None:
    """Add the reference to ``study_uid`` to an artifact object (see the module docstring)."""
    if not UID(study_uid).is_valid:
        raise ArtifactError(f"invalid Study Instance UID: {study_uid!r}")
    item = Dataset()
    item.ReferencedSOPClassUID = STUDY_SOP_CLASS
    item.ReferencedSOPInstanceUID = study_uid
    ds.ReferencedStudySequence = [item]
    if "ContentSequence" in ds and ds.get("ValueType") == "CONTAINER":
        concept = Dataset()
        concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
            STUDY_INSTANCE_UID_CONCEPT)
        content = Dataset()
        content.RelationshipType = "HAS OBS CONTEXT"
        content.ValueType = "UIDREF"
        content.ConceptNameCodeSequence = [concept]
        content.UID = study_uid
        at = sum(1 for c in ds.ContentSequence if c.get("RelationshipType") == "HAS CONCEPT MOD")
        ds.ContentSequence.insert(at, content)


def about_study(ds: Dataset) -> str | None:
    """The Study Instance UID an artifact says it is about, or None."""
    for item in ds.get("ReferencedStudySequence") or []:
        if item.get("ReferencedSOPClassUID") == STUDY_SOP_CLASS and item.get(
                "ReferencedSOPInstanceUID"):
            return str(item.ReferencedSOPInstanceUID)
    return None
