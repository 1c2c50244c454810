"""HTTPS served by ``pacs serve`` itself (gunicorn's TLS): curl and dicomweb-client against a CA the
test makes; HSTS; BCP 195 (no TLS 1.1); the patient session cookie is Secure and works over TLS."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from tests.conftest import PACS, Server, free_port, require, start_server
from tests.dicomgen import make_study
from tests.test_letters import parse_letter
from tests.tlscerts import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https_server(tmp_path_factory, pki) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("https"), PACS_HTTP_TLS="1",
                       PACS_TLS_CERT_FILE=str(pki.server_cert), PACS_TLS_KEY_FILE=str(pki.server_key))
    yield srv
    srv.stop()


def _curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require("curl"), "-sS", *args], capture_output=True, text=True, timeout=60)


def test_curl_qido_over_https_with_hsts(https_server, pki, tmp_path):
    paths = make_study(tmp_path / "in", n_series=1, per_series=1, patient_id="HTTPS-1",
                       patient_name="Secura^Tess")
    https_server.pacs("import", "-q", str(tmp_path / "in"))
    url = f"{https_server.dicomweb_url}/studies?PatientID=HTTPS-1&includefield=PatientName"
    ok = _curl("--cacert", str(pki.ca), "-D", "-", url)
    assert ok.returncode == 0, ok.stderr
    head, _, body = ok.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
    assert head.startswith("HTTP/1.1 200")
    assert "strict-transport-security: max-age=31536000" in head.lower()
    assert "Secura^Tess" in body and pydicom.dcmread(paths[0]).StudyInstanceUID in body
    assert f"https://127.0.0.1:{https_server.http_port}/dicom-web/studies/" in body  # RetrieveURL

    untrusted = _curl(url)  # the system CAs do not know ours
    assert untrusted.returncode == 60, untrusted.stderr
    plain = _curl(url.replace("https://", "http://"))
    assert plain.returncode != 0 and "Secura" not in plain.stdout
    old = _curl("--cacert", str(pki.ca), "--tlsv1.1", "--tls-max", "1.1", url)
    assert old.returncode != 0 and "Secura" not in old.stdout


def test_tls_1_1_and_weak_suites_are_refused(https_server):
    for version, ciphers in ((ssl.TLSVersion.TLSv1_1, None), (ssl.TLSVersion.TLSv1_2, "AES128-SHA")):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.maximum_version = version
        if ciphers:
            ctx.set_ciphers(ciphers)  # static RSA key exchange, CBC: not in BCP 195
        else:
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", https_server.http_port), timeout=10) as raw, \
                pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_dicomweb_client_round_trip_over_https(https_server, pki, tmp_path):
    paths = make_study(tmp_path / "in", n_series=1, per_series=2, rows=16, columns=16,
                       patient_id="HTTPS-DWC", patient_name="Client^Tilly")
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would replace .verify
    session.verify = str(pki.ca)
    client = DICOMwebClient(https_server.dicomweb_url, session=session)
    client.store_instances([pydicom.dcmread(p) for p in paths])
    studies = client.search_for_studies(search_filters={"PatientID": "HTTPS-DWC"})
    assert len(studies) == 1
    study_uid = studies[0]["0020000D"]["Value"][0]
    instances = client.retrieve_study(study_uid)
    assert sorted(i.SOPInstanceUID for i in instances) == sorted(pydicom.dcmread(p).SOPInstanceUID
                                                                  for p in paths)
    bad = requests.Session()  # without our CA: refused before any data moves
    bad.trust_env = False
    with pytest.raises(requests.exceptions.SSLError):
        DICOMwebClient(https_server.dicomweb_url, session=bad).search_for_studies()


def test_patient_session_cookie_is_secure_over_https(https_server, pki, tmp_path):
    make_study(tmp_path / "in", n_series=1, per_series=1, patient_id="HTTPS-PAT",
               study_description="Knee MRI")
    https_server.pacs("import", "-q", str(tmp_path / "in"))
    letter = parse_letter(https_server.pacs("letter", "issue", "--patient-id", "HTTPS-PAT").stdout)
    page = f"{https_server.http_url}/letters/{letter['selector']}"
    jar = Path(tmp_path / "jar")
    signed = _curl("--cacert", str(pki.ca), "-c", str(jar), "-D", "-", "-o", "/dev/null",
                   "--data-urlencode", f"code={letter['access code']}", page)
    assert signed.returncode == 0, signed.stderr
    [cookie] = [ln for ln in signed.stdout.splitlines() if ln.lower().startswith("set-cookie:")]
    assert "__Host-pacs=" in cookie
    flags = {f.strip().lower() for f in cookie.split(";")}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
    assert "strict-transport-security" in signed.stdout.lower()
    record = _curl("--cacert", str(pki.ca), "-b", str(jar), page)
    assert record.returncode == 0 and "Knee MRI" in record.stdout


def test_a_certificate_that_does_not_load_is_refused_at_start(tmp_path, pki):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"), PACS_HTTP_TLS="1", PACS_TLS_CERT_FILE=str(bad),
               PACS_TLS_KEY_FILE=str(pki.server_key), PACS_DICOM_HOST="127.0.0.1", PACS_HTTP_HOST="127.0.0.1",
               PACS_DICOM_PORT=str(free_port()), PACS_HTTP_PORT=str(free_port()))
    run = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    [line] = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert "tls_cert_file" in line and "Nothing was changed" in line
    assert not (tmp_path / "data").exists()
    env.pop("PACS_TLS_CERT_FILE")
    run = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "tls_cert_file" in run.stderr and "Traceback" not in run.stderr
