"""WADO-RS benchmark: one 512x512 frame and a 200-instance series, ours vs Orthanc (medians).

Usage::

    python -m bench.wado [--count 200] [--frame-runs 50] [--series-runs 5] [--servers pacs,orthanc]

Each server gets a temporary directory and the same CT series (512x512, 16 bit, Explicit VR LE)
pushed with dcmtk ``storescu`` (TCP_NODELAY=1). Frame 1 of a different instance each time (as a
viewer scrolling the series) is fetched with OHIF's header
``multipart/related; type="application/octet-stream"; transfer-syntax=*``; the series with
``multipart/related; type="application/dicom"; transfer-syntax=*``, read to the end. Frames are
timed twice: each request on a new connection, and all of them on one kept-alive connection (what a
browser running OHIF does). Orthanc is
Debian's ``orthanc`` with the ``orthanc-dicomweb`` plugin.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cstore import AET, _popen, free_port, run_storescu

FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
SERIES_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@dataclass
class Running:
    name: str
    proc: subprocess.Popen
    dicom_port: int
    http_port: int
    root: str  # DICOMweb root path


def make_series(folder: Path, count: int) -> tuple[str, str, list[str], list[Path]]:
    import numpy as np
    from pydicom.uid import generate_uid

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.dicomgen import make_image, write

    study, series = generate_uid(), generate_uid()
    sops, paths = [], []
    rng = np.random.default_rng(7)
    for i in range(count):
        pixels = rng.integers(0, 4095, size=(512, 512), dtype=np.uint16)
        ds = make_image(study_uid=study, series_uid=series, rows=512, columns=512,
                        instance_number=i + 1, pixels=pixels, patient_id="BENCH")
        paths.append(write(ds, folder))
        sops.append(ds.SOPInstanceUID)
    return study, series, sops, paths


def start_pacs(tmp: Path, blob_store: str = "") -> Running:
    """``pacs serve``; ``blob_store``: files (default), s3, dispersal, dispersal-s3 (bench/objectstores.py)."""
    from bench.objectstores import env_for

    dicom, http = free_port(), free_port()
    env = dict(os.environ, PACS_DATA_DIR=str(tmp / "data"), PACS_DICOM_PORT=str(dicom),
               PACS_HTTP_PORT=str(http), PACS_DICOM_HOST="127.0.0.1", PACS_HTTP_HOST="127.0.0.1",
               PACS_AE_TITLE=AET, TCP_NODELAY="1", **env_for(blob_store, tmp))
    pacs = str(Path(sys.executable).parent / "pacs")
    return Running("pacs", _popen([pacs, "serve"], env, tmp / "server.log"), dicom, http,
                   "/dicom-web")


def start_orthanc(tmp: Path) -> Running:
    dicom, http = free_port(), free_port()
    storage = tmp / "orthanc-db"
    config = {
        "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "DicomAet": AET, "DicomPort": dicom, "HttpPort": http, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True, "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{http}"},
    }
    cfg = tmp / "orthanc.json"
    cfg.write_text(json.dumps(config))
    proc = _popen(["Orthanc", str(cfg)], dict(os.environ, TCP_NODELAY="1"), tmp / "server.log")
    return Running("orthanc", proc, dicom, http, "/dicom-web")


def wait_http(srv: Running, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"{srv.name} exited with {srv.proc.returncode}")
        try:
            status, _ = get(srv, path, None)
            if status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{srv.name} did not answer on {path}")


def get(srv: Running, path: str, accept: str | None,
        conn: http.client.HTTPConnection | None = None) -> tuple[int, int]:
    """One GET, on ``conn`` (kept alive) or on a new connection; (status, body bytes read)."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=120)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        n = 0
        while chunk := resp.read(1 << 20):
            n += len(chunk)
        if resp.will_close:
            conn.close()  # http.client reconnects on the next request
        return resp.status, n
    finally:
        if own:
            conn.close()


def timed(srv: Running, path: str | list[str], accept: str, runs: int,
          keep_alive: bool = False) -> tuple[float, int]:
    """Median seconds of ``runs`` GETs (after one warm-up), and the body size.

    With ``keep_alive`` every GET goes over one persistent connection, as a browser's does;
    otherwise each opens its own.

    With a list of paths, run ``i`` gets ``paths[i % len(paths)]`` (the warm-up gets the last one):
    a viewer scrolling a series asks for each image once, and a server that caches the last object
    it parsed should not be timed on one object asked for again and again.
    """
    paths = path if isinstance(path, list) else [path]
    conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=120) if keep_alive else None
    try:
        status, size = get(srv, paths[-1], accept, conn)
        if status != 200:
            raise RuntimeError(f"{srv.name}: GET {paths[-1]} -> {status}")
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            status, _ = get(srv, paths[i % len(paths)], accept, conn)
            times.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{srv.name}: GET {paths[i % len(paths)]} -> {status}")
    finally:
        if conn is not None:
            conn.close()
    return statistics.median(times), size


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--frame-runs", type=int, default=50)
    ap.add_argument("--series-runs", type=int, default=5)
    ap.add_argument("--servers", default="pacs,orthanc",
                    help="pacs, orthanc, and pacs-s3, pacs-dispersal, pacs-dispersal-s3 (blob stores)")
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-wado-"))
    try:
        study, series, sops, paths = make_series(base / "ct", args.count)
        rows = []
        for name in args.servers.split(","):
            tmp = base / name
            tmp.mkdir()
            ours = name.startswith("pacs")
            srv = start_pacs(tmp, name.removeprefix("pacs").lstrip("-")) if ours else start_orthanc(tmp)
            try:
                wait_http(srv, "/healthz" if ours else "/system")
                if not run_storescu(paths, srv.dicom_port, 4, 300):
                    raise RuntimeError(f"storescu into {name} failed")
                frames = [f"{srv.root}/studies/{study}/series/{series}/instances/{sop}/frames/1"
                          for sop in sops]
                frame_s, frame_size = timed(srv, frames, FRAME_ACCEPT, args.frame_runs)
                frame_ka, _ = timed(srv, frames, FRAME_ACCEPT, args.frame_runs, keep_alive=True)
                series_s, series_size = timed(srv, f"{srv.root}/studies/{study}/series/{series}",
                                              SERIES_ACCEPT, args.series_runs)
                rows.append((name, frame_s, frame_ka, series_s, series_size))
            finally:
                os.killpg(srv.proc.pid, 15)
                srv.proc.wait(timeout=30)
        ref = {r[0]: r for r in rows}.get("orthanc")
        print(f"| server | frame 512x512, new connection, median ms | ours / Orthanc "
              f"| same, kept-alive connection | ours / Orthanc | series {args.count} median s "
              "| MB/s | ours / Orthanc |")
        print("|---|---|---|---|---|---|---|---|")
        for name, fs, fk, ss, size in rows:
            fr = f"{fs / ref[1]:.2f}" if ref else "-"
            kr = f"{fk / ref[2]:.2f}" if ref else "-"
            sr = f"{ss / ref[3]:.2f}" if ref else "-"
            print(f"| {name} | {fs * 1000:.2f} | {fr} | {fk * 1000:.2f} | {kr} | {ss:.2f} "
                  f"| {size / ss / 1e6:.0f} | {sr} |")
        print("(ratios are latency ratios: < 1 means faster than Orthanc; the issue's target is <= 0.5)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
