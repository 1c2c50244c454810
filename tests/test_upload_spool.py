"""/upload never puts an uploaded file on disk in clear (issue 21 part 2, long videos): werkzeug
parses the form's file into an encrypted spool in ``<data_dir>/tmp`` (dicomweb/spooling.py), not
into its default ``SpooledTemporaryFile``, which rolls anything over 500 KB to the system
temporary directory unencrypted.

A real ``pacs serve`` (one HTTP worker); a ~6 MB MP4 (ffmpeg) posted as ``multipart/form-data`` in a chunked
body that stops halfway until the worker is seen holding the half received; its open files are
read from /proc: one is an (unlinked) spool file under the data directory, none is an unlinked
file of the system temporary directory, and the spool's bytes on disk hold no 64-byte run of the
video. The upload then completes and the video comes back byte-identical.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

from tests import data_artifacts as samples
from tests.conftest import start_server


def _worker_fds(serve_pid: int) -> list[tuple[int, int, str]]:
    """(pid, fd, link) of every open file of the gunicorn worker(s) under ``pacs serve``."""
    out = []
    for child in Path(f"/proc/{serve_pid}/task/{serve_pid}/children").read_text().split():
        if "gunicorn" not in Path(f"/proc/{child}/cmdline").read_text():
            continue
        for worker in Path(f"/proc/{child}/task/{child}/children").read_text().split():
            for fd in Path(f"/proc/{worker}/fd").iterdir():
                try:
                    out.append((int(worker), int(fd.name), os.readlink(fd)))
                except OSError:
                    continue
    return out


def _size(pid: int, fd: int) -> int:
    try:
        return os.stat(f"/proc/{pid}/fd/{fd}").st_size
    except OSError:
        return 0


def test_uploaded_video_spooled_encrypted_never_clear_in_tmp(tmp_path: Path) -> None:
    video = samples.ffmpeg_make(".mp4", "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25",
                                "-vf", "noise=alls=40:allf=t", "-t", "3", "-c:v", "libx264",
                                "-preset", "ultrafast", "-b:v", "16M", "-pix_fmt", "yuv420p")
    assert len(video) > 2 << 20
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", PACS_HTTP_WORKERS="1")
    data_tmp = str(srv.data_dir / "tmp")
    system_tmp = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/#\d+ \(deleted\)$")
    seen: dict[str, list[tuple[int, int, str]]] = {}
    halfway = threading.Event()
    try:
        boundary = uuid.uuid4().hex
        pid = f"U21-{uuid.uuid4().hex[:6]}"
        head = "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
            for k, v in {"patient_id": pid, "patient_name": "Spool^Sam"}.items()).encode()
        head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="clip.mp4"\r\nContent-Type: video/mp4\r\n\r\n').encode()
        half = len(video) // 2

        def body() -> Iterator[bytes]:
            yield head
            for i in range(0, half, 1 << 18):
                yield video[i:min(i + (1 << 18), half)]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until the worker holds over 1 MiB of what it got
                fds = _worker_fds(srv.proc.pid)
                if any(link.startswith(data_tmp) and _size(p, fd) > 1 << 20 for p, fd, link in fds):
                    break
                time.sleep(0.1)
            seen["fds"] = fds
            spools = [(p, fd) for p, fd, link in fds if link.startswith(data_tmp)]
            seen["disk"] = [Path(f"/proc/{p}/fd/{fd}").read_bytes() for p, fd in spools]
            halfway.set()
            for i in range(half, len(video), 1 << 18):
                yield video[i:i + (1 << 18)]
            yield f"\r\n--{boundary}--\r\n".encode()

        r = requests.post(f"{srv.http_url}/upload/files", data=body(), timeout=300,
                          headers={"X-PACS-Upload": "1",
                                   "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert halfway.is_set()
        assert r.status_code == 200, r.text
        spooled = [link for _, _, link in seen["fds"] if link.startswith(data_tmp)]
        assert spooled, seen["fds"]  # the half received is in an encrypted spool ...
        assert not [link for _, _, link in seen["fds"] if system_tmp.match(link)]  # ... not in /tmp
        for disk in seen["disk"]:
            assert len(disk) > 1 << 20
            assert not any(video[i:i + 64] in disk for i in range(0, half - 64, 4096))

        answer = r.json()
        url = (f"{srv.dicomweb_url}/studies/{answer['study_uid']}/series/{answer['series_uid']}"
               f"/instances/{answer['sop_instance_uid']}/bulkdata/7FE00010")
        back = requests.get(url, headers={"Accept": "video/mp4"}, timeout=60)
        assert back.status_code == 200 and back.content == video
    finally:
        srv.stop()
