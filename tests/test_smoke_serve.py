"""The server starts, answers C-ECHO, and stores what dcmtk storescu sends."""

import subprocess

from storage.query import Query
from tests.conftest import require
from tests.dicomgen import make_study


def test_echo_and_store_with_dcmtk(server, tmp_path):
    require("echoscu")
    echo = subprocess.run(["echoscu", "-aec", server.ae_title, "127.0.0.1", str(server.dicom_port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    paths = make_study(tmp_path / "in", n_series=2, per_series=2, patient_id="SMOKE1")
    store = subprocess.run(["storescu", "-aec", server.ae_title, "+sd", "127.0.0.1",
                            str(server.dicom_port), str(tmp_path / "in")],
                           capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"})
    assert store.returncode == 0, store.stderr
    archive = server.archive()
    try:
        studies = list(archive.find(Query("STUDY", filters={"PatientID": "SMOKE1"},
                                          return_keys=["NumberOfStudyRelatedInstances"])))
        assert len(studies) == 1
        assert studies[0]["NumberOfStudyRelatedInstances"] == len(paths)
    finally:
        archive.close()
