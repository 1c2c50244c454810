"""Which attributes the index knows, at which level, and where each is kept.

``CLEAR``: a plain column (UIDs, dates, modality, counts) that SQL can filter and sort on.
``PHI``: inside the level's encrypted ``phi`` value; matched after decryption.
``HASHED``: in ``phi`` too, plus a keyed hash column for exact matches in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeGuard

from pydicom.datadict import dictionary_VR

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def is_level(value: str) -> TypeGuard[Level]:
    """Whether ``value`` names a query/retrieve level (PS3.4 C.6)."""
    return value in LEVELS


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: Level
    where: Literal["clear", "phi", "hashed"]
    column: str = ""  # clear column or hash column name

    @property
    def vr(self) -> str:
        return dictionary_VR(self.keyword)  # a keyword is a tag to pydicom


def _a(level: Level, where: Literal["clear", "phi", "hashed"], *items: str | tuple[str, str]) -> list[Attr]:
    out = []
    for item in items:
        kw, col = item if isinstance(item, tuple) else (item, "")
        out.append(Attr(kw, level, where, col))
    return out


ATTRIBUTES: dict[str, Attr] = {a.keyword: a for a in [
    *_a("PATIENT", "hashed", ("PatientID", "id_hash")),
    *_a("PATIENT", "phi", "PatientName", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime",
        "PatientSex", "OtherPatientIDs", "OtherPatientNames", "PatientComments", "EthnicGroup"),
    *_a("PATIENT", "clear", ("NumberOfPatientRelatedStudies", "num_studies"),
        ("NumberOfPatientRelatedSeries", "num_series"),
        ("NumberOfPatientRelatedInstances", "num_instances")),
    *_a("STUDY", "clear", ("StudyInstanceUID", "study_uid"), ("StudyDate", "study_date"),
        ("StudyTime", "study_time"), ("ModalitiesInStudy", "modalities"),
        ("SOPClassesInStudy", "sop_classes"), ("NumberOfStudyRelatedSeries", "num_series"),
        ("NumberOfStudyRelatedInstances", "num_instances")),
    *_a("STUDY", "hashed", ("AccessionNumber", "accession_hash")),
    *_a("STUDY", "phi", "StudyID", "StudyDescription", "ReferringPhysicianName", "PatientAge",
        "PatientSize", "PatientWeight", "NameOfPhysiciansReadingStudy",
        "AdmittingDiagnosesDescription", "TimezoneOffsetFromUTC"),
    *_a("SERIES", "clear", ("SeriesInstanceUID", "series_uid"), ("Modality", "modality"),
        ("SeriesNumber", "series_number"), ("SeriesDate", "series_date"),
        ("SeriesTime", "series_time"), ("BodyPartExamined", "body_part"),
        ("NumberOfSeriesRelatedInstances", "num_instances")),
    *_a("SERIES", "phi", "SeriesDescription", "PerformingPhysicianName", "OperatorsName",
        "ProtocolName", "StationName", "InstitutionalDepartmentName",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "PerformedProcedureStepDescription", "Manufacturer", "ManufacturerModelName"),
    *_a("IMAGE", "clear", ("SOPInstanceUID", "sop_uid"), ("SOPClassUID", "sop_class_uid"),
        ("InstanceNumber", "instance_number"), ("NumberOfFrames", "number_of_frames"),
        ("Rows", "rows"), ("Columns", "columns"),
        ("AvailableTransferSyntaxUID", "transfer_syntax")),
    *_a("IMAGE", "phi", "ContentDate", "ContentTime", "AcquisitionDate", "AcquisitionTime",
        "AcquisitionDateTime", "InstanceCreationDate", "InstanceCreationTime", "ImageType",
        "PhotometricInterpretation", "BitsAllocated", "BitsStored", "SamplesPerPixel",
        "PixelSpacing", "SliceThickness", "SliceLocation", "ImagePositionPatient",
        "ImageOrientationPatient", "WindowCenter", "WindowWidth", "DocumentTitle",
        "MIMETypeOfEncapsulatedDocument", "ImageComments", "Laterality", "ViewPosition",
        "CompletionFlag", "VerificationFlag", "ObservationDateTime", "FrameOfReferenceUID",
        "AcquisitionNumber", "TemporalPositionIdentifier"),
]}

# The values of these attributes are what the *phi* column of each level holds.
PHI_BY_LEVEL: dict[Level, list[str]] = {lvl: [a.keyword for a in ATTRIBUTES.values()
                                                if a.level == lvl and a.where != "clear"]
                                        for lvl in LEVELS}

UNIQUE_KEY: dict[Level, str] = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
                                "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


def levels_up_to(level: Level) -> tuple[Level, ...]:
    return LEVELS[: LEVELS.index(level) + 1]
