"""C-FIND pending responses, transport alone: ms per response (wall and server CPU).

Usage::

    python -m bench.cfind_pending [--matches 2000] [--runs 3] [--stock]

A pynetdicom SCP in a child process (``pacs.dimse`` patches on, ``--stock``: off) answers one
C-FIND with ``--matches`` pending responses built as ``pacs.find`` builds them (``response``: the
findrsp patch's pre-encoded identifiers when the patches are on, a pydicom Dataset when off); a
pynetdicom SCU (TCP_NODELAY, as bench/scale.py's) receives them. Printed per run: wall ms per
pending response (bounded by the pynetdicom client, which decodes every one) and the SCP process's
CPU ms per pending response (``/proc``), the figure that does not depend on the client.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("PACS_BENCH_TREE") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))  # PACS_BENCH_TREE: measure another checkout's pacs/ (e.g. main's)


def _matches(n: int) -> list[dict]:
    from pydicom.uid import generate_uid

    return [{"StudyInstanceUID": generate_uid(), "PatientName": f"SMITH^JOHN{i}^A",
             "PatientID": f"SC{i:07d}", "StudyDate": "20100101", "StudyDescription": "MR Brain"}
            for i in range(n)]


def serve(port: int, n: int, stock: bool) -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    import pacs.dimse

    pacs.dimse.install(enabled=not stock)
    import pacs.find

    response = getattr(pacs.find, "response", None) or pacs.find.response_identifier  # older trees

    matches = _matches(n)

    def on_find(event):
        for m in matches:
            yield 0xFF00, response(m, event.identifier, "STUDY", "PACS")

    ae = AE("PACS")
    ae.add_supported_context(FIND)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_FIND, on_find)])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matches", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stock", action="store_true", help="the SCP on stock pynetdicom")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.matches, args.stock)
        return
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    from tests.conftest import free_port

    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port),
           "--matches", str(args.matches)] + (["--stock"] if args.stock else [])
    srv = subprocess.Popen(cmd, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for kw in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyDescription"):
            setattr(query, kw, "")
        for _ in range(args.runs):
            ae = AE("BENCH")
            ae.add_requested_context(FIND)
            assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
            if not assoc.is_established:
                raise RuntimeError("association refused")
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c0, t0, n = _cpu(srv.pid), time.perf_counter(), 0
            for status, _ in assoc.send_c_find(query, FIND):
                n += bool(status and status.Status in (0xFF00, 0xFF01))
            wall, cpu = time.perf_counter() - t0, _cpu(srv.pid) - c0
            assoc.release()
            print(f"{n} pending responses: {wall / n * 1000:.3f} ms each (wall), "
                  f"server CPU {cpu / n * 1000:.3f} ms each")
    finally:
        srv.terminate()
        srv.wait(10)


if __name__ == "__main__":
    main()
