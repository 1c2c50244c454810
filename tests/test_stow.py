"""STOW-RS (PS3.18 10.5) against a real ``pacs serve``: dicomweb-client, raw HTTP, findscu, QIDO."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from dicomweb.multipart import Part, encode
from tests.conftest import Server, require, start_server
from tests.data_artifacts import make_mp4, make_pdf
from tests.dicomgen import make_image

pytestmark = pytest.mark.cloud  # server tests on SQLite + files and on PostgreSQL + S3

MAX_UPLOAD = 3_000_000
DICOM_JSON = "application/dicom+json"


@pytest.fixture(scope="module")
def srv(tmp_path_factory, server_backend) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("stow"), server_backend, PACS_MAX_UPLOAD_BYTES=str(MAX_UPLOAD))
    yield s
    s.stop()


def p10(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def post(srv: Server, parts: list[Part], path: str = "/studies", media_type: str = "application/dicom"
         ) -> requests.Response:
    ct, chunks = encode(parts, media_type=media_type)
    return requests.post(srv.dicomweb_url + path, data=b"".join(chunks),
                         headers={"Content-Type": ct, "Accept": DICOM_JSON}, timeout=60)


def findscu(srv: Server, *keys: str) -> str:
    tool = require("findscu")
    p = subprocess.run([tool, "-S", "-aec", srv.ae_title, "-k", "QueryRetrieveLevel=STUDY",
                        *[a for k in keys for a in ("-k", k)], "127.0.0.1", str(srv.dicom_port)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return (p.stdout + p.stderr).decode("latin-1")


def qido_instances(srv: Server, study: str) -> list[dict]:
    """The study's instances; ``[]`` when nothing of it was stored (then the study is a 404)."""
    r = requests.get(f"{srv.dicomweb_url}/studies/{study}/instances", timeout=30,
                     headers={"Accept": DICOM_JSON})
    if r.status_code == 404:  # PS3.18 10.6.3.2 via issue 4: an unknown study in the path
        return []
    assert r.status_code == 200 and r.json(), r.text  # a study exists only with an instance
    return r.json()


def seq(body: dict, tag: str) -> list[dict]:
    return body.get(tag, {}).get("Value", [])


def test_dicomweb_client_bad_part_fails_alone(srv: Server) -> None:
    study = generate_uid()
    good = [make_image(patient_id="STOW1", study_uid=study, instance_number=i) for i in range(1, 4)]
    client = DICOMwebClient(srv.dicomweb_url)
    reply = client.store_instances(good)  # parses the reply: needs exactly application/dicom+json
    assert len(reply.ReferencedSOPSequence) == 3
    assert reply.RetrieveURL.endswith(f"/studies/{study}")

    more = [make_image(patient_id="STOW1", study_uid=study, instance_number=i) for i in (4, 5)]
    bad = p10(make_image(patient_id="STOW1", study_uid=study))[:400]  # truncated
    parts = [Part.make(p10(more[0]), "application/dicom"), Part.make(bad, "application/dicom"),
             Part.make(p10(more[1]), "application/dicom")]
    r = post(srv, parts)
    assert r.status_code == 202, r.text
    assert r.headers["Content-Type"] == DICOM_JSON
    body = r.json()
    failed = seq(body, "00081198")
    assert len(failed) == 1 and failed[0]["00081197"]["Value"][0] == 0xC000  # cannot understand
    stored = {i["00081155"]["Value"][0] for i in seq(body, "00081199")}
    assert stored == {str(d.SOPInstanceUID) for d in more}
    for item in seq(body, "00081199"):
        url = item["00081190"]["Value"][0]
        assert url.startswith(srv.dicomweb_url + f"/studies/{study}/series/")

    found = {i["00080018"]["Value"][0] for i in qido_instances(srv, study)}
    assert found == {str(d.SOPInstanceUID) for d in good + more}
    out = findscu(srv, f"StudyInstanceUID={study}", "NumberOfStudyRelatedInstances")
    assert study in out and "[5]" in out.replace(" ", "")


def test_study_uid_mismatch_refused_for_that_part(srv: Server) -> None:
    url_study, other = generate_uid(), generate_uid()
    ok = make_image(patient_id="STOW2", study_uid=url_study)
    wrong = make_image(patient_id="STOW2", study_uid=other)
    r = post(srv, [Part.make(p10(ok), "application/dicom"), Part.make(p10(wrong), "application/dicom")],
             path=f"/studies/{url_study}")
    assert r.status_code == 202, r.text
    failed = seq(r.json(), "00081198")
    assert [f["00081155"]["Value"][0] for f in failed] == [str(wrong.SOPInstanceUID)]
    assert failed[0]["00081197"]["Value"][0] == 0xC409
    assert qido_instances(srv, other) == []
    # all parts refused: 409
    r = post(srv, [Part.make(p10(make_image(study_uid=other)), "application/dicom")],
             path=f"/studies/{url_study}")
    assert r.status_code == 409 and r.headers["Content-Type"] == DICOM_JSON


