"""Tests for storage.export: decrypt with the real gpg and age binaries, then check the record."""

from __future__ import annotations

import io
import json
import os
import pty
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet

from storage.export import (
    AgeScryptWriter,
    ExportError,
    ExportItem,
    OpenPGPSymmetricWriter,
    OriginalFile,
    write_export,
)

PASSCODE = "abacus zoom felt-tip yo-yo t-shirt radiator speckled"
DICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm"]
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"

needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg binary not installed")
needs_age = pytest.mark.skipif(shutil.which("age") is None, reason="age binary not installed")


# ---------------------------------------------------------------- helpers: the real binaries
def gpg_decrypt(path: Path, passcode: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    home.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback",
         "--passphrase", passcode, "--decrypt", str(path)],
        capture_output=True, timeout=120,
    )


def age_decrypt(path: Path, passcode: str, out: Path) -> tuple[int, bytes]:
    """Run ``age -d`` on a pseudo-terminal: age reads passphrases from the TTY only."""
    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvp("age", ["age", "-d", "-o", str(out), str(path)])
    transcript = b""
    try:
        while b"passphrase" not in transcript.lower():
            chunk = os.read(fd, 1024)
            if not chunk:
                break
            transcript += chunk
        os.write(fd, passcode.encode() + b"\n")
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            transcript += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), transcript


def _opener(data: bytes) -> Callable[[], io.BytesIO]:
    return lambda: io.BytesIO(data)


@pytest.fixture(scope="module")
def sources() -> dict[str, bytes]:
    return {name: Path(get_testdata_file(name)).read_bytes() for name in DICOM_FILES}


def make_items(sources: dict[str, bytes]) -> list[ExportItem]:
    items = []
    for data in sources.values():
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        items.append(ExportItem(header=header, open=_opener(data)))
    items.append(ExportItem(original=OriginalFile("../../Befund: März?.pdf", "application/pdf", _opener(PDF))))
    items.append(ExportItem(original=OriginalFile("Befund: März?.pdf", "application/pdf", _opener(PDF + b" "))))
    return items


def check_record(zip_bytes: bytes, sources: dict[str, bytes], tmp: Path) -> None:
    """Unzip, then check layout, bytes, DICOMDIR (pydicom + dciodvfy), originals and pages."""
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        zf.extractall(tmp)
    dicom_names = [n for n in names if n.startswith("DICOM/")]
    assert len(dicom_names) == len(sources)
    for name in dicom_names:
        parts = name.split("/")
        assert len(parts) <= 8
        assert all(len(p) <= 8 and p == p.upper() and p.replace("_", "").isalnum() for p in parts)
    assert {"DICOMDIR", "INDEX.HTM", "README.txt"} <= set(names)

    # every DICOM file is byte-for-byte the stored one
    stored_by_uid = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d for d in sources.values()}
    fs = FileSet(tmp / "DICOMDIR")
    assert len(fs) == len(sources)
    for instance in fs:
        assert Path(instance.path).read_bytes() == stored_by_uid[instance.SOPInstanceUID]
    assert {i.SOPInstanceUID for i in fs} == set(stored_by_uid)

    if shutil.which("dciodvfy"):
        r = subprocess.run(["dciodvfy", str(tmp / "DICOMDIR")], capture_output=True, text=True)
        errors = [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]
        assert errors == []

    originals = sorted(n for n in names if n.startswith("ORIGINALS/"))
    assert originals == ["ORIGINALS/Befund_ März_ (2).pdf", "ORIGINALS/Befund_ März_.pdf"]
    assert (tmp / "ORIGINALS" / "Befund_ März_.pdf").read_bytes() == PDF
    index = (tmp / "INDEX.HTM").read_text(encoding="utf-8")
    for name in dicom_names:
        assert f'href="{name}"' in index
    assert "Befund_%20M%C3%A4rz_.pdf" in index
    readme = (tmp / "README.txt").read_text(encoding="utf-8")
    assert "DICOMDIR" in readme and f"{len(sources)} DICOM files" in readme


