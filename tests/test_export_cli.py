"""``pacs export``: the record opened by the real ``gpg`` and ``age``, compared with what was stored."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

import pydicom
import pytest

from tests.conftest import PACS, require
from tests.data_artifacts import make_pdf
from tests.dicomgen import make_study
from tests.test_export import age_decrypt, gpg_decrypt

PASSCODE = "correct horse battery staple maple river"


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> dict:
    """A data dir with one patient's study and a PDF, and another patient (must not be exported)."""
    base = tmp_path_factory.mktemp("export")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env["PACS_DATA_DIR"] = str(base / "data")

    def pacs(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([PACS, *args], env=env, input=input, capture_output=True, text=True,
                              check=check, timeout=120)

    mine = make_study(base / "in" / "mine", n_series=2, per_series=2, patient_id="EXP-1")
    make_study(base / "in" / "other", n_series=1, per_series=1, patient_id="EXP-2", patient_name="Other^Olga")
    pacs("import", "-q", str(base / "in"))
    pdf = make_pdf("Discharge letter for export")
    (base / "report.pdf").write_bytes(pdf)
    pacs("attach", "--patient-id", "EXP-1", str(base / "report.pdf"))
    return {"pacs": pacs, "mine": {p.read_bytes() for p in mine}, "pdf": pdf, "base": base}


def _check_zip(data: bytes, stored: dict) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert {"DICOMDIR", "INDEX.HTM", "README.txt"} <= set(names)
        dicom = [n for n in names if n.startswith("DICOM/")]
        assert all(len(part) <= 8 for n in dicom for part in n.split("/"))
        files = {zf.read(n) for n in dicom}
        originals = [zf.read(n) for n in names if n.startswith("ORIGINALS/")]
    assert stored["mine"] <= files  # every stored image, byte for byte
    assert len(files) == len(stored["mine"]) + 1  # + the encapsulated PDF; nothing of EXP-2
    assert all(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).PatientID == "EXP-1" for f in files)
    assert originals == [stored["pdf"]]


def test_gpg_export_opens_with_gpg(stored: dict, tmp_path: Path) -> None:
    require("gpg")
    out = tmp_path / "record.zip.gpg"
    stored["pacs"]("export", "--patient-id", "EXP-1", "--format", "gpg", "--out", str(out),
                   "--passcode-stdin", input=PASSCODE + "\n")
    done = gpg_decrypt(out, PASSCODE, tmp_path / "gnupg")
    assert done.returncode == 0, done.stderr
    _check_zip(done.stdout, stored)
    wrong = gpg_decrypt(out, PASSCODE + "x", tmp_path / "gnupg")
    assert wrong.returncode != 0 and not wrong.stdout.startswith(b"PK")


def test_age_export_opens_with_age(stored: dict, tmp_path: Path) -> None:
    require("age")
    out = tmp_path / "record.zip.age"
    stored["pacs"]("export", "--patient-id", "EXP-1", "--format", "age", "--out", str(out),
                   "--passcode-stdin", input=PASSCODE + "\n")
    assert out.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    plain = tmp_path / "record.zip"
    code, transcript = age_decrypt(out, PASSCODE, plain)
    assert code == 0, transcript
    _check_zip(plain.read_bytes(), stored)
    bad = tmp_path / "bad.zip"
    code, _ = age_decrypt(out, "not the passcode", bad)
    assert code != 0 and (not bad.exists() or bad.stat().st_size == 0)


def test_export_is_audited_and_refuses_unknown_patient(stored: dict, tmp_path: Path) -> None:
    stored["pacs"]("export", "--patient-id", "EXP-1", "--format", "age", "--out",  # its own export
                   str(tmp_path / "mine.age"), "--passcode-stdin", input=PASSCODE + "\n")
    done = stored["pacs"]("export", "--patient-id", "NOPE", "--format", "gpg", "--out",
                          str(tmp_path / "x.gpg"), "--passcode-stdin", input=PASSCODE + "\n", check=False)
    assert done.returncode != 0 and "no such patient" in done.stderr
    assert not (tmp_path / "x.gpg").exists()
    trail = stored["pacs"]("audit", "--patient-id", "EXP-1", "--action", "export").stdout
    assert "\texport\tsuccess\tpacs export\t" in trail
