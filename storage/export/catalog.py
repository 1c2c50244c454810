"""What goes into an export: media File IDs, DICOMDIR records and summaries for the index page.

File IDs follow PS3.10 8.2 and PS3.12 (General Purpose media): at most 8 components of at most
8 characters from ``A-Z 0-9 _``; here ``DICOM/PATnnnnn/STUnnnnn/SERnnnnn/IMGnnnnn``.
Directory records follow PS3.3 F.5 (PATIENT, STUDY, SERIES and one leaf record per instance),
built with pydicom's public ``DIRECTORY_RECORDERS``. Only these small records are kept per
instance, never the data, so memory grows with the number of instances, not their size.
"""

from __future__ import annotations

import copy
import datetime as dt
import unicodedata
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.fileset import DIRECTORY_RECORDERS

from storage.export.errors import ExportError

try:  # the SOP Class -> leaf record type table of pydicom (private, but the authoritative one)
    from pydicom.fileset import _four_level_record_type as _leaf_type_of
except ImportError:  # pragma: no cover - a future pydicom may move it
    def _leaf_type_of(ds: Dataset) -> str:
        return "ENCAP DOC" if "EncapsulatedDocument" in ds else "IMAGE"

MAX_INDEX = 99_999  # five digits after a three-letter prefix = eight characters
ORIGINALS_DIR = "ORIGINALS"
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
_FORBIDDEN = set('<>:"/\\|?*')


@dataclass
class InstanceEntry:
    """One DICOM file in the export."""

    file_id: tuple[str, ...]
    record: Dataset
    sop_class_name: str
    instance_number: str


@dataclass
class SeriesEntry:
    key: str
    name: str
    record: Dataset
    modality: str
    number: str
    description: str
    instances: list[InstanceEntry] = field(default_factory=list)


@dataclass
class StudyEntry:
    key: str
    name: str
    record: Dataset
    date: str
    description: str
    series: dict[str, SeriesEntry] = field(default_factory=dict)


@dataclass
class PatientEntry:
    key: tuple[str, str]
    name: str
    record: Dataset
    patient_name: str
    patient_id: str
    studies: dict[str, StudyEntry] = field(default_factory=dict)


@dataclass
class OriginalEntry:
    """One original (non-DICOM) file in the export, under ``ORIGINALS/``."""

    path: str
    media_type: str


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _record(record_type: str, ds: Dataset, invent: dict[str, object]) -> Dataset:
    """Build one directory record, inventing missing Type 1 values (as dcmmkdir ``+I`` does).

    Images often lack values the DICOMDIR requires (Study ID, Instance Number in RT objects...);
    the record gets a neutral invented value instead of failing the patient's export. The
    DICOM files themselves are never changed.
    """
    source = ds
    for _ in range(2):
        try:
            rec = DIRECTORY_RECORDERS[record_type](source)
            break
        except ValueError:
            source = copy.copy(ds)
            for keyword, value in invent.items():
                if not source.get(keyword):
                    setattr(source, keyword, value)
    else:  # still missing something we have no invention for: keep what exists
        rec = Dataset()
        if record_type == "IMAGE" or record_type not in DIRECTORY_RECORDERS:
            record_type = "IMAGE"
        for keyword in invent:
            setattr(rec, keyword, source.get(keyword))
    rec.OffsetOfTheNextDirectoryRecord = 0
    rec.RecordInUseFlag = 0xFFFF
    rec.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    rec.DirectoryRecordType = record_type
    if "SpecificCharacterSet" in ds:
        rec.SpecificCharacterSet = ds.SpecificCharacterSet
    return rec


