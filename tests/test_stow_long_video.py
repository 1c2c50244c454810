"""Issue 21 part 2: a long video sent through STOW-RS (``application/dicom+json`` with the MP4 as
a bulk part) is spooled encrypted and encoded into its DICOM object in bounded memory, as
``pacs attach`` and ``/upload`` do it.

A real ``pacs serve`` (one HTTP worker, so the worker measured is the one that took the request);
a ~200 MB H.264 MP4 made by the ffmpeg CLI (4 s of noise, looped by stream copy, its index at the
end as a phone writes it) sent chunked by ``requests``; the server process tree's PSS
(``bench.cstore.tree_pss_bytes``) sampled while the video goes in and comes back out through
WADO-RS must grow by well under the video's size (half of it here: reading the part into memory
once would already take all of it). The video comes back byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.cstore import MemorySampler, tree_pss_bytes
from dicomweb.multipart import Part, encode
from tests import data_artifacts as samples
from tests.conftest import require, start_server

DICOM_JSON = "application/dicom+json"
pytestmark = pytest.mark.slow


def _long_mp4(path: Path, loops: int = 5) -> Path:
    """~34 MB of H.264 noise per loop (Constrained Baseline, 640x360, 25 fps, 4 s)."""
    ffmpeg = require("ffmpeg")
    import subprocess

    short = path.with_name("short.mp4")
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=640x360:r=25", "-vf", "noise=alls=40:allf=t", "-t", "4",
                    "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "60M",
                    "-pix_fmt", "yuv420p", str(short)], check=True, timeout=300)
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-stream_loop",
                    str(loops), "-i", str(short), "-c", "copy", str(path)], check=True,
                   timeout=300)
    short.unlink()
    return path


def _item(pid: str) -> dict:
    return {"00100020": {"vr": "LO", "Value": [pid]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Long^Lena"}]},
            "00081030": {"vr": "LO", "Value": ["Echo, long loop"]},
            "7FE00010": {"vr": "OB", "BulkDataURI": "http://client/bulk/video"}}


def _stow(url: str, pid: str, video: Path | bytes) -> requests.Response:
    """POST the JSON and the video as a chunked body (a generator: no Content-Length)."""
    body_file = video.open("rb") if isinstance(video, Path) else None
    try:
        parts = [Part.make(json.dumps([_item(pid)]).encode(), DICOM_JSON),
                 Part.make(body_file or video, "video/mp4", "http://client/bulk/video")]
        ctype, chunks = encode(parts, media_type=DICOM_JSON)

        def chunked() -> Iterator[bytes]:
            yield from chunks

        return requests.post(f"{url}/studies", data=chunked(), timeout=600,
                             headers={"Content-Type": ctype, "Accept": DICOM_JSON})
    finally:
        if body_file is not None:
            body_file.close()


def _stored(r: requests.Response) -> tuple[str, str, str]:
    assert r.status_code == 200, r.text[:500]
    [ref] = r.json()["00081199"]["Value"]
    url = ref["00081190"]["Value"][0]
    study = url.split("/studies/")[1].split("/")[0]
    series = url.split("/series/")[1].split("/")[0]
    return study, series, ref["00081155"]["Value"][0]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_long_video_through_stow_in_bounded_memory(tmp_path: Path) -> None:
    video = _long_mp4(tmp_path / "long.mp4")
    size = video.stat().st_size
    assert size > 150 * 10**6
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", PACS_HTTP_WORKERS="1")
    try:
        # warm up: the worker imports PyAV and the artifact code on its first video
        _stored(_stow(srv.dicomweb_url, f"L21-warm-{uuid.uuid4().hex[:6]}",
                      samples.make_mp4()))
        pid = f"L21-{uuid.uuid4().hex[:6]}"
        before = tree_pss_bytes(srv.proc.pid)
        with MemorySampler(srv.proc.pid, interval=0.2) as mem:
            study, series, sop = _stored(_stow(srv.dicomweb_url, pid, video))
            r = requests.get(f"{srv.dicomweb_url}/studies/{study}/series/{series}/instances/"
                             f"{sop}/bulkdata/7FE00010", headers={"Accept": "video/mp4"},
                             stream=True, timeout=600)
            assert r.status_code == 200 and r.headers["Content-Type"] == "video/mp4"
            h, got = hashlib.sha256(), 0
            for chunk in r.iter_content(1 << 20):
                h.update(chunk)
                got += len(chunk)
        growth = mem.peak - before
        print(f"\nSTOW-RS long video: {size / 1e6:.0f} MB in and back, server tree PSS "
              f"{before / 1e6:.0f} MB before, peak growth {growth / 1e6:.0f} MB")
        assert (got, h.hexdigest()) == (size, _sha256_file(video))
        assert growth < size / 2, (growth, size)

        # QIDO-RS finds it with the JSON's attributes laid over the object made from the MP4
        r = requests.get(f"{srv.dicomweb_url}/studies", timeout=30, headers={"Accept": DICOM_JSON},
                         params={"PatientID": pid, "includefield": "00081030"})
        [found] = r.json()
        assert found["0020000D"]["Value"] == [study]
        assert found["00081030"]["Value"] == ["Echo, long loop"]
        r = requests.get(f"{srv.dicomweb_url}/studies/{study}/instances", timeout=30,
                         headers={"Accept": DICOM_JSON})
        [inst] = r.json()
        assert inst["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.77.1.4.1"]  # Video Photographic
        assert inst["00280008"]["Value"] == [600]
    finally:
        srv.stop()
