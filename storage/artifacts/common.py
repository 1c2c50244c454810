"""Modules every artifact object shares, and the private "original" block.

Implements the Patient (PS3.3 C.7.1.1), General Study (C.7.2.1), General
Series (C.7.3.1), General Equipment (C.7.5.1) and SOP Common (C.12.1)
modules, and the File Meta Information of PS3.10 7.1.

What the standard has no attribute for -- the original file name, the
original media type of non-PDF artifacts, the original size where padding
would otherwise be ambiguous, a SHA-256 of the original and the parts of the
original that the standard content cannot reproduce (RTF source, WAV chunks)
-- is kept in one private block (PS3.5 7.8), group 0x0011, private creator
``PRIVATE_CREATOR``:

====  ====  ==========================================================
elem  VR    meaning
====  ====  ==========================================================
xx01  LO    original media type, e.g. ``image/png``
xx02  UT    original file name (base name only, no directories)
xx03  UL    original size in bytes
xx04  LO    SHA-256 of the original bytes, lower-case hex
xx05  OB    the original bytes, only when the standard content cannot
            reproduce them (RTF notes, text that is not plain UTF-8)
xx06  OB    container prefix: bytes of the original before the samples
            (WAV RIFF header and chunks before ``data``)
xx07  OB    container suffix: bytes of the original after the samples
====  ====  ==========================================================

The kept original of a photo, video or dictation (xx05 again) goes in a second block of the same
private creator in group 0x7FE1, *after* the Pixel Data, so that every header read (indexing,
QIDO-RS, metadata: all ``stop_before_pixels``) skips it, however large the file; notes keep theirs
in group 0x0011. Readers look in both groups.

These values may hold identifying data (a file name) and must be treated as
PHI by de-identification, like every other attribute in the object.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, generate_uid

from .errors import ArtifactError, ArtifactTooLarge, InvalidArtifact
from .model import PatientInfo, StudyInfo

PRIVATE_GROUP = 0x0011
TRAILING_GROUP = 0x7FE1  # after Pixel Data (7FE0,0010): out of every header read
PRIVATE_CREATOR = "PACS ARTIFACT ORIGINAL 1"
EL_MEDIA_TYPE = 0x01
EL_FILENAME = 0x02
EL_SIZE = 0x03
EL_SHA256 = 0x04
EL_ORIGINAL_BYTES = 0x05
EL_PREFIX = 0x06
EL_SUFFIX = 0x07

IMPLEMENTATION_VERSION_NAME = "PACS_ARTIFACT_01"
SOFTWARE_VERSION = "pacs storage.artifacts 0.1"
# A value field of an explicit-length element must stay below 2**32 - 1 (PS3.5 7.1.1).
DICOM_MAX_VALUE_LENGTH = 0xFFFFFFFE

_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


@dataclass(frozen=True)
class Provenance:
    """What is recorded about the original in the private block."""

    media_type: str
    filename: str
    data: bytes
    keep_bytes: bool = False
    prefix: bytes | None = None
    suffix: bytes | None = None
    after_pixels: bool = False  # kept bytes in the trailing block (group 0x7FE1)


def check_size(data: bytes, max_size: int | None) -> None:
    """Refuse empty input and input above ``max_size`` or the DICOM value length limit."""
    if not data:
        raise InvalidArtifact("the artifact is empty (0 bytes)")
    limit = DICOM_MAX_VALUE_LENGTH if max_size is None else min(max_size, DICOM_MAX_VALUE_LENGTH)
    if len(data) > limit:
        raise ArtifactTooLarge(f"the artifact is {len(data)} bytes, the limit is {limit} bytes")


def safe_filename(filename: str | None, default: str) -> str:
    """The base name of ``filename`` (directories dropped), or ``default``."""
    if not filename:
        return default
    name = PurePosixPath(filename.replace("\\", "/")).name.strip()
    return name or default


def _validate(patient: PatientInfo, study: StudyInfo) -> None:
    if not patient.patient_id:
        raise ArtifactError("PatientInfo.patient_id must not be empty")
    if patient.birth_date and not _DA.match(patient.birth_date):
        raise ArtifactError("PatientInfo.birth_date must be a DICOM date YYYYMMDD")
    if patient.sex not in ("", "M", "F", "O"):
        raise ArtifactError("PatientInfo.sex must be '', 'M', 'F' or 'O'")
    if study.study_date and not _DA.match(study.study_date):
        raise ArtifactError("StudyInfo.study_date must be a DICOM date YYYYMMDD")
    if study.study_time and not _TM.match(study.study_time):
        raise ArtifactError("StudyInfo.study_time must be a DICOM time HHMMSS[.ffffff]")


def base_dataset(
    *,
    sop_class_uid: str,
    modality: str,
    patient: PatientInfo,
    study: StudyInfo,
    series_description: str,
    content_datetime: datetime,
) -> Dataset:
    """Patient, General Study, General Series, General Equipment and SOP Common modules."""
    _validate(patient, study)
    ds = Dataset()
    date = content_datetime.strftime("%Y%m%d")
    time = content_datetime.strftime("%H%M%S")
    # SOP Common (C.12.1)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    if content_datetime.utcoffset() is not None:
        ds.TimezoneOffsetFromUTC = content_datetime.strftime("%z")
    # Patient (C.7.1.1)
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    if patient.issuer_of_patient_id:
        ds.IssuerOfPatientID = patient.issuer_of_patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    # General Study (C.7.2.1)
    new_study = study.study_instance_uid is None
    ds.StudyInstanceUID = study.study_instance_uid or generate_uid()
    ds.StudyDate = study.study_date or (date if new_study else "")
    ds.StudyTime = study.study_time or (time if new_study else "")
    ds.ReferringPhysicianName = ""
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    if study.study_description:
        ds.StudyDescription = study.study_description
    # General Series (C.7.3.1): one new series per artifact.
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1  # type 1 in some IODs; one artifact per series
    ds.SeriesDate = date
    ds.SeriesTime = time
    if series_description:
        ds.SeriesDescription = series_description
    # General Equipment (C.7.5.1): the converting software; the source device is unknown.
    ds.Manufacturer = ""
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.InstanceNumber = 1
    ds.ContentDate = date
    ds.ContentTime = time
    return ds


def record_provenance(ds: Dataset, prov: Provenance) -> None:
    """Write the private "original" block described in this module's docstring."""
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(EL_MEDIA_TYPE, "LO", prov.media_type)
    block.add_new(EL_FILENAME, "UT", prov.filename)
    block.add_new(EL_SIZE, "UL", len(prov.data))
    block.add_new(EL_SHA256, "LO", hashlib.sha256(prov.data).hexdigest())
    if prov.keep_bytes:
        where = block if not prov.after_pixels else ds.private_block(
            TRAILING_GROUP, PRIVATE_CREATOR, create=True)
        where.add_new(EL_ORIGINAL_BYTES, "OB", prov.data)
    if prov.prefix is not None:
        block.add_new(EL_PREFIX, "OB", prov.prefix)
    if prov.suffix is not None:
        block.add_new(EL_SUFFIX, "OB", prov.suffix)


