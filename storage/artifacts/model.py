"""Plain value types passed to and returned by :mod:`storage.artifacts`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PatientInfo:
    """Patient Module attributes (PS3.3 C.7.1.1); DICOM formats (DA YYYYMMDD, PN a^b)."""

    patient_id: str
    patient_name: str = ""
    issuer_of_patient_id: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True)
class StudyInfo:
    """General Study Module attributes (PS3.3 C.7.2.1).

    ``study_instance_uid=None`` means a new study: a UID is generated and, when
    no study date/time is given, the content date/time is used for them.
    """

    study_instance_uid: str | None = None
    study_description: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""


@dataclass(frozen=True)
class InstanceRef:
    """A reference to an existing composite instance (PS3.3 C.17.2.1 evidence)."""

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str


@dataclass(frozen=True)
class Original:
    """The artifact recovered from a DICOM object by :func:`extract_original`."""

    data: bytes
    media_type: str
    filename: str