# ---------------------------------------------------------------- full exports
@needs_gpg
def test_gpg_export_opens_with_gpg(tmp_path: Path, sources: dict[str, bytes]) -> None:
    enc = tmp_path / "record.zip.gpg"
    with enc.open("wb") as f:
        summary = write_export(f, make_items(sources), passcode=PASSCODE, fmt="gpg", patient_label="Jane Doe")
    assert summary.instances == 4 and summary.originals == 2
    assert PDF not in enc.read_bytes() and b"DICM" not in enc.read_bytes()
    r = gpg_decrypt(enc, PASSCODE, tmp_path / "gnupg")
    assert r.returncode == 0, r.stderr
    assert b"AES256" in r.stderr
    check_record(r.stdout, sources, tmp_path / "out")

    bad = gpg_decrypt(enc, PASSCODE + "x", tmp_path / "gnupg")
    assert bad.returncode != 0 and bad.stdout == b""


@needs_age
def test_age_export_opens_with_age(tmp_path: Path, sources: dict[str, bytes]) -> None:
    enc = tmp_path / "record.zip.age"
    with enc.open("wb") as f:
        write_export(f, make_items(sources), passcode=PASSCODE, fmt="age", patient_label="Jane Doe")
    assert enc.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    rc, transcript = age_decrypt(enc, PASSCODE, tmp_path / "record.zip")
    assert rc == 0, transcript
    check_record((tmp_path / "record.zip").read_bytes(), sources, tmp_path / "out")

    rc, transcript = age_decrypt(enc, "wrong " + PASSCODE, tmp_path / "bad.zip")
    assert rc != 0 and b"incorrect passphrase" in transcript.lower()
    assert not (tmp_path / "bad.zip").exists() or (tmp_path / "bad.zip").stat().st_size == 0


def test_plain_zip_export(tmp_path: Path, sources: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    write_export(buf, make_items(sources), passcode=None, fmt="zip", patient_label="Jane Doe", compresslevel=None)
    check_record(buf.getvalue(), sources, tmp_path)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_specific_errors(sources: dict[str, bytes]) -> None:
    header = pydicom.dcmread(io.BytesIO(sources["CT_small.dcm"]), stop_before_pixels=True)
    with pytest.raises(ExportError, match="Part 10"):
        write_export(io.BytesIO(), [ExportItem(header=header, open=_opener(b"not dicom" * 100))],
                     passcode=None, fmt="zip", patient_label="x")
    with pytest.raises(ExportError, match="needs its header"):
        write_export(io.BytesIO(), [ExportItem(open=_opener(sources["CT_small.dcm"]))],
                     passcode=None, fmt="zip", patient_label="x")
    with pytest.raises(ExportError, match="neither"):
        write_export(io.BytesIO(), [ExportItem()], passcode=None, fmt="zip", patient_label="x")
    with pytest.raises(ExportError, match="needs a passcode"):
        write_export(io.BytesIO(), [], passcode="", fmt="gpg", patient_label="x")
    with pytest.raises(ExportError, match="not encrypted"):
        write_export(io.BytesIO(), [], passcode=PASSCODE, fmt="zip", patient_label="x")
    with pytest.raises(ExportError, match="unknown"):
        write_export(io.BytesIO(), [], passcode=PASSCODE, fmt="rar", patient_label="x")  # type: ignore[arg-type]


def test_failed_export_leaves_no_valid_zip(sources: dict[str, bytes]) -> None:
    header = pydicom.dcmread(io.BytesIO(sources["CT_small.dcm"]), stop_before_pixels=True)
    items = [ExportItem(header=header, open=_opener(sources["CT_small.dcm"])),
             ExportItem(header=header, open=_opener(b"garbage" * 50))]
    buf = io.BytesIO()
    with pytest.raises(ExportError):
        write_export(buf, items, passcode=None, fmt="zip", patient_label="x")
    written = buf.getvalue()
    assert written.startswith(b"PK\x03\x04") and b"DICOM/PAT00001" in written  # first member streamed
    assert b"PK\x05\x06" not in written and b"PK\x06\x06" not in written  # no end of central directory
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(buf.getvalue()))


