"""The DIMSE core on stock pynetdicom: the patches off by setting, or a pynetdicom they do not know.

``pacs serve`` must start and serve C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE correctly when
pacs.dimse applies no patch: with ``dimse_patches = false``, and with a pynetdicom whose version is
not the pinned one (simulated: a ``sitecustomize`` renames the installed 3.0.4 to 3.1.0 before the
server imports it), which must log one warning and nothing else. Real dcmtk peers.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import free_port, require, start_server, wait_for_port
from tests.dicomgen import make_study
from tests.test_dimse_store import received, same_elements

NEWER = "3.1.0"
WARNING = "DICOM networking runs on stock pynetdicom"


@pytest.fixture(scope="module", params=["dimse_patches=false", "newer pynetdicom"])
def stock(request, tmp_path_factory):
    base = tmp_path_factory.mktemp("stock")
    move_port = free_port()
    env = {"PACS_DESTINATIONS": f"MOVESCP=127.0.0.1:{move_port}", "PACS_DIMSE_WORKERS": "2"}
    if request.param == "newer pynetdicom":
        site = base / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(f"import pynetdicom\npynetdicom.__version__ = {NEWER!r}\n")
        env["PYTHONPATH"] = str(site)
    else:
        env["PACS_DIMSE_PATCHES"] = "false"
    srv = start_server(base, **env)
    srv.extra["move_port"] = move_port
    srv.extra["log"] = base / "server.log"  # type: ignore[assignment]
    yield srv
    srv.stop()


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def study(stock, tmp_path_factory) -> dict[str, Path]:
    """A new study stored by dcmtk storescu: SOP Instance UID -> file."""
    require("storescu")
    folder = tmp_path_factory.mktemp("in")
    files = make_study(folder, n_series=2, per_series=2, patient_id=f"STOCK{generate_uid()[-8:]}")
    r = run(["storescu", "-aec", stock.ae_title, "+sd", "127.0.0.1", str(stock.dicom_port), str(folder)])
    assert r.returncode == 0, r.stderr + r.stdout
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}


def study_uid(files: dict[str, Path]) -> str:
    (uid,) = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files.values()}
    return uid


def test_one_warning_and_no_patch(stock):
    text = Path(stock.extra["log"]).read_text()  # type: ignore[arg-type]
    assert text.count(WARNING) == 1, text[-3000:]  # the parent decides; its workers inherit it
    assert "Traceback" not in text


def test_c_echo(stock):
    require("echoscu")
    assert run(["echoscu", "-aec", stock.ae_title, "127.0.0.1", str(stock.dicom_port)]).returncode == 0


def test_c_store_keeps_every_element(stock, study):
    archive = stock.archive()
    try:
        for uid, path in study.items():
            (info,) = archive.instances(sop_uid=uid)
            assert same_elements(archive.dataset(info), pydicom.dcmread(path)), path.name
    finally:
        archive.close()


def test_c_find_finds_the_study(stock, study):
    require("findscu")
    patient_id = str(pydicom.dcmread(next(iter(study.values()))).PatientID)
    r = run(["findscu", "-v", "-aec", stock.ae_title, "-S", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"PatientID={patient_id}", "-k", "StudyInstanceUID", "-k", "NumberOfStudyRelatedInstances",
             "127.0.0.1", str(stock.dicom_port)])
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert out.count(study_uid(study)) == 1 and f"[{len(study)}" in out, out[-2000:]


def test_c_get_gets_the_study_back(stock, study, tmp_path):
    require("getscu")
    out = tmp_path / "got"
    out.mkdir()
    r = run(["getscu", "-v", "-aec", stock.ae_title, "-S", "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={study_uid(study)}", "127.0.0.1", str(stock.dicom_port), "-od", str(out)])
    assert r.returncode == 0, r.stderr
    got = received(out)
    assert set(got) == set(study)
    for uid, path in study.items():
        assert same_elements(pydicom.dcmread(io.BytesIO(got[uid])), pydicom.dcmread(path))


def test_c_move_sends_the_study(stock, study, tmp_path):
    require("movescu")
    out = tmp_path / "moved"
    out.mkdir()
    scp = subprocess.Popen(["storescp", "-aet", "MOVESCP", "-od", str(out), str(stock.extra["move_port"])],
                           env={"TCP_NODELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(stock.extra["move_port"])
        r = run(["movescu", "-aec", stock.ae_title, "-aem", "MOVESCP", "-S", "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={study_uid(study)}", "127.0.0.1", str(stock.dicom_port)])
        assert r.returncode == 0, r.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    got = received(out)
    assert set(got) == set(study)
    for uid, path in study.items():
        assert same_elements(pydicom.dcmread(io.BytesIO(got[uid])), pydicom.dcmread(path))
