"""Nothing in the clear on the wire: a packet capture (tcpdump on loopback, Debian's ``tcpdump``) of a
TLS C-STORE, a TLS C-FIND and an HTTPS QIDO holds none of the test's patient strings.

As a control, the same capture holds a C-FIND on the plain port for another patient, whose name
must be found there: so the capture did see the traffic it is searched for.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import pytest

from tests.conftest import free_port, require, start_server
from tests.dicomgen import make_study
from tests.tlscerts import make_pki


@pytest.fixture
def capture(tmp_path):
    """Start tcpdump on lo for the given ports; returns (start, stop -> bytes)."""
    procs: list[subprocess.Popen] = []
    pcap = tmp_path / "wire.pcap"

    def start(ports: list[int]) -> None:
        flt = " or ".join(f"tcp port {p}" for p in ports)
        # --immediate-mode: each packet is handed over (and, with -U, written) as it comes, not
        # when a ring buffer block fills or times out (a block still held at SIGINT is lost)
        proc = subprocess.Popen([require("tcpdump"), "-i", "lo", "--immediate-mode", "-U", "-s", "0",
                                 "-w", str(pcap), flt],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stderr.readline()  # "tcpdump: listening on lo, ..." once it captures
        assert "listening on" in line, line

    def stop(last: bytes) -> bytes:
        """Stop once ``last`` (what the final exchange sent in clear) is in the file."""
        proc = procs.pop()
        deadline = time.monotonic() + 20
        while last not in pcap.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
        return pcap.read_bytes()

    yield start, stop
    for p in procs:
        p.kill()


def test_tls_store_find_and_https_qido_leak_no_patient_string(tmp_path, capture):
    start, stop = capture
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", PACS_DICOM_TLS="1", PACS_DICOM_TLS_PORT=str(tls_port),
                       PACS_HTTP_TLS="1", PACS_TLS_CERT_FILE=str(pki.server_cert),
                       PACS_TLS_KEY_FILE=str(pki.server_key), PACS_TLS_CA_FILE=str(pki.ca))
    try:
        tag = uuid.uuid4().hex[:8].upper()
        secret = {"PatientName": f"Wiretap^Wanda{tag}", "PatientID": f"WIRE{tag}",
                  "AccessionNumber": f"ACC{tag}", "StudyDescription": f"Confidential{tag}"}
        paths = make_study(tmp_path / "in", n_series=1, per_series=2, patient_id=secret["PatientID"],
                           patient_name=secret["PatientName"], accession=secret["AccessionNumber"],
                           study_description=secret["StudyDescription"])
        control = f"Visible^Victor{tag}"
        make_study(tmp_path / "ctl", n_series=1, per_series=1, patient_id=f"CTL{tag}", patient_name=control)
        srv.pacs("import", "-q", str(tmp_path / "ctl"))

        start([tls_port, srv.http_port, srv.dicom_port])
        tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)]
        store = subprocess.run([require("storescu"), "-aec", srv.ae_title, *tls, "127.0.0.1", str(tls_port),
                                *map(str, paths)], capture_output=True, text=True, timeout=60)
        assert store.returncode == 0, store.stderr
        find = subprocess.run([require("findscu"), "-aec", srv.ae_title, *tls, "-S",
                               "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={secret['PatientID']}",
                               "-k", "PatientName", "-k", "AccessionNumber", "-k", "StudyDescription",
                               "127.0.0.1", str(tls_port)], capture_output=True, text=True, timeout=60)
        assert find.returncode == 0 and secret["PatientName"] in find.stderr, find.stderr
        qido = subprocess.run([require("curl"), "-sS", "--cacert", str(pki.ca),
                               f"{srv.dicomweb_url}/studies?PatientName=Wiretap*&includefield=all"],
                              capture_output=True, text=True, timeout=60)
        assert qido.returncode == 0 and secret["PatientName"] in qido.stdout, qido.stderr
        plain = subprocess.run([require("findscu"), "-aec", srv.ae_title, "-S",
                                "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID=CTL{tag}",
                                "-k", "PatientName", "127.0.0.1", str(srv.dicom_port)],
                               capture_output=True, text=True, timeout=60)
        assert plain.returncode == 0 and control in plain.stderr
        wire = stop(control.encode())
    finally:
        srv.stop()

    assert control.encode() in wire  # the capture saw the plaintext control query
    for key, value in secret.items():
        for form in (value, value.upper(), value.replace("^", "%5E"), value.split("^")[0]):
            assert form.encode() not in wire, f"{key} in clear on the wire"
