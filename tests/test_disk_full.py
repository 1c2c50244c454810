"""A full disk, for real: the data directory is a small tmpfs that fills during a push.

Each object that does not fit is refused with Out of Resources (C-STORE A700, STOW-RS FailureReason
A700) and a comment, on the same association; nothing half-written stays behind (as many blob files
as indexed objects); the server keeps answering, and stores again once there is room.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from storage.blobstore import is_inline
from storage.query import Query
from tests.conftest import require, start_server
from tests.dicomgen import make_image, write
from tests.test_dimse_store import dataset_bytes

OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def small_disk(tmp_path: Path):
    """An 8 MB tmpfs at ``tmp_path/srv/data`` (the server's data directory); root only."""
    mount = tmp_path / "srv" / "data"
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _slices(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(3)
    study = pydicom.uid.generate_uid()
    series = pydicom.uid.generate_uid()
    return [write(make_image(patient_id="FULL1", study_uid=study, series_uid=series, rows=256,
                             columns=256, instance_number=i + 1,
                             pixels=rng.integers(0, 4095, (256, 256), dtype=np.uint16)), folder)
            for i in range(count)]


def _stow(url: str, path: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    r = requests.post(f"{url}/studies", data=body, timeout=60, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert r.headers["Content-Type"] == "application/dicom+json"
    return r.json()


def test_a_full_disk_refuses_each_object_cleanly_and_recovers(tmp_path, small_disk):
    require("storescu")
    files = _slices(tmp_path / "in", 80)  # 80 x 128 KB: 10 MB into 8 MB
    srv = start_server(tmp_path / "srv")
    try:
        push = subprocess.run(["storescu", "-v", "-nh", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port),
                               *map(str, files)], capture_output=True, text=True, timeout=300,
                              env={"TCP_NODELAY": "1"})
        log = push.stdout + push.stderr
        answers = re.findall(r"Received Store Response \(([^)]*)\)", log)
        assert len(answers) == len(files), log[-2000:]  # one association, every object answered
        stored = answers.count("Success")
        assert 0 < stored < len(files)
        assert set(answers) == {"Success", "Refused: OutOfResources"}, set(answers)
        with open(small_disk / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:  # the last free pages too: from here on the index cannot grow either
                filler.write(b"\0" * 4096)

        echo = subprocess.run(["echoscu", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port)],
                              capture_output=True, timeout=30)
        assert echo.returncode == 0

        # An object over the receive spool's memory limit (8 MB) goes to a file under data/tmp,
        # which cannot grow: refused, and the next object on the same association is answered too.
        big = write(make_image(patient_id="FULL1", rows=2048, columns=2560,
                               pixels=np.ones((2048, 2560), dtype=np.uint16)), tmp_path / "big")
        pair = subprocess.run(["storescu", "-v", "-nh", "-aec", srv.ae_title, "127.0.0.1",
                               str(srv.dicom_port), str(big), str(files[-1])],
                              capture_output=True, text=True, timeout=120)
        answers = re.findall(r"Received Store Response \(([^)]*)\)", pair.stdout + pair.stderr)
        assert answers == ["Refused: OutOfResources"] * 2, pair.stdout + pair.stderr
        assert not any((small_disk / "tmp").iterdir())  # the spool file went with the refusal

        failed = _stow(srv.dicomweb_url, _slices(tmp_path / "stow", 1)[0])
        [item] = failed["00081198"]["Value"]
        assert item["00081197"]["Value"] == [OUT_OF_RESOURCES]
        assert "no space left" in item["00000902"]["Value"][0]

        archive = srv.archive()
        try:
            studies = archive.find(Query("STUDY", filters={"PatientID": "FULL1"},
                                         return_keys=["StudyInstanceUID"]))
            infos = [i for r in studies for i in archive.instances(r["StudyInstanceUID"])]
            assert len(infos) == stored
            files_on_disk = {p.name for p in (small_disk / "blobs").rglob("*") if p.is_file()}
            assert files_on_disk == {i.blob_key for i in infos if not is_inline(i.blob_key)}
            by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
            for info in infos:  # what was answered Success is whole (the data set as sent)
                assert dataset_bytes(archive.read_bytes(info)) == \
                    dataset_bytes(by_uid[info.sop_uid].read_bytes())
        finally:
            archive.close()

        # Reading goes on while the disk is full: the series metadata is built (its cache cannot be
        # kept) and frames are served; the log says why in one line each, without tracebacks.
        series = f"{srv.dicomweb_url}/studies/{infos[0].study_uid}/series/{infos[0].series_uid}"
        meta = requests.get(f"{series}/metadata", headers={"Accept": "application/dicom+json"}, timeout=60)
        assert meta.status_code == 200, meta.text
        assert len(meta.json()) == stored
        frame = requests.get(f"{series}/instances/{infos[0].sop_uid}/frames/1", timeout=60, headers={
            "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
        assert frame.status_code == 200 and len(frame.content) > 256 * 256 * 2
        server_log = (tmp_path / "srv" / "server.log").read_text()
        assert "series metadata not cached: no space left" in server_log
        assert "Traceback" not in server_log
        (small_disk / "filler").unlink()

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        again = subprocess.run(["storescu", "-v", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port),
                                str(files[-1])], capture_output=True, text=True, timeout=60)
        assert "Received Store Response (Success)" in again.stdout + again.stderr
    finally:
        srv.stop()


def test_pynetdicoms_own_receive_path_refuses_a_spool_that_does_not_fit(tmp_path, small_disk):
    """``dimse_fast_store = false``: pynetdicom writes the data set into our spool itself.

    An object over the spool's memory limit goes to a file that cannot grow: that one C-STORE is
    answered Out of Resources, the association goes on, and no spool file stays behind.
    """
    require("storescu")
    srv = start_server(tmp_path / "srv", PACS_DIMSE_FAST_STORE="false")
    try:
        with open(small_disk / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            filler.write(b"\0" * (6 << 20))  # 2 MB left: under the 12 MB the object needs
        big = write(make_image(patient_id="FULL2", rows=2048, columns=3072,
                               pixels=np.ones((2048, 3072), dtype=np.uint16)), tmp_path / "big")
        small = _slices(tmp_path / "in", 1)[0]
        pair = subprocess.run(["storescu", "-v", "-nh", "-aec", srv.ae_title, "127.0.0.1",
                               str(srv.dicom_port), str(big), str(small)],
                              capture_output=True, text=True, timeout=120)
        log = pair.stdout + pair.stderr
        answers = re.findall(r"Received Store Response \(([^)]*)\)", log)
        assert answers == ["Refused: OutOfResources", "Success"], log[-3000:]
        assert "Association Aborted" not in log
        assert not any((small_disk / "tmp").iterdir())
        assert "Traceback" not in (tmp_path / "srv" / "server.log").read_text()
    finally:
        srv.stop()


def test_disk_full_is_recognised_through_the_wrappers():
    """ENOSPC, SQLite's SQLITE_FULL and PostgreSQL's disk_full, as SQLAlchemy hands them over."""
    import errno
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from storage.errors import disk_full

    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    full = sqlite3.connect(":memory:")
    full.execute("PRAGMA max_page_count=2")
    full.execute("CREATE TABLE t (x BLOB)")
    with pytest.raises(sqlite3.OperationalError) as raised:
        full.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    assert disk_full(OperationalError("INSERT", {}, raised.value))
    assert not disk_full(OperationalError("SELECT", {}, sqlite3.OperationalError("no such table")))

    class PgDiskFull(Exception):
        sqlstate = "53100"

    assert disk_full(OperationalError("INSERT", {}, PgDiskFull()))
    assert not disk_full(io.UnsupportedOperation("not a disk error"))
