"""C-FIND, C-MOVE and C-CANCEL against ``pacs serve`` with dcmtk findscu/movescu and pynetdicom
(PS3.4 C.4.1, C.4.2, C.6)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.conftest import require, start_server, wait_for_port
from tests.dicomgen import make_study

pytestmark = pytest.mark.cloud  # server tests on SQLite + files and on PostgreSQL + S3

#: patient id -> (name, [(study date, modality)])
PATIENTS = {
    "QR1": ("DOE^JOHN", [("20200315", "CT"), ("20210610", "MR")]),
    "QR2": ("DOE^JANE", [("20201120", "CT")]),
    "QR3": ("SMITH^ANN", [("20190101", "CT")]),
    "QR4": ("Müller^Jürgen", [("20200707", "MR")]),
}
BULK = 150  # instances of one study, for C-CANCEL


@pytest.fixture(scope="module")
def data(server, tmp_path_factory):
    """Studies of PATIENTS (1 series x 2 images each) and one bulk study, pushed by dcmtk storescu."""
    require("storescu")
    base = tmp_path_factory.mktemp("qr")
    studies: dict[str, list[str]] = {}
    files: dict[str, list[Path]] = {}
    for pid, (name, items) in PATIENTS.items():
        for date, modality in items:
            paths = make_study(base / "in", n_series=1, per_series=2, patient_id=pid, patient_name=name,
                               study_date=date, modality=modality, rows=16, columns=16,
                               charset="ISO_IR 192" if not name.isascii() else None)
            uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
            studies.setdefault(pid, []).append(uid)
            files[uid] = paths
    bulk = make_study(base / "in", n_series=1, per_series=BULK, patient_id="BULK", patient_name="ZZ^BULK",
                      study_date="20150101", rows=8, columns=8)
    files["BULK"] = bulk
    r = subprocess.run(["storescu", "-aec", server.ae_title, "+sd", "127.0.0.1", str(server.dicom_port),
                        str(base / "in")], capture_output=True, text=True, timeout=120,
                       env={"TCP_NODELAY": "1"})
    assert r.returncode == 0, r.stderr
    return {"studies": studies, "files": files, "bulk_study": str(pydicom.dcmread(bulk[0]).StudyInstanceUID)}


def findscu(server, tmp_path: Path, *args: str) -> tuple[list[Dataset], str]:
    """Run dcmtk findscu with -X; returns the response identifiers and the log."""
    out = tmp_path / f"rsp{time.monotonic_ns()}"
    out.mkdir()
    r = subprocess.run(["findscu", "-v", "-aec", server.ae_title, "-X", "-od", str(out), *args,
                        "127.0.0.1", str(server.dicom_port)], capture_output=True, text=True, timeout=60)
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))], r.stdout + r.stderr


def keys(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("-k", p)]


def test_patient_root_patient_level_wildcard(server, data, tmp_path):
    rsps, log = findscu(server, tmp_path, "-P", *keys("QueryRetrieveLevel=PATIENT", "PatientName=DOE*",
                                                      "PatientID", "PatientBirthDate"))
    assert sorted(str(r.PatientID) for r in rsps) == ["QR1", "QR2"], log
    assert all(r.QueryRetrieveLevel == "PATIENT" and r.RetrieveAETitle == server.ae_title for r in rsps)
    assert {str(r.PatientName) for r in rsps} == {"DOE^JOHN", "DOE^JANE"}
    assert "StudyInstanceUID" not in rsps[0]  # only what was asked (plus the level's unique key)


def test_study_root_study_level_date_range(server, data, tmp_path):
    rsps, log = findscu(server, tmp_path, "-S", *keys("QueryRetrieveLevel=STUDY", "StudyDate=20200101-20201231",
                                                      "StudyInstanceUID", "PatientID", "ModalitiesInStudy"))
    expect = {data["studies"]["QR1"][0], data["studies"]["QR2"][0], data["studies"]["QR4"][0]}
    assert {r.StudyInstanceUID for r in rsps} == expect, log
    assert all("20200101" <= r.StudyDate <= "20201231" for r in rsps)


def test_instance_availability_is_answered_when_asked(server, data, tmp_path):
    for level, pairs in (("STUDY", ["PatientID=QR3"]), ("IMAGE", [f"StudyInstanceUID={data['studies']['QR3'][0]}"])):
        rsps, log = findscu(server, tmp_path, "-S", *keys(f"QueryRetrieveLevel={level}", *pairs,
                                                          "InstanceAvailability"))
        assert rsps and all(r.InstanceAvailability == "ONLINE" for r in rsps), log
    rsps, _ = findscu(server, tmp_path, "-S", *keys("QueryRetrieveLevel=STUDY", "PatientID=QR3"))
    assert "InstanceAvailability" not in rsps[0]  # only when asked


def test_study_root_uid_list(server, data, tmp_path):
    wanted = [data["studies"]["QR1"][1], data["studies"]["QR3"][0]]
    rsps, log = findscu(server, tmp_path, "-S", *keys("QueryRetrieveLevel=STUDY",
                                                      "StudyInstanceUID=" + "\\".join(wanted), "PatientName"))
    assert sorted(r.StudyInstanceUID for r in rsps) == sorted(wanted), log


def test_patient_root_study_level_by_patient(server, data, tmp_path):
    rsps, log = findscu(server, tmp_path, "-P", *keys("QueryRetrieveLevel=STUDY", "PatientID=QR1",
                                                      "StudyInstanceUID", "StudyDate"))
    assert sorted(r.StudyInstanceUID for r in rsps) == sorted(data["studies"]["QR1"]), log


def test_series_and_image_levels(server, data, tmp_path):
    study = data["studies"]["QR2"][0]
    series, log = findscu(server, tmp_path, "-S", *keys("QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}",
                                                        "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances"))
    assert len(series) == 1, log
    assert series[0].Modality == "CT" and int(series[0].NumberOfSeriesRelatedInstances) == 2
    images, log = findscu(server, tmp_path, "-P", *keys(
        "QueryRetrieveLevel=IMAGE", "PatientID=QR2", f"StudyInstanceUID={study}",
        f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber"))
    expect = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in data["files"][study]}
    assert {r.SOPInstanceUID for r in images} == expect, log
    assert sorted(int(r.InstanceNumber) for r in images) == [1, 2]


def test_non_ascii_answer_declares_utf8(server, data, tmp_path):
    rsps, log = findscu(server, tmp_path, "-P", *keys("QueryRetrieveLevel=PATIENT", "PatientID=QR4", "PatientName"))
    assert len(rsps) == 1, log
    assert rsps[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(rsps[0].PatientName) == "Müller^Jürgen"


def test_bad_identifiers_fail_with_a_comment(server, data, tmp_path):
    rsps, log = findscu(server, tmp_path, "-S", *keys("QueryRetrieveLevel=PATIENT", "PatientID"))
    assert not rsps and "DataSetDoesNotMatchSOPClass" in log  # Study Root has no PATIENT level
    cases = [({"QueryRetrieveLevel": "PATIENT", "PatientID": ""}, StudyRootQueryRetrieveInformationModelFind,
              0xA900, "PATIENT"),
             ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2020-01"}, StudyRootQueryRetrieveInformationModelFind,
              0xC000, "StudyDate"),
             ({"QueryRetrieveLevel": "FOO", "PatientID": ""}, PatientRootQueryRetrieveInformationModelFind,
              0xA900, "QueryRetrieveLevel"),
             ({"PatientID": "QR1"}, PatientRootQueryRetrieveInformationModelFind, 0xA900, "QueryRetrieveLevel")]
    assoc = _assoc(server, StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind)
    try:
        for values, model, code, word in cases:
            query = Dataset()
            for k, v in values.items():
                setattr(query, k, v)
            answers = list(assoc.send_c_find(query, model))
            assert len(answers) == 1, values
            status, identifier = answers[0]
            assert status.Status == code and identifier is None, values
            assert word in status.ErrorComment, values
    finally:
        assoc.release()


def test_pynetdicom_findscu_app(server, data, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pynetdicom", "findscu", "-aec", server.ae_title, "-S", "-w",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=QR3", "-k", "StudyInstanceUID",
                        "127.0.0.1", str(server.dicom_port)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rsps = [pydicom.dcmread(p) for p in tmp_path.glob("rsp*.dcm")]
    assert [x.StudyInstanceUID for x in rsps] == data["studies"]["QR3"]


def test_unknown_move_destination(server, data):
    require("movescu")
    r = subprocess.run(["movescu", "-d", "-aec", server.ae_title, "-aem", "NOWHERE", "-S",
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={data['studies']['QR3'][0]}",
                        "127.0.0.1", str(server.dicom_port)], capture_output=True, text=True, timeout=60)
    assert "DIMSE Status                  : 0xa801" in r.stdout + r.stderr, r.stdout + r.stderr


def test_move_to_a_switched_off_destination_fails_in_seconds(tmp_path):
    """A configured destination that never answers the TCP handshake (a listening socket whose
    backlog is full drops further SYNs, like a switched-off workstation behind a firewall): the
    C-MOVE fails after ``connect_timeout``, not after the system's ~2-minute TCP timeout."""
    require("movescu")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    queued = []
    for _ in range(3):  # fill the accept queue; nobody ever accepts
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(silent.getsockname())
        queued.append(c)
    srv = start_server(tmp_path, PACS_CONNECT_TIMEOUT="2",
                       PACS_DESTINATIONS=f"SILENT=127.0.0.1:{silent.getsockname()[1]}")
    try:
        make_study(tmp_path / "in", n_series=1, per_series=1, patient_id="SILENT1",
                   study_uid="1.2.826.0.1.3680043.8.498.4242.1")
        subprocess.run(["storescu", "-aec", srv.ae_title, "+sd", "127.0.0.1", str(srv.dicom_port),
                        str(tmp_path / "in")], check=True, capture_output=True, timeout=60)
        t0 = time.monotonic()
        r = subprocess.run(["movescu", "-d", "-aec", srv.ae_title, "-aem", "SILENT", "-S",
                            "-k", "QueryRetrieveLevel=STUDY",
                            "-k", "StudyInstanceUID=1.2.826.0.1.3680043.8.498.4242.1",
                            "127.0.0.1", str(srv.dicom_port)], capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - t0
        assert elapsed < 15, elapsed
        out = r.stdout + r.stderr
        # A702 with a comment (as dcmtk's and OsiriX's SCPs answer), not A801 "destination unknown"
        assert "DIMSE Status                  : 0xa702" in out, out
        assert "ErrorComment" in out and "could not connect to move destination SILENT" in out
        echo = subprocess.run(["echoscu", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port)],
                              capture_output=True, timeout=30)
        assert echo.returncode == 0
    finally:
        srv.stop()
        for c in queued:
            c.close()
        silent.close()


