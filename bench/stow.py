"""STOW-RS benchmark (PS3.18 10.5): 50 instances per request, ours vs Orthanc's DICOMweb plugin.

Usage::

    python -m bench.stow [--count 1000] [--per-request 50] [--size 64] [--servers pacs,orthanc]
        [--clients 1,2] [--repeat 3]

Each server runs fresh in a temporary directory (ours: ``pacs serve`` with its defaults: encrypted,
fsync on; Orthanc: Debian's ``Orthanc`` + ``libOrthancDicomWeb.so``, SQLite, defaults). The
client posts ``multipart/related; type="application/dicom"`` bodies built once in memory (small
CT images, ``--size`` pixels square) with ``requests`` over one keep-alive session per client
thread, and checks every reply lists all instances. Prints instances/s for each server and the
ratio ours / Orthanc (target >= 1.2). Repeats are interleaved (pacs, orthanc, pacs, ...), one fresh
server per measurement; the median of the repeats is shown with the load average seen.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.cstore import free_port, wait_idle  # noqa: E402
from dicomweb.multipart import Part, encode  # noqa: E402
from tests.dicomgen import make_image  # noqa: E402

PACS = str(Path(sys.executable).parent / "pacs")
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def bodies(count: int, per_request: int, size: int, tag: str = "run") -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each request: ``count`` instances in chunks of ``per_request``."""
    out = []
    for start in range(0, count, per_request):
        study = f"1.2.826.0.1.3680043.10.999.{os.getpid()}.{len(tag)}.{start}"
        parts = []
        for i in range(start, min(count, start + per_request)):
            ds = make_image(patient_id=f"BENCH-{tag}-{start}", study_uid=study, instance_number=i,
                            rows=size, columns=size, pixel_seed=i)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            parts.append(Part.make(buf.getvalue(), "application/dicom"))
        ct, chunks = encode(parts, media_type="application/dicom")
        out.append((ct, b"".join(chunks)))
    return out


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early ({proc.returncode})")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


def start_pacs(tmp: Path, tree: str = "") -> tuple[subprocess.Popen, str]:
    """``pacs serve`` on its defaults; ``tree``: a source tree to run instead (put on PYTHONPATH)."""
    http = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    if tree:
        env["PYTHONPATH"] = tree
    env.update(PACS_DATA_DIR=str(tmp / "data"), PACS_HTTP_PORT=str(http), PACS_DICOM_PORT=str(free_port()),
               PACS_HTTP_HOST="127.0.0.1", PACS_DICOM_HOST="127.0.0.1")
    proc = subprocess.Popen([PACS, "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "pacs.log", "wb"), cwd=tmp)  # noqa: SIM115
    wait_http(f"http://127.0.0.1:{http}/healthz", proc)
    return proc, f"http://127.0.0.1:{http}/dicom-web"


def start_orthanc(tmp: Path) -> tuple[subprocess.Popen, str]:
    if not shutil.which("Orthanc") or not Path(ORTHANC_PLUGIN).exists():
        raise RuntimeError("Orthanc or its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)")
    http = free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(tmp / "storage"), "IndexDirectory": str(tmp / "index"),
        "HttpPort": http, "DicomPort": free_port(), "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False, "Plugins": [ORTHANC_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{http}"},
    }
    (tmp / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["Orthanc", str(tmp / "orthanc.json")], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "orthanc.log", "wb"), cwd=tmp)  # noqa: SIM115
    wait_http(f"http://127.0.0.1:{http}/system", proc)
    return proc, f"http://127.0.0.1:{http}/dicom-web"


def run(base: str, reqs: list[tuple[str, bytes]], per_request: int, clients: int) -> float:
    """Seconds to post every request (``clients`` threads, each with its own session)."""
    errors: list[str] = []
    chunks = [reqs[i::clients] for i in range(clients)]

    def client(mine: list[tuple[str, bytes]]) -> None:
        with requests.Session() as s:
            for ct, body in mine:
                r = s.post(base + "/studies", data=body, timeout=300,
                           headers={"Content-Type": ct, "Accept": "application/dicom+json"})
                stored = r.json().get("00081199", {}).get("Value", []) if r.ok else []
                if r.status_code != 200 or len(stored) != body.count(b"DICM"):
                    errors.append(f"{r.status_code}: {len(stored)} stored")

    threads = [threading.Thread(target=client, args=(c,)) for c in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, e.g. {errors[0]}")
    return seconds


def measure(name: str, reqs: list[tuple[str, bytes]], per_request: int, size: int,
            clients: int) -> float:
    """Instances/s of one fresh server (own temporary directory) for these requests."""
    count = sum(body.count(b"DICM") for _, body in reqs)
    os.sync()  # nothing left dirty by the previous server to be written back during this run
    with tempfile.TemporaryDirectory(prefix=f"stow-{name.partition('@')[0]}-") as tmp:
        if name.startswith("pacs"):
            proc, base = start_pacs(Path(tmp), name.partition("@")[2])
        else:
            proc, base = start_orthanc(Path(tmp))
        try:
            wait_idle(proc.pid)  # steady state: both gunicorn workers booted, not just the first
            run(base, bodies(per_request, per_request, size, "warm-up"), per_request, 1)
            seconds = run(base, reqs, per_request, clients)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return count / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--per-request", type=int, default=50)
    ap.add_argument("--size", type=int, default=64, help="rows = columns of each image")
    ap.add_argument("--servers", default="pacs,orthanc",
                    help="pacs, orthanc, or pacs@TREE: pacs serve from another source tree "
                         "(e.g. pacs@/work/main for a before/after comparison in one run)")
    ap.add_argument("--clients", default="1,2", help="comma list of client thread counts")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats; the median is shown")
    args = ap.parse_args()
    reqs = bodies(args.count, args.per_request, args.size)
    servers = args.servers.split(",")
    client_counts = [int(c) for c in args.clients.split(",")]
    rates: dict[tuple[str, int], list[float]] = {}
    loads: list[float] = []
    for rep in range(args.repeat):  # servers interleaved within each repeat: drift hits all alike
        for clients in client_counts:
            for name in servers:
                loads.append(os.getloadavg()[0])
                rate = measure(name, reqs, args.per_request, args.size, clients)
                rates.setdefault((name, clients), []).append(rate)
                print(f"repeat {rep + 1} clients {clients} {name:8s} {rate:6.0f} instances/s "
                      f"(load {loads[-1]:.2f})", flush=True)
    print(f"\n{args.count} instances, {args.per_request}/request, {args.size}x{args.size}, median of "
          f"{args.repeat}; load average (1 min) {min(loads):.2f}-{max(loads):.2f}")
    for clients in client_counts:
        med = {n: statistics.median(rates[(n, clients)]) for n in servers}
        line = "  ".join(f"{n} {med[n]:.0f}/s" for n in servers)
        ratio = "".join(f"  {n}/orthanc {med[n] / med['orthanc']:.2f}" for n in servers
                        if n.startswith("pacs") and "orthanc" in med)
        print(f"clients {clients}: {line}{ratio}  (runs: "
              + "; ".join(f"{n} " + ",".join(f"{r:.0f}" for r in rates[(n, clients)]) for n in servers)
              + ")", flush=True)


if __name__ == "__main__":
    main()