def test_malformed_multipart_is_400(srv: Server) -> None:
    r = requests.post(srv.dicomweb_url + "/studies", data=b"no boundary in here at all",
                      headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=abc'},
                      timeout=30)
    assert r.status_code == 400, r.text
    assert "boundary" in r.text
    r = requests.post(srv.dicomweb_url + "/studies", data=b"--abc\r\nContent-Type: application/dicom\r\n\r\nxx",
                      headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=abc'},
                      timeout=30)
    assert r.status_code == 400, r.text


def test_unsupported_type_is_415(srv: Server) -> None:
    r = requests.post(srv.dicomweb_url + "/studies", data=p10(make_image()),
                      headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert r.status_code == 415, r.text
    r = requests.post(srv.dicomweb_url + "/studies", data=b"--a\r\n\r\nx\r\n--a--",
                      headers={"Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=a'},
                      timeout=30)
    assert r.status_code == 415, r.text


def test_over_size_is_413_and_nothing_stored(srv: Server) -> None:
    study = generate_uid()
    big = make_image(study_uid=study, rows=1100, columns=1400)  # ~3 MB > limit
    r = post(srv, [Part.make(p10(big), "application/dicom")])
    assert r.status_code == 413, r.text
    assert qido_instances(srv, study) == []


def test_json_with_pdf_and_mp4_bulk_data(srv: Server) -> None:
    study = generate_uid()
    pdf, mp4 = make_pdf("STOW letter"), make_mp4(seconds=0.4, size="160x120")
    patient = {"00100020": {"vr": "LO", "Value": ["STOWJ"]},
               "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Json^Jay"}]},
               "0020000D": {"vr": "UI", "Value": [study]},
               "00081030": {"vr": "LO", "Value": ["Uploaded by STOW JSON"]}}
    meta = [
        {**patient, "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.104.1"]},
         "00420010": {"vr": "ST", "Value": ["Referral letter"]},
         "00420011": {"vr": "OB", "BulkDataURI": "http://client/bulk/1"}},
        {**patient, "7FE00010": {"vr": "OB", "BulkDataURI": "http://client/bulk/2"}},
    ]
    parts = [Part.make(json.dumps(meta).encode(), DICOM_JSON),
             Part.make(pdf, "application/pdf", "http://client/bulk/1"),
             Part.make(mp4, "video/mp4", "http://client/bulk/2")]
    r = post(srv, parts, path=f"/studies/{study}", media_type=DICOM_JSON)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == DICOM_JSON
    refs = seq(r.json(), "00081199")
    assert sorted(i["00081150"]["Value"][0] for i in refs) == [
        "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.77.1.4.1"]
    found = qido_instances(srv, study)
    assert {i["00080018"]["Value"][0] for i in found} == {i["00081155"]["Value"][0] for i in refs}
    r = requests.get(f"{srv.dicomweb_url}/studies", params={"PatientID": "STOWJ"}, timeout=30,
                     headers={"Accept": DICOM_JSON})
    assert r.status_code == 200 and r.json()[0]["0020000D"]["Value"] == [study]

    # the originals come back byte for byte from the stored objects
    from storage.artifacts import extract_original

    archive = srv.archive()
    try:
        back = {extract_original(archive.dataset(i)).data for i in archive.instances(study_uid=study)}
    finally:
        archive.close()
    assert back == {pdf, mp4}


def test_json_bulk_uri_missing_fails_that_item(srv: Server) -> None:
    meta = [{"00100020": {"vr": "LO", "Value": ["STOWJ2"]},
             "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Json^Kay"}]},
             "00420011": {"vr": "OB", "BulkDataURI": "http://client/missing"}}]
    r = post(srv, [Part.make(json.dumps(meta).encode(), DICOM_JSON)], media_type=DICOM_JSON)
    assert r.status_code == 409, r.text
    assert r.headers["Content-Type"] == DICOM_JSON
    assert "BulkDataURI" in json.dumps(r.json())


def test_large_part_through_the_spool_and_study_check(srv: Server) -> None:
    """A part past the in-memory threshold (1 MiB) is spooled encrypted; its UIDs are still read."""
    study = generate_uid()
    big = make_image(patient_id="STOW3", study_uid=study, rows=800, columns=800)  # ~1.3 MB
    stray = make_image(patient_id="STOW3", study_uid=generate_uid(), rows=800, columns=800)
    r = post(srv, [Part.make(p10(big), "application/dicom"), Part.make(p10(stray), "application/dicom")],
             path=f"/studies/{study}")
    assert r.status_code == 202, r.text
    body = r.json()
    assert [i["00081155"]["Value"][0] for i in seq(body, "00081199")] == [str(big.SOPInstanceUID)]
    assert [i["00081155"]["Value"][0] for i in seq(body, "00081198")] == [str(stray.SOPInstanceUID)]
    archive = srv.archive()
    try:
        [info] = archive.instances(study_uid=study)
        assert archive.read_bytes(info) == p10(big)  # stored byte for byte
    finally:
        archive.close()


