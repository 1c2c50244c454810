"""Generate DICOM Part 10 test data for the benchmarks.

Usage::

    python -m bench.gen OUT_DIR --small 500 --ct 200 [--big-mb 1024] \
        [--patients 10] [--studies-per-patient 2]

Writes ``OUT_DIR/small/*.dcm`` (64x64 MR), ``OUT_DIR/ct/*.dcm`` (512x512 CT,
int16) and optionally ``OUT_DIR/big/big.dcm`` (one multi-frame object of about
``--big-mb`` MiB). Instances are spread round-robin over patients and studies.
Pixel data is random-ish but compressible (smooth gradient plus noise).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass(frozen=True)
class Study:
    """A patient/study pair that generated instances belong to."""

    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str


def make_studies(patients: int, studies_per_patient: int) -> list[Study]:
    """Return ``patients * studies_per_patient`` studies with one series each."""
    out = []
    for p in range(patients):
        for _ in range(studies_per_patient):
            out.append(
                Study(f"BENCH{p:05d}", f"BENCH^PATIENT{p}", generate_uid(), generate_uid())
            )
    return out


def _pixels(rng: np.random.Generator, rows: int, cols: int, frames: int = 1) -> bytes:
    """Return int16 pixel bytes: a gradient plus low noise (compressible)."""
    y, x = np.mgrid[0:rows, 0:cols]
    base = ((x + y) * (2000 // max(rows, cols))).astype(np.int16)
    if frames == 1:
        return (base + rng.integers(0, 16, (rows, cols), dtype=np.int16)).tobytes()
    return b"".join(
        (base + rng.integers(0, 16, (rows, cols), dtype=np.int16) + f).tobytes()
        for f in range(frames)
    )


def _dataset(sop_class: str, study: Study, number: int, modality: str) -> Dataset:
    """Build the header of one image instance (no pixel data yet)."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = study.patient_id
    ds.PatientName = study.patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = study.series_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"A{abs(hash(study.study_uid)) % 10**8:08d}"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Modality = modality
    ds.StudyDescription = "BENCH STUDY"
    ds.SeriesDescription = f"BENCH {modality}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def _instances(
    studies: list[Study], count: int, sop_class: str, modality: str, size: int, seed: int
) -> Iterator[Dataset]:
    rng = np.random.default_rng(seed)
    for i in range(count):
        ds = _dataset(sop_class, studies[i % len(studies)], i + 1, modality)
        ds.Rows = ds.Columns = size
        ds.PixelData = _pixels(rng, size, size)
        if modality == "CT":
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
        yield ds


def write_small(out: Path, studies: list[Study], count: int) -> None:
    """Write ``count`` 64x64 MR instances to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(_instances(studies, count, MRImageStorage, "MR", 64, 1)):
        ds.save_as(out / f"small{i:06d}.dcm", enforce_file_format=True)


def write_ct(out: Path, studies: list[Study], count: int) -> None:
    """Write ``count`` 512x512 CT slices to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(_instances(studies, count, CTImageStorage, "CT", 512, 2)):
        ds.save_as(out / f"ct{i:06d}.dcm", enforce_file_format=True)


def write_big(out: Path, study: Study, mebibytes: int) -> Path:
    """Write one multi-frame CT object of about ``mebibytes`` MiB (512x512 frames).

    Written in streaming fashion (header, then frames) so generating it needs
    little memory.
    """
    out.mkdir(parents=True, exist_ok=True)
    frame_bytes = 512 * 512 * 2
    frames = max(1, (mebibytes * 1024 * 1024) // frame_bytes)
    ds = _dataset(ENHANCED_CT, study, 1, "CT")
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.PixelData = b""  # placeholder, patched below
    path = out / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    # The header ends with an empty (7FE0,0010) OW element: 12 bytes explicit VR
    # (tag 4, VR 2, reserved 2, length 4). Rewrite the length, then append frames.
    rng = np.random.default_rng(3)
    total = frames * frame_bytes
    with open(path, "r+b") as f:
        f.seek(-4, 2)
        f.write(total.to_bytes(4, "little"))
        f.seek(0, 2)
        for _n in range(frames):
            f.write(_pixels(rng, 512, 512))
    return path


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--small", type=int, default=500, help="64x64 MR instances")
    ap.add_argument("--ct", type=int, default=200, help="512x512 CT slices")
    ap.add_argument("--big-mb", type=int, default=0, help="size of one multi-frame object")
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--studies-per-patient", type=int, default=2)
    args = ap.parse_args(argv)
    studies = make_studies(args.patients, args.studies_per_patient)
    if args.small:
        write_small(args.out / "small", studies, args.small)
    if args.ct:
        write_ct(args.out / "ct", studies, args.ct)
    if args.big_mb:
        write_big(args.out / "big", studies[0], args.big_mb)


if __name__ == "__main__":
    main()