def _assoc(server, *contexts):
    ae = AE(ae_title="CANCELSCU")
    for cx in contexts:
        ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.ae_title)
    assert assoc.is_established
    return assoc


def test_cancel_during_find(server, data):
    """C-CANCEL after the first pending response ends the C-FIND with Cancel (PS3.4 C.4.1.3.1).

    An SCP that sent every match before the cancel arrived rightly answers Success with all of them
    (the cancel came too late); that race is tried again, and a cancel must land at least once.
    """
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.PatientID = "BULK"
    query.StudyInstanceUID = data["bulk_study"]
    query.SOPInstanceUID = ""
    outcomes = []
    for attempt in range(8):
        assoc = _assoc(server, PatientRootQueryRetrieveInformationModelFind)
        try:
            pending, final = 0, None
            for status, _ in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind,
                                               msg_id=7 + attempt):
                if status.Status in (0xFF00, 0xFF01):
                    pending += 1
                    if pending == 1:
                        cx = assoc._get_valid_context(PatientRootQueryRetrieveInformationModelFind, "", "scu")
                        assoc.send_c_cancel(7 + attempt, cx.context_id)
                else:
                    final = status.Status
        finally:
            assoc.release()
        outcomes.append((final, pending))
        if final == 0xFE00:
            assert pending < BULK
            break
        assert (final, pending) == (0x0000, BULK)  # finished before the cancel arrived: all matches
    assert outcomes[-1][0] == 0xFE00, outcomes


