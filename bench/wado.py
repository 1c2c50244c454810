"""WADO-RS benchmark: one 512x512 frame and a 200-instance series, ours vs Orthanc (medians);
with ``--stow-count``, STOW-RS and QIDO on the same servers too.

Usage::

    python -m bench.wado [--count 200] [--frame-runs 50] [--series-runs 5] [--servers pacs,orthanc]
        [--stow-count 500 --stow-per-request 10 --qido-runs 30]

Servers: ``pacs``, ``orthanc``, ``pacs-s3``, ``pacs-dispersal``, ``pacs-dispersal-s3`` (blob stores,
bench/objectstores.py), and the cloud set-up (bench/cloud.py, issue 16 part 8): ``pacs-cloud``
(one node on PostgreSQL with fsync on + SeaweedFS S3) and ``pacs-cloud-2`` (two nodes on the same
database and bucket; the CT push is split over both, and STOW-RS, QIDO and frame requests go to the
nodes in turn, one kept-alive connection per node where the client keeps connections).

STOW-RS (PS3.18 10.5): ``--stow-count`` small CT images (64x64) in requests of
``--stow-per-request`` instances, one study and patient per request, posted by ``--stow-clients``
threads (2: on two nodes, one per node), each one request at a time over a kept-alive session
(bench/stow.py builds the bodies); instances/s. QIDO (PS3.18 10.6), after
the STOW-RS and the CT push: OHIF's study list and a search by PatientID, median of ``--qido-runs``
over kept-alive connections.

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
    procs: list[subprocess.Popen]  # one per node
    dicom_ports: list[int]
    http_ports: list[int]
    root: str  # DICOMweb root path

    @property
    def proc(self) -> subprocess.Popen:
        return self.procs[0]

    @property
    def dicom_port(self) -> int:
        return self.dicom_ports[0]

    @property
    def http_port(self) -> int:
        return self.http_ports[0]


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
    return Running("pacs", [_popen([pacs, "serve"], env, tmp / "server.log")], [dicom], [http],
                   "/dicom-web")


def start_cloud(tmp: Path, name: str, nodes: int) -> Running:
    """``nodes`` × ``pacs serve`` on one PostgreSQL database and one S3 prefix (bench/cloud.py)."""
    from bench.cloud import start_nodes

    dicom = [free_port() for _ in range(nodes)]
    http = [free_port() for _ in range(nodes)]
    pacs = str(Path(sys.executable).parent / "pacs")

    def wait(proc: subprocess.Popen, port: int) -> None:
        node = dicom.index(port)
        wait_http(Running(name, [proc], [port], [http[node]], "/dicom-web"), "/healthz")

    procs = start_nodes(tmp, dicom, [pacs, "serve"], wait, http_ports=http, ae_title=AET)
    return Running(name, procs, dicom, http, "/dicom-web")


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
    return Running("orthanc", [proc], [dicom], [http], "/dicom-web")


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
        conn: http.client.HTTPConnection | None = None, node: int = 0) -> tuple[int, int]:
    """One GET, on ``conn`` (kept alive) or on a new connection to ``node``; (status, body bytes)."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", srv.http_ports[node], timeout=120)
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

    With several nodes, run ``i`` goes to node ``i % nodes`` (each node gets one warm-up GET).
    """
    paths = path if isinstance(path, list) else [path]
    nodes = len(srv.http_ports)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=120) if keep_alive else None
             for port in srv.http_ports]
    try:
        size = 0
        for node in range(nodes):
            status, size = get(srv, paths[-1], accept, conns[node], node)
            if status != 200:
                raise RuntimeError(f"{srv.name}: GET {paths[-1]} -> {status}")
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            status, _ = get(srv, paths[i % len(paths)], accept, conns[i % nodes], i % nodes)
            times.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{srv.name}: GET {paths[i % len(paths)]} -> {status}")
    finally:
        for conn in conns:
            if conn is not None:
                conn.close()
    return statistics.median(times), size


def stow(srv: Running, reqs: list[tuple[str, bytes]], clients: int) -> float:
    """Instances/s of STOW-RS: ``clients`` threads, thread ``t`` posting ``reqs[t::clients]`` one
    after another to node ``t % n`` over one kept-alive session (with 2 clients and 2 nodes, one
    client per node); every reply must list every instance as stored."""
    import threading

    import requests

    count = sum(body.count(b"DICM") for _, body in reqs)
    errors: list[str] = []

    def client(t: int) -> None:
        node = t % len(srv.http_ports)
        url = f"http://127.0.0.1:{srv.http_ports[node]}{srv.root}/studies"
        with requests.Session() as session:
            for ct, body in reqs[t::clients]:
                r = session.post(url, data=body, timeout=300,
                                 headers={"Content-Type": ct, "Accept": "application/dicom+json"})
                stored = r.json().get("00081199", {}).get("Value", []) if r.ok else []
                if r.status_code != 200 or len(stored) != body.count(b"DICM"):
                    errors.append(f"{r.status_code}, {len(stored)} stored")
                    return

    threads = [threading.Thread(target=client, args=(t,)) for t in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{srv.name}: STOW-RS failed: {errors[0]}")
    return count / seconds


QIDO_LIST = "/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
QIDO_ACCEPT = "application/dicom+json"


def start(name: str, tmp: Path) -> Running:
    """Start the server called ``name`` (see the module docstring) in ``tmp``; wait until it answers."""
    if name == "orthanc":
        srv = start_orthanc(tmp)
        wait_http(srv, "/system")
    elif name in ("pacs-cloud", "pacs-cloud-2"):
        srv = start_cloud(tmp, name, 2 if name.endswith("-2") else 1)
    elif name.startswith("pacs"):
        srv = start_pacs(tmp, name.removeprefix("pacs").lstrip("-"))
        srv.name = name
        wait_http(srv, "/healthz")
    else:
        raise SystemExit(f"unknown server {name!r}")
    return srv


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--frame-runs", type=int, default=50)
    ap.add_argument("--series-runs", type=int, default=5)
    ap.add_argument("--servers", default="pacs,orthanc",
                    help="pacs, orthanc, pacs-s3, pacs-dispersal, pacs-dispersal-s3 (blob stores), "
                         "pacs-cloud, pacs-cloud-2 (PostgreSQL + S3, one or two nodes)")
    ap.add_argument("--stow-count", type=int, default=0,
                    help="instances to STOW-RS before the reads (0: no STOW-RS, no QIDO)")
    ap.add_argument("--stow-per-request", type=int, default=10)
    ap.add_argument("--stow-clients", type=int, default=2, help="STOW-RS client threads")
    ap.add_argument("--qido-runs", type=int, default=30)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="bench-wado-"))
    try:
        study, series, sops, paths = make_series(base / "ct", args.count)
        reqs: list[tuple[str, bytes]] = []
        if args.stow_count:
            from bench.stow import bodies

            reqs = bodies(args.stow_count, args.stow_per_request, 64, "stow")
        rows = []
        cloud_rows = []
        for name in args.servers.split(","):
            tmp = base / name
            tmp.mkdir()
            os.sync()  # nothing left dirty by the previous server to be written back in this run
            srv = start(name, tmp)
            try:
                stow_rate = stow(srv, reqs, args.stow_clients) if reqs else 0.0
                if not run_storescu(paths, srv.dicom_ports, 4, 300):
                    raise RuntimeError(f"storescu into {name} failed")
                frames = [f"{srv.root}/studies/{study}/series/{series}/instances/{sop}/frames/1"
                          for sop in sops]
                frame_s, frame_size = timed(srv, frames, FRAME_ACCEPT, args.frame_runs)
                frame_ka, _ = timed(srv, frames, FRAME_ACCEPT, args.frame_runs, keep_alive=True)
                series_s, series_size = timed(srv, f"{srv.root}/studies/{study}/series/{series}",
                                              SERIES_ACCEPT, args.series_runs)
                rows.append((name, frame_s, frame_ka, series_s, series_size))
                if reqs:
                    qido_list, _ = timed(srv, srv.root + QIDO_LIST, QIDO_ACCEPT, args.qido_runs,
                                         keep_alive=True)
                    qido_pid, _ = timed(srv, srv.root + "/studies?PatientID=BENCH-stow-0",
                                        QIDO_ACCEPT, args.qido_runs, keep_alive=True)
                    cloud_rows.append((name, stow_rate, qido_list, qido_pid, frame_ka))
            finally:
                for proc in srv.procs:
                    os.killpg(proc.pid, 15)
                for proc in srv.procs:
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, 9)
                        proc.wait()
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
        if cloud_rows:
            print_cloud(cloud_rows, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def print_cloud(rows: list[tuple[str, float, float, float, float]], args: argparse.Namespace) -> None:
    """STOW-RS rate, QIDO and frame latency, each against ``pacs`` (the embedded defaults)."""
    ref: list[float] = next(([0.0, *r[1:]] for r in rows if r[0] == "pacs"), [])
    print(f"\nSTOW-RS: {args.stow_count} instances (64x64), {args.stow_per_request} per request, "
          f"{args.stow_clients} client thread(s) (thread t to node t % nodes); QIDO over {args.stow_count // args.stow_per_request + 1} studies, "
          f"median of {args.qido_runs}, kept-alive; frame: kept-alive column above.\n")
    print("| server | STOW-RS inst/s | x pacs | QIDO study list ms | x pacs | QIDO PatientID ms "
          "| x pacs | frame ms | x pacs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rate, qlist, qpid, frame in rows:
        def x(v: float, i: int) -> str:
            return f"{v / ref[i]:.2f}" if ref and ref[i] else "-"
        print(f"| {name} | {rate:.0f} | {x(rate, 1)} | {qlist * 1000:.1f} | {x(qlist, 2)} "
              f"| {qpid * 1000:.1f} | {x(qpid, 3)} | {frame * 1000:.2f} | {x(frame, 4)} |")
    print("(issue 16 part 8 targets for pacs-cloud: STOW-RS and C-STORE >= 0.8 x pacs, "
          "QIDO <= 1.5 x pacs, frame <= 2 x pacs)")


if __name__ == "__main__":
    main()
