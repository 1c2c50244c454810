"""``/metrics`` of a real ``pacs serve`` (two gunicorn workers): Prometheus text, summed over the
worker processes, with closed labels and nothing about a patient in it or in the files behind it."""

from __future__ import annotations

import io
import subprocess
import uuid
from pathlib import Path

import pydicom
import requests
from prometheus_client.parser import text_string_to_metric_families

from dicomweb.multipart import Part, encode
from tests.conftest import require, start_server
from tests.dicomgen import make_image


def _p10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_stores_refusals_and_requests(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        patient = "MET-" + uuid.uuid4().hex[:10]
        name = "Metrics^" + uuid.uuid4().hex[:8]
        images = [make_image(patient_id=patient, patient_name=name) for _ in range(3)]
        parts = [Part.make(_p10(ds), "application/dicom") for ds in images]
        parts.append(Part.make(b"not a DICOM object", "application/dicom"))
        ct, chunks = encode(parts, media_type="application/dicom")
        r = requests.post(f"{srv.dicomweb_url}/studies", data=b"".join(chunks),
                          headers={"Content-Type": ct}, timeout=60)
        assert r.status_code == 202, r.text
        dcm = tmp_path / "one.dcm"
        dcm.write_bytes(_p10(make_image(patient_id=patient, patient_name=name)))
        done = subprocess.run([require("storescu"), "-aec", srv.ae_title, "127.0.0.1",
                               str(srv.dicom_port), str(dcm)], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        for _ in range(4):  # spread over both workers
            q = requests.get(f"{srv.dicomweb_url}/studies", params={"PatientID": patient}, timeout=30)
            assert q.status_code == 200

        r = requests.get(f"{srv.http_url}/metrics", timeout=30)
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        got = _samples(r.text)
        assert got[("pacs_stored_instances_total", frozenset({("door", "stow")}))] == 3
        assert got[("pacs_store_refusals_total",
                    frozenset({("door", "stow"), ("reason", "bad_input")}))] == 1
        assert got[("pacs_http_requests_total", frozenset({("service", "qido"), ("status", "2xx")}))] == 4
        assert got[("pacs_http_requests_total", frozenset({("service", "stow"), ("status", "2xx")}))] == 1
        assert got[("pacs_http_request_seconds_count", frozenset({("service", "qido")}))] == 4
        assert got[("pacs_stored_instances_total", frozenset({("door", "dimse")}))] == 1
        assert got[("pacs_dimse_requests_total",
                    frozenset({("service", "C-STORE"), ("outcome", "success")}))] == 1
        assert got[("pacs_dimse_associations_total", frozenset({("outcome", "accepted")}))] == 1
        assert got[("pacs_dimse_associations_active", frozenset())] == 0  # released

        secrets = [patient, name, images[0].StudyInstanceUID, images[0].SOPInstanceUID]
        assert not [s for s in secrets if s in r.text]
        from storage.metrics import run_dir

        assert srv.proc is not None
        files = list(run_dir(srv.proc.pid).iterdir())
        assert files  # the workers' counters are kept there
        for f in files:
            raw = f.read_bytes()
            assert not [s for s in secrets if s.encode() in raw], f.name
    finally:
        srv.stop()
    assert not run_dir(srv.proc.pid).exists()  # removed when pacs serve stops


def test_metrics_need_credentials_from_outside(tmp_path: Path) -> None:
    srv = start_server(tmp_path, PACS_OPEN_LOOPBACK="false")
    try:
        r = requests.get(f"{srv.http_url}/metrics", timeout=30)
        assert r.status_code == 401
        token = srv.pacs("token", "create", "--name", "prometheus", "--scope", "read").stdout.split()[0]
        r = requests.get(f"{srv.http_url}/metrics", headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
        assert r.status_code == 200
        assert "pacs_http_requests_total" in r.text
    finally:
        srv.stop()