def test_cancel_during_move(server, data, tmp_path):
    require("storescp")
    scp = subprocess.Popen(["storescp", "-aet", "MOVESCP", "--ignore", str(server.extra["move_port"])],
                           env={"TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(server.extra["move_port"])  # storescp listening before the C-MOVE
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = data["bulk_study"]
        assoc = _assoc(server, StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelFind)
        try:
            final, pending = None, 0
            for status, _ident in assoc.send_c_move(query, "MOVESCP", StudyRootQueryRetrieveInformationModelMove,
                                                    msg_id=9):
                if status.Status == 0xFF00:
                    pending += 1
                    if pending == 1:
                        cx = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelMove, "", "scu")
                        assoc.send_c_cancel(9, cx.context_id)
                else:
                    final = status
            assert final is not None and final.Status == 0xFE00
            assert final.NumberOfCompletedSuboperations < BULK
            assert final.NumberOfRemainingSuboperations > 0
        finally:
            assoc.release()
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    deadline = time.monotonic() + 10
    while True:  # the cancelled C-MOVE is audited too, with what it sent
        archive = server.archive()
        try:
            cancelled = [e for e in archive.audit.events(action="retrieve", limit=100_000)
                         if e.study_uid == data["bulk_study"] and e.actor == "CANCELSCU"]
        finally:
            archive.close()
        if cancelled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e.outcome for e in cancelled] == ["cancelled"]