# ---------------------------------------------------------------- the encryptors on their own
SIZES = [0, 1, 511, 65536, 65537, (1 << 20), (1 << 20) + 1, 3 * (1 << 20) + 12345]


@needs_gpg
@pytest.mark.parametrize("size", SIZES)
def test_openpgp_writer_boundaries(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "x.gpg"
    with path.open("wb") as f, OpenPGPSymmetricWriter(f, PASSCODE, s2k_count_byte=0x60) as w:
        for i in range(0, size, 100_003):
            w.write(data[i : i + 100_003])
    r = gpg_decrypt(path, PASSCODE, tmp_path / "gnupg")
    assert r.returncode == 0, r.stderr
    assert r.stdout == data


@needs_age
@pytest.mark.parametrize("size", SIZES)
def test_age_writer_boundaries(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "x.age"
    with path.open("wb") as f, AgeScryptWriter(f, PASSCODE, work_factor=12) as w:
        for i in range(0, size, 100_003):
            w.write(data[i : i + 100_003])
    rc, transcript = age_decrypt(path, PASSCODE, tmp_path / "x")
    assert rc == 0, transcript
    # age opens its -o file lazily, on the first plaintext byte: no file means empty output
    got = (tmp_path / "x").read_bytes() if (tmp_path / "x").exists() else b""
    assert got == data


@needs_gpg
def test_tampered_openpgp_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.gpg"
    with path.open("wb") as f, OpenPGPSymmetricWriter(f, PASSCODE, s2k_count_byte=0x60) as w:
        w.write(b"A" * 5000)
    raw = bytearray(path.read_bytes())
    raw[-30] ^= 1
    path.write_bytes(bytes(raw))
    r = gpg_decrypt(path, PASSCODE, tmp_path / "gnupg")
    assert r.returncode != 0


def test_writer_aborts_without_trailer_on_error() -> None:
    buf = io.BytesIO()
    with pytest.raises(RuntimeError), AgeScryptWriter(buf, PASSCODE, work_factor=10) as w:
        w.write(b"x" * 200_000)
        raise RuntimeError("boom")
    # three full chunks were sealed, the held-back tail never gets its last-chunk seal
    assert w.closed
    body = buf.getvalue().split(b"\n---", 1)[1]
    assert len(body) < 200_000


# ---------------------------------------------------------------- memory and throughput
_MEMORY_SCRIPT = textwrap.dedent(
    """
    import io, json, os, resource, sys, time
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, CTImageStorage, generate_uid
    from storage.export import ExportItem, write_export

    fmt, total_mb, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    level = None if sys.argv[4] == "stored" else int(sys.argv[4])
    BLOCK = os.urandom(1 << 20)  # incompressible pixel data, shared by all items
    study, series = generate_uid(), [generate_uid() for _ in range(10)]

    class Stream(io.RawIOBase):
        def __init__(self, parts):
            self._parts, self._cur = iter(parts), memoryview(b"")
        def readable(self):
            return True
        def readinto(self, b):
            while not len(self._cur):
                nxt = next(self._parts, None)
                if nxt is None:
                    return 0
                self._cur = memoryview(nxt)
            n = min(len(b), len(self._cur))
            b[:n] = self._cur[:n]
            self._cur = self._cur[n:]
            return n

    def items():
        for i in range(total_mb):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID, ds.PatientName, ds.Modality = "SYN1", "Synthetic^Patient", "CT"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series[i % 10]
            ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
            ds.SeriesNumber, ds.InstanceNumber = i % 10 + 1, i + 1
            head = io.BytesIO()
            pydicom.dcmwrite(head, ds, enforce_file_format=True)
            pixel_header = b"\\xe0\\x7f\\x10\\x00OW\\x00\\x00" + len(BLOCK).to_bytes(4, "little")
            data = [head.getvalue(), pixel_header, BLOCK]
            yield ExportItem(header=ds, open=lambda data=data: io.BufferedReader(Stream(data)))

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with open(out_path, "wb") as out:
        write_export(out, items(), passcode=None if fmt == "zip" else "a b c d e f g", fmt=fmt,
                     patient_label="Synthetic", age_work_factor=14, compresslevel=level)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kb": after - before, "seconds": seconds,
                      "mb": total_mb * (1 << 20) / 1e6, "out_bytes": os.path.getsize(out_path)}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zip", "gpg", "age"])
def test_memory_bounded_and_throughput(tmp_path: Path, fmt: str) -> None:
    """~300 MB of synthetic instances, generated on the fly; peak RSS growth must stay < 100 MB.

    age uses scrypt work factor 14 here: at the default 18, scrypt itself needs 256 MiB once,
    before any data flows; what this test measures is the streaming part.
    """
    out = tmp_path / f"big.{fmt}"
    r = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, fmt, "300", str(out), os.environ.get("EXPORT_BENCH_LEVEL", "1")],
        capture_output=True, text=True, timeout=280, cwd=Path(__file__).resolve().parents[1],
    )
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    print(f"\n{fmt}: {figures['mb']:.0f} MB in {figures['seconds']:.2f} s = "
          f"{figures['mb'] / figures['seconds']:.0f} MB/s, peak RSS growth {figures['growth_kb'] / 1024:.1f} MiB")
    assert figures["growth_kb"] < 100 * 1024
    assert figures["out_bytes"] > 300 * (1 << 20)
    if fmt == "gpg":
        dec = subprocess.run(
            f"gpg --homedir {tmp_path / 'gh'} --batch --pinentry-mode loopback --passphrase 'a b c d e f g' -d {out} | wc -c",
            shell=True, capture_output=True, text=True, timeout=120,
            preexec_fn=lambda: os.makedirs(tmp_path / "gh", mode=0o700, exist_ok=True),
        )
        assert int(dec.stdout.strip()) > 300 * (1 << 20), dec.stderr
    elif fmt == "age":
        rc, transcript = age_decrypt(out, "a b c d e f g", tmp_path / "big.zip")
        assert rc == 0, transcript
        with zipfile.ZipFile(tmp_path / "big.zip") as zf:
            assert len([n for n in zf.namelist() if n.startswith("DICOM/")]) == 300


def test_only_native_dicom_and_text_are_deflated() -> None:
    native = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    jpeg = Path(get_testdata_file("JPEG-lossy.dcm")).read_bytes()
    items = [ExportItem(header=pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True), open=_opener(d))
             for d in (native, jpeg)]
    items.append(ExportItem(original=OriginalFile("note.txt", "text/plain", _opener(b"hello " * 100))))
    items.append(ExportItem(original=OriginalFile("scan.pdf", "application/pdf", _opener(PDF))))
    buf = io.BytesIO()
    write_export(buf, items, passcode=None, fmt="zip", patient_label="x")
    with zipfile.ZipFile(buf) as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
        assert zf.read("DICOM/PAT00002/STU00001/SER00001/IMG00001") == jpeg
    assert kinds["DICOM/PAT00001/STU00001/SER00001/IMG00001"] == zipfile.ZIP_DEFLATED
    assert kinds["DICOM/PAT00002/STU00001/SER00001/IMG00001"] == zipfile.ZIP_STORED
    assert kinds["ORIGINALS/note.txt"] == zipfile.ZIP_DEFLATED
    assert kinds["ORIGINALS/scan.pdf"] == zipfile.ZIP_STORED