def private_value(ds: Dataset, element: int) -> object | None:
    """A value of the private "original" block (either group), or None when absent."""
    for group in (PRIVATE_GROUP, TRAILING_GROUP):
        try:
            block = ds.private_block(group, PRIVATE_CREATOR)
        except KeyError:
            continue
        if block.get_tag(element) not in ds:
            continue
        value: object = block[element].value
        if isinstance(value, bytes | bytearray) and block[element].VR in ("OB", "UN"):
            return bytes(value)
        return value
    return None


def verify_sha256(ds: Dataset, data: bytes) -> None:
    """Raise InvalidArtifact when ``data`` does not match the recorded digest."""
    digest = private_value(ds, EL_SHA256)
    if digest and hashlib.sha256(data).hexdigest() != str(digest):
        raise InvalidArtifact("the extracted artifact does not match its recorded SHA-256")


def _texts(ds: Dataset) -> Iterable[str]:
    for elem in ds.iterall():
        if elem.VR in _TEXT_VRS and elem.value is not None:
            values = elem.value if elem.VM > 1 else [elem.value]
            for v in values:
                yield str(v)


def set_character_set(ds: Dataset) -> None:
    """SpecificCharacterSet ISO_IR 192 (UTF-8) when any text is non-ASCII (PS3.3 C.12.1.1.2)."""
    if any(not t.isascii() for t in _texts(ds)):
        ds.SpecificCharacterSet = "ISO_IR 192"


def finish(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Add the File Meta Information (PS3.10 7.1) so the dataset is Part 10 ready."""
    set_character_set(ds)
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    return ds