def test_retrieve_is_audited(server, tmp_path):
    """A C-GET and a C-MOVE each leave an audit record naming the study and the calling AE."""
    require("getscu")
    require("storescp")
    [path] = make_study(tmp_path / "in", n_series=1, per_series=1, patient_id="QR-AUDIT",
                        patient_name="AUDIT^QUENTIN", rows=8, columns=8)  # no other test's match
    archive = server.archive()
    try:
        stored = archive.store(path)
    finally:
        archive.close()
    query = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={stored.study_uid}"]
    (tmp_path / "got").mkdir()
    got = subprocess.run(["getscu", "-aet", "AUDITGET", "-aec", server.ae_title, *query, "-od",
                          str(tmp_path / "got"), "127.0.0.1", str(server.dicom_port)],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and len(list((tmp_path / "got").iterdir())) == 1, got.stderr
    scp = subprocess.Popen(["storescp", "-aet", "MOVESCP", "--ignore", str(server.extra["move_port"])],
                           env={"TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(server.extra["move_port"])
        moved = subprocess.run(["movescu", "-aet", "AUDITMOVE", "-aec", server.ae_title, "-aem",
                                "MOVESCP", *query, "127.0.0.1", str(server.dicom_port)],
                               capture_output=True, text=True, timeout=60)
        assert moved.returncode == 0, moved.stderr
    finally:
        scp.terminate()
        scp.wait(timeout=10)
    deadline = time.monotonic() + 10
    while True:  # written when the retrieve ends: wait for it, up to a deadline
        archive = server.archive()
        try:
            events = list(archive.audit.events(action="retrieve", patient_ref=stored.patient_ref))
        finally:
            archive.close()
        actors = sorted(e.actor for e in events)
        if len(actors) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert actors == ["AUDITGET", "AUDITMOVE"]
    assert all(e.study_uid == stored.study_uid and e.outcome == "success" for e in events)
