"""The patient page in a real headless Chromium: access code form, session cookie, the record with
thumbnails, a study zip, the encrypted record; strict headers; nothing of another patient."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pydicom
import pytest

from tests.browser import browser_unavailable, chromium
from tests.dicomgen import make_study
from tests.test_export import gpg_decrypt
from tests.test_letters import parse_letter


@pytest.fixture(scope="module")
def setup(server, tmp_path_factory) -> dict:
    reason = browser_unavailable()
    if reason:
        pytest.fail(reason)
    base = tmp_path_factory.mktemp("page")
    mine = make_study(base / "in" / "mine", n_series=1, per_series=2, patient_id="PAGE-1",
                      study_description="Ankle X-ray")
    other = make_study(base / "in" / "other", n_series=1, per_series=1, patient_id="PAGE-2",
                       patient_name="Other^Otto", study_description="Secret study")
    server.pacs("import", "-q", str(base / "in"))
    letter = parse_letter(server.pacs("letter", "issue", "--patient-id", "PAGE-1").stdout)
    return {"letter": letter, "mine": [pydicom.dcmread(p) for p in mine],
            "mine_bytes": {p.read_bytes() for p in mine},
            "other": pydicom.dcmread(other[0], stop_before_pixels=True)}


def test_page_in_chromium(server, setup, tmp_path: Path) -> None:
    letter = setup["letter"]
    url = f"{server.http_url}/letters/{letter['selector']}"
    study = setup["mine"][0].StudyInstanceUID
    with chromium() as browser:
        context = browser.new_context(java_script_enabled=False)  # the basics work without JS
        page = context.new_page()
        resp = page.goto(url)
        assert resp.status == 200
        headers = resp.headers
        assert headers["cache-control"] == "no-store" and headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "script-src" not in headers["content-security-policy"]  # no scripts at all
        assert page.get_by_label("Access code from your letter").is_visible()

        page.get_by_label("Access code from your letter").fill("0000-0000-0000-0000-0000")
        page.get_by_role("button", name="Open").click()
        assert "wrong access code" in page.content()
        assert not context.cookies()

        page.get_by_label("Access code from your letter").fill(letter["access code"])
        page.get_by_role("button", name="Open").click()
        page.wait_for_selector("li.study")
        cookies = {c["name"]: c for c in context.cookies()}
        c = cookies["__Host-pacs"]
        assert c["secure"] and c["httpOnly"] and c["sameSite"] == "Strict" and c["path"] == "/"
        text = page.inner_text("main")
        assert "Ankle X-ray" in text and "2024-01-15" in text
        assert "Secret study" not in page.content() and setup["other"].StudyInstanceUID not in page.content()
        images = page.locator("li.study img")
        assert images.count() == 1
        thumb = context.request.get(server.http_url + images.first.get_attribute("src"))  # with the cookie
        assert thumb.status == 200 and thumb.headers["content-type"].startswith("image/")
        assert page.get_by_role("link", name="View images").get_attribute("href").startswith("/patient/viewer/")

        # a study as zip (PS3.10 layout) and the whole record encrypted with the passcode
        z = context.request.get(f"{url}/studies/{study}.zip")
        assert z.status == 200
        with zipfile.ZipFile(io.BytesIO(z.body())) as zf:
            names = zf.namelist()
            files = {zf.read(n) for n in names if n.startswith("DICOM/")}
        assert "DICOMDIR" in names and files == setup["mine_bytes"]
        other = setup["other"]
        assert context.request.get(f"{url}/studies/{other.StudyInstanceUID}.zip").status == 404
        assert context.request.get(
            f"{url}/dicom-web/studies/{other.StudyInstanceUID}/thumbnail").status == 404
        bad = context.request.post(f"{url}/record", form={"passcode": "wrong words", "format": "gpg"})
        assert bad.status == 403
        enc = context.request.post(f"{url}/record", form={"passcode": letter["passcode"], "format": "gpg"})
        assert enc.status == 200
        path = tmp_path / "record.zip.gpg"
        path.write_bytes(enc.body())
        done = gpg_decrypt(path, letter["passcode"], tmp_path / "gnupg")
        assert done.returncode == 0, done.stderr
        with zipfile.ZipFile(io.BytesIO(done.stdout)) as zf:
            assert {zf.read(n) for n in zf.namelist() if n.startswith("DICOM/")} == setup["mine_bytes"]

        # the viewer's DICOMweb root for this session answers only this patient
        qido = context.request.get(f"{server.http_url}/patient/dicom-web/studies")
        assert qido.status == 200
        assert {s["0020000D"]["Value"][0] for s in qido.json()} == {study}

        page.get_by_role("button", name="Sign out").click()
        assert page.get_by_label("Access code from your letter").is_visible()
        assert context.request.get(f"{server.http_url}/patient/dicom-web/studies").status == 401
        context.close()


def test_thumbnails_render_in_the_page(server, setup) -> None:
    letter = setup["letter"]
    with chromium() as browser:
        page = browser.new_context().new_page()
        page.goto(f"{server.http_url}/letters/{letter['selector']}")
        page.get_by_label("Access code from your letter").fill(letter["access code"])
        page.get_by_role("button", name="Open").click()
        page.wait_for_selector("li.study img")
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        widths = page.evaluate("[...document.images].map(i => i.naturalWidth)")
        assert widths and all(w > 0 for w in widths)  # each thumbnail decoded (scoped WADO-RS)