def sanitize_filename(name: str, *, max_len: int = 120) -> str:
    """Return a file name safe on Windows, macOS and Linux, keeping the extension if possible."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").split("/")[-1]
    cleaned = "".join(
        "_" if (ch in _FORBIDDEN or unicodedata.category(ch).startswith("C")) else ch for ch in name
    ).strip(" .")
    if not cleaned:
        cleaned = "file"
    stem, dot, ext = cleaned.rpartition(".")
    if not dot:
        stem, ext = cleaned, ""
    if stem.upper() in _WINDOWS_RESERVED:
        stem = "_" + stem
    ext = ext[:16]
    stem = stem[: max_len - len(ext) - 1] if ext else stem[:max_len]
    return f"{stem}.{ext}" if ext else stem


class Catalog:
    """Assign File IDs and collect directory records as instances stream through."""

    def __init__(self) -> None:
        self.patients: dict[tuple[str, str], PatientEntry] = {}
        self.originals: list[OriginalEntry] = []
        self._original_names: set[str] = set()
        self._now = dt.datetime.now()

    @property
    def instance_count(self) -> int:
        return sum(len(se.instances) for p in self.patients.values() for st in p.studies.values() for se in st.series.values())

    def add_instance(self, header: Dataset, transfer_syntax: str) -> tuple[str, ...]:
        """Register one instance; return its File ID components (PS3.10 8.2)."""
        sop_class = header.get("SOPClassUID")
        sop_instance = header.get("SOPInstanceUID")
        if not sop_class or not sop_instance:
            raise ExportError("an export item header lacks SOP Class or SOP Instance UID")
        pkey = (_text(header, "IssuerOfPatientID"), _text(header, "PatientID"))
        patient = self.patients.get(pkey)
        if patient is None:
            patient = PatientEntry(
                pkey, self._name("PAT", len(self.patients)),
                _record("PATIENT", header, {"PatientID": "UNKNOWN"}),
                _text(header, "PatientName"), pkey[1],
            )
            self.patients[pkey] = patient
        skey = _text(header, "StudyInstanceUID")
        study = patient.studies.get(skey)
        if study is None:
            n = len(patient.studies)
            study = StudyEntry(
                skey, self._name("STU", n),
                _record("STUDY", header, {
                    "StudyDate": self._now.strftime("%Y%m%d"),
                    "StudyTime": self._now.strftime("%H%M%S"),
                    "StudyID": str(n + 1),
                }),
                _text(header, "StudyDate"), _text(header, "StudyDescription"),
            )
            patient.studies[skey] = study
        rkey = _text(header, "SeriesInstanceUID")
        series = study.series.get(rkey)
        if series is None:
            n = len(study.series)
            series = SeriesEntry(
                rkey, self._name("SER", n),
                _record("SERIES", header, {
                    "Modality": "OT", "SeriesInstanceUID": rkey or "2.25.0", "SeriesNumber": n + 1,
                }),
                _text(header, "Modality"), _text(header, "SeriesNumber"), _text(header, "SeriesDescription"),
            )
            study.series[rkey] = series
        n = len(series.instances)
        file_id = ("DICOM", patient.name, study.name, series.name, self._name("IMG", n))
        leaf_type = _leaf_type_of(header)
        leaf = _record(leaf_type, header, {
            "InstanceNumber": n + 1,
            "ContentDate": study.record.StudyDate,
            "ContentTime": study.record.StudyTime,
        })
        leaf.ReferencedFileID = list(file_id)
        leaf.ReferencedSOPClassUIDInFile = sop_class
        leaf.ReferencedSOPInstanceUIDInFile = sop_instance
        leaf.ReferencedTransferSyntaxUIDInFile = transfer_syntax
        series.instances.append(
            InstanceEntry(file_id, leaf, getattr(sop_class, "name", str(sop_class)), _text(header, "InstanceNumber"))
        )
        return file_id

    def add_original(self, filename: str, media_type: str) -> str:
        """Register an original file; return its unique, sanitised path in the zip."""
        base = sanitize_filename(filename)
        stem, dot, ext = base.rpartition(".")
        if not dot:
            stem, ext = base, ""
        candidate, i = base, 1
        while candidate.casefold() in self._original_names:
            i += 1
            candidate = f"{stem} ({i}).{ext}" if ext else f"{stem} ({i})"
        self._original_names.add(candidate.casefold())
        path = f"{ORIGINALS_DIR}/{candidate}"
        self.originals.append(OriginalEntry(path, media_type))
        return path

    @staticmethod
    def _name(prefix: str, index: int) -> str:
        if index + 1 > MAX_INDEX:
            raise ExportError(f"more than {MAX_INDEX} entries at one directory level")
        return f"{prefix}{index + 1:05d}"
