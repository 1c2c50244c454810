"""Patient letters: issued by the CLI, used with HTTP Basic by dicomweb-client and curl; scoped.

A letter's access code opens its patient's studies and nothing else: every other patient's UID, at
every read endpoint, answers exactly like a UID that does not exist (404).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.conftest import index_bytes, require
from tests.dicomgen import make_study

pytestmark = pytest.mark.cloud  # server tests on SQLite + files and on PostgreSQL + S3


def parse_letter(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    out["selector"] = out["url"].rsplit("/", 1)[1]
    return out


def issue(server, patient_id: str, *extra: str) -> dict[str, str]:
    return parse_letter(server.pacs("letter", "issue", "--patient-id", patient_id, *extra).stdout)


@pytest.fixture(scope="module")
def record(server, tmp_path_factory) -> dict:
    """Two patients (P1 with two studies, P2 with one) imported with the CLI."""
    base = tmp_path_factory.mktemp("letters")
    p1a = make_study(base / "p1a", n_series=1, per_series=2, patient_id="LETTER-P1",
                     patient_name="Alpha^Ann", study_description="Knee")
    p1b = make_study(base / "p1b", n_series=1, per_series=1, patient_id="LETTER-P1",
                     patient_name="Alpha^Ann", study_date="20250301", study_description="Chest")
    p2 = make_study(base / "p2", n_series=1, per_series=2, patient_id="LETTER-P2",
                    patient_name="Beta^Bob", study_description="Head")
    server.pacs("import", "-q", str(base))
    ds = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in [*p1a, *p1b, *p2]}
    return {"p1": [ds[p] for p in [*p1a, *p1b]], "p2": [ds[p] for p in p2], "paths": {
        "p1": [*p1a, *p1b], "p2": p2}}


@pytest.fixture(scope="module")
def letter(server, record) -> dict[str, str]:
    """One letter for P1, shared by the read-only tests (each CLI run costs seconds)."""
    return issue(server, "LETTER-P1")


def test_issue_prints_url_code_passcode_and_pdf(server, record, tmp_path) -> None:
    pdf = tmp_path / "letter.pdf"
    letter = issue(server, "LETTER-P1", "--pdf", str(pdf))
    assert letter["url"].startswith(f"http://localhost:{server.http_port}/letters/")
    assert len(letter["selector"]) == 32 and "LETTER" not in letter["url"]
    code = letter["access code"]
    assert len(code.replace("-", "")) == 20 and code.count("-") == 4  # 100 bits, grouped
    assert len(letter["passcode"].split()) >= 7
    assert pdf.read_bytes().startswith(b"%PDF")
    listing = server.pacs("letter", "list").stdout
    assert letter["selector"] in listing
    assert code not in listing and letter["passcode"] not in listing
    # nothing secret in the index: no code or passcode in clear in the database, its WAL or -shm
    db = index_bytes(server)
    assert code.encode() not in db and code.replace("-", "").encode() not in db
    assert letter["passcode"].encode() not in db


def test_dicomweb_client_with_basic_sees_only_this_patient(server, record, letter) -> None:
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (letter["selector"], letter["access code"])
    client = DICOMwebClient(f"{server.http_url}/letters/{letter['selector']}/dicom-web", session=session)
    studies = client.search_for_studies()
    got = {s["0020000D"]["Value"][0] for s in studies}
    want = {d.StudyInstanceUID for d in record["p1"]}
    assert got == want
    one = record["p1"][0]
    instance = client.retrieve_instance(one.StudyInstanceUID, one.SeriesInstanceUID, one.SOPInstanceUID)
    assert instance.SOPInstanceUID == one.SOPInstanceUID
    assert instance.PatientID == "LETTER-P1"
    meta = client.retrieve_study_metadata(one.StudyInstanceUID)
    assert {m["00080018"]["Value"][0] for m in meta} == {
        d.SOPInstanceUID for d in record["p1"] if d.StudyInstanceUID == one.StudyInstanceUID}
    # a QIDO search for the other patient's ID finds nothing
    assert client.search_for_studies(search_filters={"PatientID": "LETTER-P2"}) == []


def test_wrong_code_is_401_with_basic_challenge(server, record, letter) -> None:
    url = f"{server.http_url}/letters/{letter['selector']}/dicom-web/studies"
    r = requests.get(url, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    r = requests.get(url, auth=(letter["selector"], "0000-0000-0000-0000-0000"), timeout=10)
    assert r.status_code == 401
    r = requests.get(url, auth=(letter["selector"], letter["access code"].lower()), timeout=10)
    assert r.status_code == 200  # Crockford: case does not matter
    r = requests.get(f"{server.http_url}/letters/{'x' * 32}/dicom-web/studies",
                     auth=("x" * 32, letter["access code"]), timeout=10)
    assert r.status_code == 404




def _endpoints(study: str, series: str, sop: str) -> list[tuple[str, dict]]:
    inst = f"/studies/{study}/series/{series}/instances/{sop}"
    return [
        (f"/studies/{study}/series", {}),
        (f"/studies/{study}/instances", {}),
        (f"/studies/{study}/series/{series}/instances", {}),
        (f"/studies/{study}/metadata", {}),
        (f"/studies/{study}/series/{series}/metadata", {}),
        (f"{inst}/metadata", {}),
        (f"/studies/{study}", {"Accept": 'multipart/related; type="application/dicom"'}),
        (f"/studies/{study}/series/{series}", {"Accept": 'multipart/related; type="application/dicom"'}),
        (inst, {"Accept": 'multipart/related; type="application/dicom"'}),
        (f"{inst}/frames/1", {"Accept": 'multipart/related; type="application/octet-stream"'}),
        (f"{inst}/rendered", {"Accept": "image/png"}),
        (f"{inst}/frames/1/rendered", {"Accept": "image/png"}),
        (f"/studies/{study}/thumbnail", {"Accept": "image/png"}),
        (f"{inst}/thumbnail", {"Accept": "image/png"}),
        (f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
         "&contentType=application%2Fdicom", {}),
        (f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
         "&contentType=image%2Fjpeg", {}),
    ]


def test_other_patients_uids_are_404_at_every_endpoint(server, record, letter) -> None:
    root = f"{server.http_url}/letters/{letter['selector']}/dicom-web"
    auth = (letter["selector"], letter["access code"])
    mine, other = record["p1"][0], record["p2"][0]
    for path, headers in _endpoints(mine.StudyInstanceUID, mine.SeriesInstanceUID, mine.SOPInstanceUID):
        r = requests.get(root + path, headers=headers, auth=auth, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
    # the same routes, provider side, serve the other patient (so the 404 below is the scope)
    unknown = _endpoints(generate_uid(), generate_uid(), generate_uid())
    others = _endpoints(other.StudyInstanceUID, other.SeriesInstanceUID, other.SOPInstanceUID)
    for i, (path, headers) in enumerate(others):
        r = requests.get(server.dicomweb_url + path, headers=headers, timeout=30)
        assert r.status_code == 200, ("provider", path, r.status_code)
        r = requests.get(root + path, headers=headers, auth=auth, timeout=30)
        r0 = requests.get(root + unknown[i][0], headers=headers, auth=auth, timeout=30)
        assert b"Beta" not in r.content and b"LETTER-P2" not in r.content
        assert r.status_code == r0.status_code, (path, r.status_code, r0.status_code)  # same as unknown
        assert r.status_code == 404, (path, r.status_code, r.text[:200])  # searches under it too
    # QIDO searches at the root never return the other patient
    for level in ("studies", "series", "instances"):
        r = requests.get(f"{root}/{level}", params={"StudyInstanceUID": other.StudyInstanceUID},
                         auth=auth, timeout=30)
        assert r.status_code == 200 and r.json() == [], (level, r.status_code)


def test_curl_with_the_letter_alone(server, record, letter, tmp_path: Path) -> None:
    curl = require("curl")
    one = record["p1"][0]
    out = tmp_path / "one.dcm"
    url = (f"{server.http_url}/letters/{letter['selector']}/dicom-web/wado?requestType=WADO"
           f"&studyUID={one.StudyInstanceUID}&seriesUID={one.SeriesInstanceUID}"
           f"&objectUID={one.SOPInstanceUID}&contentType=application%2Fdicom")
    done = subprocess.run([curl, "-sS", "-f", "-u", f"{letter['selector']}:{letter['access code']}",
                           "-o", str(out), url], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert pydicom.dcmread(out).SOPInstanceUID == one.SOPInstanceUID


def test_letter_limited_to_named_studies(server, record) -> None:
    knee = record["p1"][0].StudyInstanceUID
    chest = record["p1"][-1].StudyInstanceUID
    letter = issue(server, "LETTER-P1", "--studies", knee)
    root = f"{server.http_url}/letters/{letter['selector']}/dicom-web"
    auth = (letter["selector"], letter["access code"])
    r = requests.get(f"{root}/studies", auth=auth, timeout=10)
    assert {s["0020000D"]["Value"][0] for s in r.json()} == {knee}
    assert requests.get(f"{root}/studies/{chest}/metadata", auth=auth, timeout=10).status_code == 404


def test_revoked_letter_is_refused_and_audited(server, record) -> None:
    letter = issue(server, "LETTER-P1")
    auth = (letter["selector"], letter["access code"])
    url = f"{server.http_url}/letters/{letter['selector']}/dicom-web/studies"
    assert requests.get(url, auth=auth, timeout=10).status_code == 200
    server.pacs("letter", "revoke", letter["selector"])
    assert requests.get(url, auth=auth, timeout=10).status_code == 410
    trail = server.pacs("audit", "--patient-id", "LETTER-P1").stdout
    for action in ("store", "letter-issue", "letter-use", "letter-revoke"):
        assert f"\t{action}\t" in trail, action
    assert "Alpha" not in trail and "LETTER-P1" not in trail  # no PHI in the trail's rows
