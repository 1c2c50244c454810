"""Artifacts in with ``pacs attach``, back out through WADO-RS and C-GET (dcmtk getscu), found by
QIDO-RS and C-FIND (dcmtk findscu), compared with the original bytes."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pydicom
import pytest
import requests
from PIL import Image

from storage.artifacts import extract_original
from tests.conftest import Server, require
from tests.data_artifacts import make_jpeg, make_mp4, make_pdf, make_png, make_wav

RTF = rb"{\rtf1\ansi\deff0 {\fonttbl {\f0 Times;}}\f0 Patient doing well.\par Follow up in 6 weeks.\par}"
TEXT = "Phoned the patient: results normal, caf\u00e9 au lait spots noted.\n".encode()

# kind -> (file name, sample maker, WADO-RS path suffix, Accept, getscu preference, byte-identical)
KINDS = {
    "pdf": ("letter.pdf", make_pdf, "bulkdata/00420011", "application/pdf", [], True),
    "jpeg": ("photo.jpg", make_jpeg, "bulkdata/7FE00010", "image/jpeg", ["+xy"], True),
    "png": ("wound.png", make_png, "rendered", "image/png", [], False),
    "mp4": ("clip.mp4", lambda: make_mp4(seconds=0.4, size="160x120"), "bulkdata/7FE00010",
            "video/mp4", ["+xn"], True),
    "wav": ("dictation.wav", make_wav, "rendered", "audio/wav", [], True),
    "text": ("note.txt", lambda: TEXT, "rendered", "text/plain", [], True),
    "rtf": ("note.rtf", lambda: RTF, "rendered", "*/*", [], True),
}
_STORED = re.compile(r": stored (\S+) in study (\S+)")


def attach(server: Server, path: Path, patient_id: str, *extra: str) -> tuple[str, str]:
    p = server.pacs("attach", str(path), "--patient-id", patient_id, "--patient-name", "Art^Ann",
                    *extra, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    m = _STORED.search(p.stdout)
    assert m, p.stdout
    return m.group(1), m.group(2)


def same_pixels(a: bytes, b: bytes) -> bool:
    ia, ib = Image.open(io.BytesIO(a)).convert("RGB"), Image.open(io.BytesIO(b)).convert("RGB")
    return ia.size == ib.size and ia.tobytes() == ib.tobytes()


@pytest.fixture(scope="module")
def attached(server: Server, tmp_path_factory) -> dict[str, tuple[bytes, str, str, str]]:
    """Each kind attached once for its own patient: kind -> (original, sop, series, study)."""
    folder = tmp_path_factory.mktemp("artifacts")
    out = {}
    for kind, (name, maker, *_rest) in KINDS.items():
        data = maker()
        (folder / name).write_bytes(data)
        sop, study = attach(server, folder / name, f"ART-{kind}", "--description", f"{kind} upload")
        r = requests.get(f"{server.dicomweb_url}/studies/{study}/instances", timeout=30,
                         headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200, r.text
        [inst] = r.json()
        assert inst["00080018"]["Value"] == [sop]
        series = inst["0020000E"]["Value"][0]
        out[kind] = (data, sop, series, study)
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_attach_then_wado_qido_cfind(server: Server, attached, kind: str) -> None:
    _name, _maker, suffix, accept, _prefer, identical = KINDS[kind]
    data, sop, series, study = attached[kind]
    pid = f"ART-{kind}"
    r = requests.get(f"{server.dicomweb_url}/studies", params={"PatientID": pid}, timeout=30)
    assert [s["0020000D"]["Value"][0] for s in r.json()] == [study]

    # WADO-RS: the original back
    url = f"{server.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}/{suffix}"
    r = requests.get(url, headers={"Accept": accept}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    if identical:
        assert r.content == data
    else:
        assert same_pixels(r.content, data)

    # C-FIND (dcmtk findscu)
    p = subprocess.run([require("findscu"), "-S", "-aec", server.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"PatientID={pid}", "-k", "StudyInstanceUID", "127.0.0.1",
                        str(server.dicom_port)], capture_output=True, timeout=60)
    assert p.returncode == 0 and study in (p.stdout + p.stderr).decode("latin-1")


@pytest.mark.parametrize("kind", list(KINDS))
def test_cget_original(server: Server, attached, tmp_path: Path, kind: str) -> None:
    """C-GET (dcmtk getscu, proposing the stored syntax first) and the original out of the object."""
    _name, _maker, _suffix, _accept, prefer, identical = KINDS[kind]
    data, sop, series, study = attached[kind]
    p = subprocess.run([require("getscu"), "-S", "-aec", server.ae_title, *prefer,
                        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                        "-k", f"SeriesInstanceUID={series}", "-k", f"SOPInstanceUID={sop}",
                        "-od", str(tmp_path), "127.0.0.1", str(server.dicom_port)],
                       capture_output=True, timeout=60)
    files = list(tmp_path.iterdir())
    assert len(files) == 1, (p.returncode, p.stderr.decode("latin-1")[-2000:])
    original = extract_original(pydicom.dcmread(files[0]))
    if identical:
        assert original.data == data
    else:
        assert same_pixels(original.data, data)
