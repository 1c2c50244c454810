"""The upload page (issue 5 part 2) in real headless Chromium against ``pacs serve``."""

from __future__ import annotations

import base64

import pytest
import requests

from tests.browser import browser_unavailable, chromium
from tests.conftest import Server
from tests.data_artifacts import make_jpeg, make_pdf

DROP_JS = """([name, type, b64]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type }));
  const zone = document.getElementById('drop');
  zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
  zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
}"""


def studies(server: Server, pid: str) -> list[dict]:
    r = requests.get(f"{server.dicomweb_url}/studies", params={"PatientID": pid}, timeout=30,
                     headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text  # no match: 200 and [] (dicomweb/qido.py)
    return r.json()


def test_upload_page_pick_drop_and_find(server: Server) -> None:
    if reason := browser_unavailable():
        pytest.skip(reason)
    pdf = make_pdf("Uploaded in the browser")
    with chromium() as browser:
        page = browser.new_page()
        page.goto(server.http_url + "/upload/")
        page.fill("#patient-id", "UPL1")
        page.click("#find-patient")
        page.wait_for_selector("#patient-found:has-text('No patient')", timeout=10_000)
        page.fill("#patient-name", "Up^Lo")
        page.fill("#description", "From the browser")
        # file input fallback: one good photo and one mislabelled file
        page.set_input_files("#file-input", files=[
            {"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": make_jpeg()},
            {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": b"this is no pdf"},
        ])
        page.wait_for_selector("#results li.refused", timeout=20_000)
        page.wait_for_selector("#results li.stored", timeout=20_000)
        assert "scan.pdf: refused" in page.inner_text("#results")
        # drag and drop (a synthetic drop event carrying a real File): goes into the same study
        page.evaluate(DROP_JS, ["letter.pdf", "application/pdf", base64.b64encode(pdf).decode()])
        page.wait_for_function("document.querySelectorAll('#results li.stored').length === 2",
                               timeout=20_000)
        sops = page.eval_on_selector_all("#results li.stored", "els => els.map(e => e.dataset.sopInstanceUid)")

        [study] = studies(server, "UPL1")
        study_uid = study["0020000D"]["Value"][0]
        r = requests.get(f"{server.dicomweb_url}/studies/{study_uid}/instances", timeout=30)
        assert sorted(i["00080018"]["Value"][0] for i in r.json()) == sorted(sops)
        assert study["00100010"]["Value"][0]["Alphabetic"] == "Up^Lo"

        # the patient is found now, with the study to choose
        page.goto(server.http_url + "/upload/")
        page.fill("#patient-id", "UPL1")
        page.click("#find-patient")
        page.wait_for_selector("#patient-found:has-text('Found')", timeout=10_000)
        assert page.eval_on_selector_all("#study option", "os => os.map(o => o.value)")[1:] == [study_uid]


def test_upload_post_needs_the_csrf_header(server: Server) -> None:
    files = {"file": ("photo.jpg", make_jpeg(), "image/jpeg")}
    form = {"patient_id": "UPL2", "patient_name": "Cross^Site"}
    r = requests.post(server.http_url + "/upload/files", files=files, data=form, timeout=30)
    assert r.status_code == 403
    r = requests.post(server.http_url + "/upload/files", files=files, data=form, timeout=30,
                      headers={"X-PACS-Upload": "1", "Origin": "http://evil.example"})
    assert r.status_code == 403
    assert studies(server, "UPL2") == []
    r = requests.post(server.http_url + "/upload/files", files=files, data={"patient_id": "UPL2"},
                      timeout=30, headers={"X-PACS-Upload": "1"})
    assert r.status_code == 400 and "unknown patient" in r.json()["error"]
    r = requests.post(server.http_url + "/upload/files", files=files, data=form, timeout=30,
                      headers={"X-PACS-Upload": "1"})
    assert r.status_code == 200 and r.json()["status"] == "stored"
    assert len(studies(server, "UPL2")) == 1