def test_one_client_keeps_its_connection(srv: Server) -> None:
    """Sequential uploads on one connection stay on it (the rebalancing close is for concurrency)."""
    with requests.Session() as s:
        for _ in range(3):
            ct, chunks = encode([Part.make(p10(make_image(patient_id="STOW4")), "application/dicom")],
                                media_type="application/dicom")
            r = s.post(srv.dicomweb_url + "/studies", data=b"".join(chunks), timeout=60,
                       headers={"Content-Type": ct, "Accept": DICOM_JSON})
            assert r.status_code == 200, r.text
            assert r.headers.get("Connection", "keep-alive").lower() != "close"


def test_concurrent_posts_in_one_worker_get_connection_close() -> None:
    """pacs.gunicorn_hooks: a POST that starts while another POST runs in the worker closes its
    connection after the answer, so the client's next request can land on an idle worker."""
    from types import SimpleNamespace

    from pacs import gunicorn_hooks as hooks

    first, second = SimpleNamespace(method="POST"), SimpleNamespace(method="POST")
    read = SimpleNamespace(method="GET")
    for req in (first, read, second):
        hooks.pre_request(None, req)
    assert not hasattr(first, "must_close") and not hasattr(read, "must_close")
    assert second.must_close is True
    for req in (second, read, first):
        hooks.post_request(None, req, {}, None)
    alone = SimpleNamespace(method="POST")
    hooks.pre_request(None, alone)
    hooks.post_request(None, alone, {}, None)
    assert not hasattr(alone, "must_close")


# -- a single application/dicom body (as the Google and Microsoft DICOM services accept it) ----------

def curl_post(srv: Server, path: str, data: bytes, tmp_path) -> tuple[int, dict]:
    """``curl -X POST -H 'Content-Type: application/dicom' --data-binary @file``: status and the
    JSON body (``{"text": ...}`` for a plain-text refusal)."""
    f = tmp_path / "one.dcm"
    f.write_bytes(data)
    p = subprocess.run(["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/dicom",
                        "--data-binary", f"@{f}", "-w", "\n%{http_code}", srv.dicomweb_url + path],
                       capture_output=True, timeout=60, check=True)
    body, _, code = p.stdout.decode().rpartition("\n")
    try:
        return int(code), json.loads(body)
    except ValueError:
        return int(code), {"text": body}


def test_single_dicom_body_with_curl_is_stored(srv: Server, tmp_path) -> None:
    study = generate_uid()
    ds = make_image(study_uid=study, patient_id="CURL-" + generate_uid()[-8:])
    data = p10(ds)
    code, body = curl_post(srv, "/studies", data, tmp_path)
    assert code == 200, body
    refs = seq(body, "00081199")
    assert [r["00081155"]["Value"][0] for r in refs] == [ds.SOPInstanceUID]
    assert body["00081190"]["Value"] == [f"{srv.dicomweb_url}/studies/{study}"]
    [found] = qido_instances(srv, study)
    assert found["00080018"]["Value"] == [ds.SOPInstanceUID]
    r = requests.get(f"{srv.dicomweb_url}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/"
                     f"{ds.SOPInstanceUID}", headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                      'transfer-syntax=*'}, timeout=30)
    assert r.status_code == 200
    assert data in r.content


def test_single_dicom_body_large_goes_through_the_spool(srv: Server, tmp_path) -> None:
    study = generate_uid()
    ds = make_image(study_uid=study, rows=700, columns=1000)  # ~1.4 MB: past the in-memory MiB
    code, body = curl_post(srv, f"/studies/{study}", p10(ds), tmp_path)
    assert code == 200, body
    assert len(qido_instances(srv, study)) == 1


def test_single_dicom_body_refusals_are_the_multipart_ones(srv: Server, tmp_path) -> None:
    # not DICOM: 409 with the failure, as a multipart request whose only part fails
    code, body = curl_post(srv, "/studies", b"this is not a DICOM file" * 10, tmp_path)
    assert code == 409, body
    [failed] = seq(body, "00081198")
    assert failed["00081197"]["Value"] == [0xC000]
    # another study than the URL's: that instance is refused, nothing stored
    study, other = generate_uid(), generate_uid()
    code, body = curl_post(srv, f"/studies/{study}", p10(make_image(study_uid=other)), tmp_path)
    assert code == 409, body
    assert seq(body, "00081198")[0]["00081197"]["Value"] == [0xC409]
    assert qido_instances(srv, other) == []
    # over max_upload_bytes: 413, nothing stored
    big_study = generate_uid()
    code, body = curl_post(srv, "/studies", p10(make_image(study_uid=big_study, rows=1100, columns=1400)),
                           tmp_path)
    assert code == 413, body
    assert "limit" in json.dumps(body)
    assert qido_instances(srv, big_study) == []
