"""DICOMweb read benchmark: our server vs Orthanc (Debian orthanc + orthanc-dicomweb) on the same data.

Usage::

    python -m bench.dicomweb [--studies 10000] [--series-size 200] [--runs 30] [--servers pacs,orthanc]
                             [--keep DIR]

``--keep DIR`` keeps both servers' data in DIR; run again with the same DIR to measure without
reloading (loading 10,000 studies takes minutes on a busy 2-core machine).

Data: ``--studies`` tiny studies (one 8x8 instance each, 500 patients) plus one study with a series of
``--series-size`` instances. Loaded by each server's fastest path: ours with :meth:`Archive.store` on
the data directory before the server starts (fsync off while loading), Orthanc with REST
``POST /instances`` over keep-alive connections (4 threads).

Measured (median of ``--runs`` sequential requests after one warm-up, keep-alive client):

* OHIF study list: ``/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030,00080060``
  and what OHIF v3 really sends (``fuzzymatching=true``, four includefields, comma %-encoded)
* QIDO by PatientID: ``/studies?PatientID=...``
* series metadata of the big series: ``/studies/{s}/series/{r}/metadata``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from pydicom.dataset import Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, start_server  # noqa: E402
from tests.dicomgen import make_image  # noqa: E402

OHIF = "/studies?limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
OHIF_V3 = ("/studies?limit=101&offset=0&fuzzymatching=true"
           "&includefield=00081030%2C00080060%2C00080090%2C00100030")


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def generate(n_studies: int, series_size: int) -> tuple[list[bytes], str, str]:
    """Part 10 bytes of every instance, and the big series' study and series UIDs."""
    out = []
    for i in range(n_studies):
        ds = make_image(patient_id=f"BW{i % 500:05d}", patient_name=f"Bench^Patient{i % 500}",
                        rows=8, columns=8, study_date=f"20{10 + i % 15:02d}{1 + i % 12:02d}{1 + i % 28:02d}",
                        accession=f"A{i:06d}", study_description=f"Study {i}", pixel_seed=i)
        out.append(_bytes(ds))
    first = make_image(patient_id="BWBIG", rows=64, columns=64)
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    for n in range(series_size):
        ds = make_image(patient_id="BWBIG", rows=64, columns=64, study_uid=study_uid,
                        series_uid=series_uid, instance_number=n + 1, pixel_seed=n)
        out.append(_bytes(ds))
    return out, study_uid, series_uid


def load_ours(base: Path, blobs: list[bytes]) -> None:
    from storage.archive import Archive
    from storage.config import load_settings

    archive = Archive(load_settings(env={}, data_dir=base / "data", fsync=False), create_key=True)
    try:
        for b in blobs:
            archive.store(b)
    finally:
        archive.close()


def start_orthanc(base: Path) -> tuple[subprocess.Popen, str]:
    http = free_port()
    storage = base / "orthanc-db"
    config = {
        "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "DicomPort": free_port(), "HttpPort": http, "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False, "Plugins": ["/usr/share/orthanc/plugins"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{http}",
                     "Ssl": False, "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    cfg = base / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(base / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TCP_NODELAY="1"))
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/system", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("Orthanc did not start")


def load_orthanc(url: str, blobs: list[bytes]) -> None:
    def send(chunk: list[bytes]) -> None:
        with requests.Session() as s:
            for b in chunk:
                s.post(url + "/instances", data=b, timeout=60).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, [blobs[i::4] for i in range(4)]))


def median_ms(session: requests.Session, url: str, runs: int, headers: dict | None = None) -> float:
    r = session.get(url, headers=headers, timeout=120)
    r.raise_for_status()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        r = session.get(url, headers=headers, timeout=120)
        r.content  # noqa: B018 - read the whole body
        times.append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
    return statistics.median(times)


def measure(root: str, study_uid: str, series_uid: str, runs: int) -> dict[str, float]:
    accept = {"Accept": "application/dicom+json"}
    with requests.Session() as s:
        n_series = len(s.get(f"{root}/studies/{study_uid}/series/{series_uid}/metadata",
                             headers=accept, timeout=300).json())
        n_list = len(s.get(root + OHIF, headers=accept, timeout=120).json())
        return {
            f"QIDO OHIF study list ({n_list} of many)": median_ms(s, root + OHIF, runs, accept),
            "QIDO OHIF v3 study list (fuzzy, 4 includefields)": median_ms(s, root + OHIF_V3, runs,
                                                                          accept),
            "QIDO /studies?PatientID=": median_ms(s, root + "/studies?PatientID=BW00042", runs, accept),
            f"series metadata ({n_series} instances)": median_ms(
                s, f"{root}/studies/{study_uid}/series/{series_uid}/metadata", runs, accept),
        }


def wait_for_warm(srv, limit: float = 900) -> None:
    """Wait for the server's metadata warmer to build every series cache (storage.metadata)."""
    from sqlalchemy import func, select

    from storage.index.models import Series

    archive = srv.archive()
    t = time.perf_counter()
    try:
        while time.perf_counter() - t < limit:
            with archive.sessions() as s:
                left = s.scalar(select(func.count()).select_from(Series)
                                .where(Series.metadata_cache.is_(None)))
            if not left:
                break
            time.sleep(1)
    finally:
        archive.close()
    print(f"pacs: series metadata caches warm after {time.perf_counter() - t:.1f} s "
          f"({left} left)", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=10_000)
    ap.add_argument("--series-size", type=int, default=200)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--servers", default="pacs,orthanc")
    ap.add_argument("--keep", type=Path, help="keep (or reuse) the loaded data in this directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        base = args.keep.absolute() if args.keep else Path(tmp)
        results = run(args, base)
    report(args, results)


def run(args: argparse.Namespace, base: Path) -> dict[str, dict[str, float]]:
    state = base / "bench.json"
    loaded = state.is_file()
    blobs: list[bytes] = []
    if loaded:
        study_uid, series_uid = json.loads(state.read_text())
    else:
        t = time.perf_counter()
        blobs, study_uid, series_uid = generate(args.studies, args.series_size)
        print(f"generated {len(blobs)} instances in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    results: dict[str, dict[str, float]] = {}
    if "pacs" in args.servers:
        t = time.perf_counter()
        if not loaded:
            load_ours(base / "pacs", blobs)
            print(f"pacs: loaded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        srv = start_server(base / "pacs")
        try:
            wait_for_warm(srv)
            results["pacs"] = measure(srv.dicomweb_url, study_uid, series_uid, args.runs)
        finally:
            srv.stop()
    if "orthanc" in args.servers:
        (base / "orthanc").mkdir(parents=True, exist_ok=True)
        proc, url = start_orthanc(base / "orthanc")
        try:
            t = time.perf_counter()
            if not loaded:
                load_orthanc(url, blobs)
                print(f"orthanc: loaded in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            results["orthanc"] = measure(url + "/dicom-web", study_uid, series_uid, args.runs)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    base.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps([study_uid, series_uid]))
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    names = list(next(iter(results.values())))
    print(f"\n{args.studies} studies + one {args.series_size}-instance series; median of {args.runs}\n")
    print("| request | " + " | ".join(f"{k} ms" for k in results) +
          (" | pacs / Orthanc |" if len(results) == 2 else " |"))
    print("|---" * (len(results) + 1 + (len(results) == 2)) + "|")
    for i, name in enumerate(names):
        vals = [list(r.values())[i] for r in results.values()]
        row = f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals)
        if len(vals) == 2:
            row += f" | {vals[0] / vals[1]:.2f}"
        print(row + " |")


if __name__ == "__main__":
    main()
