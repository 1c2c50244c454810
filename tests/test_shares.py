"""Shares for a follow-on doctor (issue 19 parts 3 and 4), against a real ``pacs serve``:

made on the patient page, pulled by dicomweb-client with a bearer token and with HTTP Basic,
limited to the studies chosen (others answer as unknown, audited), throttled like a letter,
revoked (410), expired (410); a share cannot make shares; the patient's access list shows the
share's reads with the address cut to its /24.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from html import unescape

import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from requests import HTTPError
from sqlalchemy import update

from tests.dicomgen import make_study
from tests.test_letters import issue


@pytest.fixture(scope="module")
def record(server, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("shares")
    tag = generate_uid()[-8:]
    knee = make_study(base / "in" / "knee", n_series=1, per_series=2, patient_id=f"SHARE-{tag}",
                      patient_name="Share^Sam", study_description="Knee MRI")
    chest = make_study(base / "in" / "chest", n_series=1, per_series=1, patient_id=f"SHARE-{tag}",
                       patient_name="Share^Sam", study_date="20250301", study_description="Chest CT")
    other = make_study(base / "in" / "other", n_series=1, per_series=1, patient_id=f"OTHER-{tag}",
                       patient_name="Other^Olga", study_description="Other study")
    server.pacs("import", "-q", str(base / "in"))
    read = lambda paths: [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]  # noqa: E731
    return {"pid": f"SHARE-{tag}", "knee": read(knee), "chest": read(chest), "other": read(other)}


class Patient:
    """A patient's page session driven with requests (the cookie is sent by hand: __Host- cookies
    are Secure, and requests keeps Secure cookies off plain http even on loopback)."""

    def __init__(self, server, letter: dict[str, str]) -> None:
        self.server, self.letter = server, letter
        self.base = f"{server.http_url}/letters/{letter['selector']}"
        r = requests.post(self.base, data={"code": letter["access code"]}, allow_redirects=False,
                          timeout=30)
        assert r.status_code == 303, r.text
        self.cookie = re.search(r"__Host-pacs=([^;]+)", r.headers["Set-Cookie"]).group(1)

    def get(self, path: str = "", **kw) -> requests.Response:
        return requests.get(self.base + path, headers={"Cookie": f"__Host-pacs={self.cookie}"},
                            timeout=60, **kw)

    def post(self, path: str, data: dict | list) -> requests.Response:
        return requests.post(self.base + path, data=data, allow_redirects=False, timeout=60,
                             headers={"Cookie": f"__Host-pacs={self.cookie}"})

    def share(self, studies: list[str] | None = None, days: int | None = None) -> dict[str, str]:
        data = [("study", u) for u in studies or []] + ([("days", str(days))] if days else [])
        r = self.post("/shares", data)
        assert r.status_code == 201, r.text
        url = unescape(re.search(r'id="share-url">([^<]+)<', r.text).group(1))
        code = unescape(re.search(r'id="share-code">([^<]+)<', r.text).group(1))
        assert r.headers["Cache-Control"] == "no-store"
        return {"url": url, "code": code, "selector": url.rstrip("/").rsplit("/", 1)[1],
                "id": re.search(r'id="share-id">(\d+)<', r.text).group(1)}


def _client(server, share: dict[str, str], token: str | None = None):
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    headers = None
    if token:
        headers = {"Authorization": f"Bearer {token}"}
    else:
        session.auth = (share["selector"], share["code"])
    return DICOMwebClient(f"{server.http_url}/shares/{share['selector']}/dicom-web", session=session,
                          headers=headers)


def _token(server, share: dict[str, str]) -> str:
    r = requests.post(f"{server.http_url}/shares/{share['selector']}/token",
                      auth=(share["selector"], share["code"]), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 3600
    return body["access_token"]


def _status(exc: pytest.ExceptionInfo) -> int:
    return exc.value.response.status_code


def _wait_for(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not seen within {timeout:.0f}s: {what}")


def test_share_pulled_by_dicomweb_client_then_revoked(server, record) -> None:
    patient = Patient(server, issue(server, record["pid"]))
    knee, chest, other = record["knee"][0], record["chest"][0], record["other"][0]
    share = patient.share([knee.StudyInstanceUID])
    assert share["url"].endswith(f"/shares/{share['selector']}") and share["code"] not in patient.get().text

    client = _client(server, share, _token(server, share))
    studies = client.search_for_studies()
    assert {s["0020000D"]["Value"][0] for s in studies} == {knee.StudyInstanceUID}
    root = f"{server.http_url}/shares/{share['selector']}/dicom-web"  # RetrieveURL: this root
    assert studies[0]["00081190"]["Value"][0] == f"{root}/studies/{knee.StudyInstanceUID}"
    got = client.retrieve_study(knee.StudyInstanceUID)
    assert {d.SOPInstanceUID for d in got} == {d.SOPInstanceUID for d in record["knee"]}
    assert all(d.PatientID == record["pid"] for d in got)
    meta = client.retrieve_study_metadata(knee.StudyInstanceUID)
    assert len(meta) == len(record["knee"])
    # a study of the same patient the share does not cover, and another patient's: as unknown
    for uid in (chest.StudyInstanceUID, other.StudyInstanceUID, generate_uid()):
        with pytest.raises(HTTPError) as exc:
            client.retrieve_study_metadata(uid)
        assert _status(exc) == 404
        with pytest.raises(HTTPError) as exc:
            client.search_for_series(uid)  # the study's series: a missing resource (404)
        assert _status(exc) == 404
    # HTTP Basic with the share's code works the same (each request checked)
    basic = _client(server, share)
    assert {s["0020000D"]["Value"][0] for s in basic.search_for_studies()} == {knee.StudyInstanceUID}

    # read-only: no STOW-RS or DELETE under a share's root
    for method in ("POST", "DELETE"):
        r = requests.request(method, f"{root}/studies/{knee.StudyInstanceUID}", timeout=30,
                             auth=(share["selector"], share["code"]))
        assert r.status_code == 405, (method, r.status_code)
    # a share can never make a share: its credentials are no letter session
    make = f"{patient.base}/shares"
    assert requests.post(make, auth=(share["selector"], share["code"]), allow_redirects=False,
                         timeout=30).status_code == 401
    assert requests.post(make, headers={"Authorization": f"Bearer {_token(server, share)}"},
                         allow_redirects=False, timeout=30).status_code == 401
    r = requests.post(f"{server.http_url}/shares/{share['selector']}", data={"code": share["code"]},
                      allow_redirects=False, timeout=30)
    share_cookie = re.search(r"__Host-pacs-share=([^;]+)", r.headers["Set-Cookie"]).group(1)
    r = requests.post(make, headers={"Cookie": f"__Host-pacs={share_cookie}"}, timeout=30)
    assert r.status_code == 401
    assert requests.get(f"{server.http_url}/share/dicom-web/studies", timeout=30,
                        headers={"Cookie": f"__Host-pacs-share={share_cookie}"}).status_code == 200

    # the patient sees the share and its reads, the address cut to its network
    page = patient.get().text
    assert f"Share #{share['id']}" in page and "active" in page
    _wait_for(lambda: re.search(rf"share #{share['id']}</td><td>read", patient.get().text),
              "the share's reads in the patient's access list")
    page = patient.get().text
    assert "127.0.0.0/24" in page and "127.0.0.1<" not in page and "not-covered" in page

    # revoked: the bearer token, Basic and the cookie answer 410, audited; nothing revealed
    r = patient.post(f"/shares/{share['id']}/revoke", {})
    assert r.status_code == 200
    with pytest.raises(HTTPError) as exc:
        client.retrieve_study_metadata(knee.StudyInstanceUID)
    assert _status(exc) == 410
    assert b"Share^Sam" not in exc.value.response.content and b"Knee" not in exc.value.response.content
    with pytest.raises(HTTPError) as exc:
        basic.search_for_studies()
    assert _status(exc) == 410
    assert requests.get(f"{server.http_url}/share/dicom-web/studies", timeout=30,
                        headers={"Cookie": f"__Host-pacs-share={share_cookie}"}).status_code == 410
    assert "revoked" in patient.get().text
    trail = server.pacs("audit", "--patient-id", record["pid"]).stdout
    for action in ("share-create", "share-use", "share-revoke", "share-access"):
        assert f"\t{action}\t" in trail, action


def test_share_of_the_whole_record_and_its_expiry(server, record) -> None:
    from storage.index.sharing_models import Share

    patient = Patient(server, issue(server, record["pid"]))
    share = patient.share(days=2)
    client = _client(server, share, _token(server, share))
    want = {record["knee"][0].StudyInstanceUID, record["chest"][0].StudyInstanceUID}
    assert {s["0020000D"]["Value"][0] for s in client.search_for_studies()} == want
    with pytest.raises(HTTPError) as exc:
        client.retrieve_study_metadata(record["other"][0].StudyInstanceUID)
    assert _status(exc) == 404
    assert "until " + (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%d") in \
        patient.get().text.replace("\n", " ")
    archive = server.archive()
    try:
        with archive.write_sessions.begin() as s:  # the share's end comes (no waiting for days)
            s.execute(update(Share).where(Share.selector == share["selector"])
                      .values(expires_at=datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)))
    finally:
        archive.close()
    with pytest.raises(HTTPError) as exc:
        client.search_for_studies()
    assert _status(exc) == 410
    r = requests.get(f"{server.http_url}/shares/{share['selector']}/dicom-web/studies",
                     auth=(share["selector"], share["code"]), timeout=30)
    assert r.status_code == 410 and "Knee" not in r.text
    assert "expired" in patient.get().text


def test_share_codes_are_throttled_like_letters(server, record) -> None:
    patient = Patient(server, issue(server, record["pid"]))
    share = patient.share([record["chest"][0].StudyInstanceUID])
    url = f"{server.http_url}/shares/{share['selector']}/dicom-web/studies"
    assert requests.get(url, timeout=30).status_code == 401  # no credentials: a Basic challenge
    statuses = [requests.get(url, auth=(share["selector"], "0000-0000-0000-0000-0000"),
                             timeout=30).status_code for _ in range(4)]
    assert statuses[:3] == [401, 401, 401] and statuses[3] == 429
    r = requests.get(url, auth=(share["selector"], share["code"]), timeout=30)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1  # even the right code waits
    r = requests.get(f"{server.http_url}/shares/{'x' * 32}/dicom-web/studies",
                     auth=("x" * 32, share["code"]), timeout=30)
    assert r.status_code == 404
    r = requests.post(f"{patient.base}/shares", data={"study": generate_uid()}, timeout=30,
                      headers={"Cookie": f"__Host-pacs={patient.cookie}"})
    assert r.status_code == 404  # a study the patient's letters do not hold: no share made


def test_share_opened_in_the_viewer(server, record) -> None:
    """The doctor types the share's code on its page and opens the study in OHIF (real Chromium)."""
    from tests.browser import browser_unavailable, chromium, open_ohif_study

    reason = browser_unavailable()
    if reason:
        pytest.fail(reason)
    patient = Patient(server, issue(server, record["pid"]))
    knee, chest = record["knee"][0].StudyInstanceUID, record["chest"][0].StudyInstanceUID
    share = patient.share([knee])
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(share["url"].replace(f"http://localhost:{server.http_port}", server.http_url))
        page.get_by_label("Access code of the share").fill(share["code"])
        page.get_by_role("button", name="Open").click()
        page.wait_for_selector("li.study")
        assert page.locator("li.study").count() == 1 and "Knee MRI" in page.inner_text("main")
        assert {c["name"] for c in context.cookies()} == {"__Host-pacs-share"}  # not a letter's
        view = open_ohif_study(server.http_url, knee, viewer_prefix="/share/viewer", context=context,
                               timeout_s=90)
        assert view.nonblack > 0.01 and not view.external_requests
        assert [u for u in view.requests if "/share/dicom-web/" in u and "/frames/" in u]
        req = context.request
        assert req.get(f"{server.http_url}/share/dicom-web/studies/{chest}/metadata").status == 404
        assert req.get(f"{patient.base}/dicom-web/studies").status == 401  # no letter session
        context.close()
