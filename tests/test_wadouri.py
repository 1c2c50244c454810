"""WADO-URI (PS3.18 9) at ``/wado`` and under the DICOMweb root, fetched with curl."""

from __future__ import annotations

import io
import subprocess

import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless

from storage.artifacts import PatientInfo, StudyInfo, encapsulate
from tests.conftest import require
from tests.data_artifacts import make_pdf
from tests.dicomgen import make_image


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def objs(server) -> dict[str, tuple[Dataset, bytes]]:
    native = make_image(rows=64, columns=48, patient_id="URI1")
    j2k = make_image(rows=32, columns=32, frames=2, patient_id="URI1",
                     study_uid=native.StudyInstanceUID)
    j2k.compress(JPEG2000Lossless)
    pdf_bytes = make_pdf("WADO-URI letter")
    pdf = encapsulate(pdf_bytes, patient=PatientInfo(patient_id="URI1"),
                      study=StudyInfo(study_instance_uid=native.StudyInstanceUID), filename="l.pdf")
    out = {"native": (native, _part10(native)), "j2k": (j2k, _part10(j2k)), "pdf": (pdf, pdf_bytes)}
    archive = server.archive()
    try:
        for ds, raw in out.values():
            archive.store(_part10(ds) if ds is pdf else raw, actor="test", origin="test")
    finally:
        archive.close()
    return out


def _curl(url: str) -> tuple[int, str, bytes]:
    proc = subprocess.run([require("curl"), "-sS", "-o", "-", "-w",
                           "\n%{http_code} %{content_type}", url],
                          capture_output=True, timeout=30, check=True)
    body, _, tail = proc.stdout.rpartition(b"\n")
    code, _, ctype = tail.decode().partition(" ")
    return int(code), ctype, body


def _q(ds: Dataset, **extra: str) -> str:
    params = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID,
              "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID, **extra}
    return "&".join(f"{k}={v}" for k, v in params.items())


@pytest.fixture(params=["/wado", "/dicom-web/wado"])
def base(server, request) -> str:
    return server.http_url + request.param


def test_default_is_jpeg(base, objs):
    code, ctype, body = _curl(f"{base}?{_q(objs['native'][0])}")
    assert code == 200 and ctype == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (48, 64)


def test_dicom_as_stored_is_byte_identical(base, objs):
    ds, raw = objs["j2k"]
    code, ctype, body = _curl(f"{base}?{_q(ds, contentType='application/dicom')}")
    assert code == 200 and ctype == "application/dicom" and body == raw


def test_dicom_transcoded_to_explicit_le(base, objs):
    ds, _ = objs["j2k"]
    code, _, body = _curl(f"{base}?{_q(ds, contentType='application/dicom', transferSyntax='1.2.840.10008.1.2.1')}")
    got = pydicom.dcmread(io.BytesIO(body))
    assert code == 200 and got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert got.pixel_array.shape == (2, 32, 32)


def test_png_frame_size_and_window(base, objs):
    ds, _ = objs["j2k"]
    code, ctype, body = _curl(f"{base}?{_q(ds, contentType='image/png', frameNumber='2', rows='16', windowCenter='40', windowWidth='400')}")
    assert code == 200 and ctype == "image/png"
    assert Image.open(io.BytesIO(body)).size == (16, 16)


def test_pdf_comes_back_as_the_original(base, objs):
    ds, pdf = objs["pdf"]
    code, ctype, body = _curl(f"{base}?{_q(ds)}")
    assert code == 200 and ctype == "application/pdf" and body == pdf


@pytest.mark.parametrize("extra,code", [
    ({"anonymize": "yes"}, 400),
    ({"requestType": "XYZ"}, 400),
    ({"objectUID": "1.2.3.4"}, 404),
    ({"frameNumber": "9"}, 404),
    ({"windowCenter": "40"}, 400),
    ({"contentType": "image/jpeg", "rows": "\u00b2"}, 400),  # a digit to str.isdigit, not to int
    ({"contentType": "text/html"}, 406),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.4.80"}, 406),
])
def test_errors(base, objs, extra, code):
    got, _, body = _curl(f"{base}?{_q(objs['native'][0], **extra)}")
    assert got == code and body.strip() and b"Traceback" not in body


def test_missing_uid_is_400(base):
    code, _, body = _curl(f"{base}?requestType=WADO&studyUID=1.2.3")
    assert code == 400 and b"seriesUID" in body
