"""Make real DICOM Part 10 test objects (no network, no archive)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

#: Patient IDs and names the tests made: no server log may contain them (tests/conftest.py).
PATIENT_STRINGS: set[str] = set()


def make_image(*, patient_id: str = "PAT001", patient_name: str = "Doe^Jane",
               study_uid: str | None = None, series_uid: str | None = None,
               sop_uid: str | None = None, modality: str = "CT", rows: int = 64, columns: int = 64,
               instance_number: int = 1, series_number: int = 1, study_date: str = "20240115",
               study_time: str = "101500", accession: str = "ACC001",
               study_description: str = "Chest", series_description: str = "Axial",
               birth_date: str = "19700101", sex: str = "F", issuer: str = "",
               pixel_seed: int = 0, pixels: np.ndarray | None = None,
               charset: str | None = None, frames: int = 1) -> Dataset:
    """A CT or MR image with the identifying attributes a PACS indexes, ready for save_as."""
    PATIENT_STRINGS.update((patient_id, str(patient_name)))
    ds = Dataset()
    meta = FileMetaDataset()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.SeriesDate = study_date
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.ReferringPhysicianName = "Who^Doctor"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if pixels is None:
        rng = np.random.default_rng(pixel_seed)
        shape = (frames, rows, columns) if frames > 1 else (rows, columns)
        pixels = rng.integers(0, 4095, size=shape, dtype=np.uint16)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write(ds: Dataset, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{ds.SOPInstanceUID}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path


def make_study(folder: Path, *, n_series: int = 2, per_series: int = 3, **kw) -> list[Path]:
    """A study of several series; returns the file paths."""
    study_uid = kw.pop("study_uid", None) or generate_uid()
    paths = []
    for s in range(n_series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = make_image(study_uid=study_uid, series_uid=series_uid, series_number=s + 1,
                            instance_number=i + 1, pixel_seed=s * 100 + i, **kw)
            paths.append(write(ds, folder))
    return paths


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file without preamble and File Meta Information.

    A C-STORE carries only the data set; each receiver writes its own File Meta (implementation
    UID, source AE), so byte identity through DIMSE is identity of this part.
    """
    import struct

    if part10[128:132] != b"DICM" or part10[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a Part 10 file with a File Meta group length")
    (group_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_length:]
