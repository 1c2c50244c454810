"""The server starts, answers C-ECHO, and stores what dcmtk storescu sends."""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from storage.query import Query
from tests.conftest import PACS, free_port, require, start_server
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


def _dimse_workers(pid: int) -> list[int]:
    """The DIMSE worker processes of a ``pacs serve`` (its children running ``pacs serve``)."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if any(part.endswith(b"pacs") for part in cmd) and b"serve" in cmd:
            out.append(int(child))
    return out


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on a TCP port (IPv4), from /proc/net/tcp."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # 0A: LISTEN
            out.add(fields[9])
    return out


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def test_workers_share_one_listening_socket(tmp_path):
    """Two DIMSE workers accept on one socket: a killed worker loses no association, and is replaced."""
    require("echoscu")
    srv = start_server(tmp_path, PACS_DIMSE_WORKERS="2")
    try:
        workers = _dimse_workers(srv.proc.pid)
        assert len(workers) == 2
        [inode] = _listening_inodes(srv.dicom_port)  # one socket (SO_REUSEPORT would make two)
        assert all(inode in _socket_inodes(w) for w in workers)
        os.kill(workers[0], signal.SIGKILL)
        for _ in range(10):  # the other worker takes every one, at once
            echo = subprocess.run(["echoscu", "-to", "5", "-aec", srv.ae_title, "127.0.0.1",
                                   str(srv.dicom_port)], capture_output=True, text=True, timeout=30)
            assert echo.returncode == 0, echo.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(set(_dimse_workers(srv.proc.pid)) - {workers[0]}) < 2:
            time.sleep(0.2)
        assert len(set(_dimse_workers(srv.proc.pid)) - {workers[0]}) == 2  # restarted
        folders = []
        for n in range(4):  # four associations at once, as a modality with parallel senders
            make_study(tmp_path / f"in{n}", n_series=1, per_series=3, patient_id="SHARED1",
                       study_uid=f"1.2.826.0.1.3680043.8.498.7777.{n}")
            folders.append(tmp_path / f"in{n}")
        procs = [subprocess.Popen(["storescu", "-aec", srv.ae_title, "+sd", "127.0.0.1",
                                   str(srv.dicom_port), str(f)], env={"TCP_NODELAY": "1"},
                                  stderr=subprocess.PIPE, text=True) for f in folders]
        for p in procs:
            assert p.wait(timeout=60) == 0, p.stderr.read() if p.stderr else ""
        archive = srv.archive()
        try:
            rows = list(archive.find(Query("STUDY", filters={"PatientID": "SHARED1"},
                                           return_keys=["NumberOfStudyRelatedInstances"])))
            assert sorted(r["NumberOfStudyRelatedInstances"] for r in rows) == [3, 3, 3, 3]
        finally:
            archive.close()
    finally:
        srv.stop()


def _gunicorn_master(pid: int) -> int | None:
    """The gunicorn arbiter started by a ``pacs serve`` (its child running ``-m gunicorn``)."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"gunicorn" in cmd:
            return int(child)
    return None


@pytest.mark.parametrize("taken", ["PACS_DICOM_PORT", "PACS_HTTP_PORT"])
def test_a_taken_port_is_refused_with_a_clear_message_and_nothing_changes(tmp_path, taken):
    """Another program on a configured port: one line naming the port and the setting, exit 1,
    no data directory, no key, no half-started server answering on the other port."""
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        ports = {"PACS_DICOM_PORT": str(free_port()), "PACS_HTTP_PORT": str(free_port())}
        ports[taken] = str(holder.getsockname()[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env.update(PACS_DATA_DIR=str(tmp_path / "data"), PACS_DICOM_HOST="127.0.0.1",
                   PACS_HTTP_HOST="127.0.0.1", **ports)
        run = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1
        assert f"127.0.0.1:{ports[taken]}" in run.stderr and taken in run.stderr
        assert "Nothing was changed" in run.stderr and "Traceback" not in run.stderr
        assert not (tmp_path / "data").exists()
        other = "PACS_HTTP_PORT" if taken == "PACS_DICOM_PORT" else "PACS_DICOM_PORT"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(ports[other])), timeout=1).close()
    finally:
        holder.close()


def test_a_dead_dicomweb_server_is_started_again(tmp_path):
    """gunicorn killed: ``pacs serve`` starts it again on the same port; DIMSE never stops."""
    srv = start_server(tmp_path)
    try:
        first = _gunicorn_master(srv.proc.pid)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        again = None
        while time.monotonic() < deadline:
            again = _gunicorn_master(srv.proc.pid)
            if again not in (None, first):
                try:
                    body = urllib.request.urlopen(f"{srv.http_url}/healthz", timeout=2).read()
                    break
                except OSError:
                    pass
            time.sleep(0.2)
        assert again not in (None, first)
        assert body == b"ok\n"
        assert srv.proc.poll() is None
        echo = subprocess.run(["echoscu", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port)],
                              capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
    finally:
        srv.stop()
