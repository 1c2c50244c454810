"""The patient's whole record in a real headless Chromium (issue 19 part 2): letters from two
providers added into one session show one timeline labelled by provider, with thumbnails and
the viewer's DICOMweb root for both; one encrypted download of everything (a letter's passcode or
one the patient chooses); a session with one letter alone still sees only that letter's record.

The second provider is made with ``storage.providers.add_provider`` and its patient moved to it
by setting ``patients.provider_id`` in the index (the tenants' ingest wiring is another branch).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import update

from tests.browser import browser_unavailable, chromium, open_ohif_study
from tests.dicomgen import make_study
from tests.test_export import gpg_decrypt
from tests.test_letters import issue


@pytest.fixture(scope="module")
def setup(server, tmp_path_factory) -> dict:
    reason = browser_unavailable()
    if reason:
        pytest.fail(reason)
    from storage.index.models import Patient
    from storage.providers import add_provider

    base = tmp_path_factory.mktemp("whole")
    tag = generate_uid()[-8:]
    a = make_study(base / "in" / "a", n_series=1, per_series=2, patient_id=f"WR-A-{tag}",
                   patient_name="Whole^Wendy", study_date="20230110", study_description="Wrist X-ray")
    b = make_study(base / "in" / "b", n_series=1, per_series=1, patient_id=f"WR-B-{tag}",
                   patient_name="Whole^Wendy", study_date="20250620", study_description="Heart echo")
    c = make_study(base / "in" / "c", n_series=1, per_series=1, patient_id=f"WR-C-{tag}",
                   patient_name="Else^Eve", study_description="Not hers")
    server.pacs("import", "-q", str(base / "in"))
    ds = {k: [pydicom.dcmread(p) for p in v] for k, v in {"a": a, "b": b, "c": c}.items()}
    archive = server.archive()
    try:
        clinic = add_provider(archive, f"Clinic B {tag}")
        ref_b = archive.instances(study_uid=ds["b"][0].StudyInstanceUID)[0].patient_ref
        with archive.write_sessions.begin() as s:
            s.execute(update(Patient).where(Patient.id == ref_b).values(provider_id=clinic.id))
    finally:
        archive.close()
    return {"a": issue(server, f"WR-A-{tag}"), "b": issue(server, f"WR-B-{tag}"), "ds": ds,
            "clinic": clinic.name, "bytes": {k: {p.read_bytes() for p in v}
                                             for k, v in {"a": a, "b": b}.items()}}


def _open(page, url: str, code: str) -> None:
    page.goto(url)
    page.get_by_label("Access code from your letter").fill(code)
    page.get_by_role("button", name="Open").click()
    page.wait_for_selector("li.study")


def _uids(resp) -> set[str]:
    assert resp.status == 200, resp.status
    return {s["0020000D"]["Value"][0] for s in resp.json()}


def test_two_letters_from_two_providers_in_one_session(server, setup, tmp_path: Path) -> None:
    a, b, ds = setup["a"], setup["b"], setup["ds"]
    study_a, study_b = ds["a"][0].StudyInstanceUID, ds["b"][0].StudyInstanceUID
    study_c = ds["c"][0].StudyInstanceUID
    url_a = f"{server.http_url}/letters/{a['selector']}"
    url_b = f"{server.http_url}/letters/{b['selector']}"
    with chromium() as browser:
        alone = browser.new_context()  # letter A only: sees A, nothing of B
        page = alone.new_page()
        _open(page, url_a, a["access code"])
        assert page.locator("li.study").count() == 1 and "Heart echo" not in page.content()
        req = alone.request
        assert _uids(req.get(f"{server.http_url}/patient/dicom-web/studies")) == {study_a}
        assert req.get(f"{server.http_url}/patient/dicom-web/studies/{study_b}/metadata").status == 404
        assert req.get(f"{url_b}/dicom-web/studies").status == 401  # B's root wants B's code
        assert req.get(f"{url_b}").status == 200 and "Heart echo" not in req.get(url_b).text()

        context = browser.new_context()
        page = context.new_page()
        _open(page, url_a, a["access code"])
        page.get_by_label("Another letter").fill(url_b)
        page.get_by_label("Its access code").fill("0000-0000-0000-0000-0000")
        page.get_by_role("button", name="Add this letter").click()
        assert "wrong access code" in page.content()
        page.goto(url_a)
        page.get_by_label("Another letter").fill(url_b)
        page.get_by_label("Its access code").fill(b["access code"])
        page.get_by_role("button", name="Add this letter").click()
        page.wait_for_selector("li.study >> nth=1")
        studies = page.locator("li.study")
        assert studies.count() == 2
        first, second = studies.nth(0).inner_text(), studies.nth(1).inner_text()
        assert "Heart echo" in first and f"from {setup['clinic']}" in first  # newest first
        assert "Wrist X-ray" in second and "from default" in second
        assert "Not hers" not in page.content() and study_c not in page.content()
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        widths = page.evaluate("[...document.images].map(i => i.naturalWidth)")
        assert len(widths) == 2 and all(w > 0 for w in widths)  # each through its own letter's root

        req = context.request
        assert _uids(req.get(f"{server.http_url}/patient/dicom-web/studies")) == {study_a, study_b}
        for study in (study_a, study_b):
            assert req.get(f"{server.http_url}/patient/dicom-web/studies/{study}/metadata").status == 200
        assert req.get(f"{server.http_url}/patient/dicom-web/studies/{study_c}/metadata").status == 404
        assert _uids(req.get(f"{url_b}/dicom-web/studies")) == {study_b}  # each root: its letter
        assert _uids(req.get(f"{url_a}/dicom-web/studies")) == {study_a}
        assert req.get(f"{url_a}/dicom-web/studies/{study_b}/metadata").status == 404

        # one encrypted download of everything: with letter B's passcode, or a chosen one
        enc = req.post(f"{url_a}/record", form={"passcode": b["passcode"], "format": "gpg"})
        assert enc.status == 200
        path = tmp_path / "record.zip.gpg"
        path.write_bytes(enc.body())
        done = gpg_decrypt(path, b["passcode"], tmp_path / "gnupg")
        assert done.returncode == 0, done.stderr
        with zipfile.ZipFile(io.BytesIO(done.stdout)) as zf:
            files = {zf.read(n) for n in zf.namelist() if n.startswith("DICOM/")}
        assert files == setup["bytes"]["a"] | setup["bytes"]["b"]
        short = req.post(f"{url_a}/record", form={"passcode": "too short", "repeat": "too short",
                                                   "format": "gpg"})
        assert short.status == 403
        mine = "my own long passcode 2026"
        enc = req.post(f"{url_a}/record", form={"passcode": mine, "repeat": mine, "format": "gpg"})
        assert enc.status == 200
        path.write_bytes(enc.body())
        done = gpg_decrypt(path, mine, tmp_path / "gnupg2")
        assert done.returncode == 0, done.stderr

        # the access list names both letters by provider; the letter alone is unchanged
        page.goto(url_a)
        trail = page.inner_text("#accesses")
        assert f"from {setup['clinic']}" in trail and "from default" in trail and "exported" in trail
        assert _uids(alone.request.get(f"{server.http_url}/patient/dicom-web/studies")) == {study_a}

        # OHIF at the session's viewer shows provider B's study (the scope of the letter holding it)
        view = open_ohif_study(server.http_url, study_b, viewer_prefix="/patient/viewer",
                               context=context, timeout_s=90)
        assert view.nonblack > 0.01 and not view.external_requests
        assert [u for u in view.requests if "/patient/dicom-web/" in u and study_b in u]

        page.get_by_role("button", name="Sign out").click()
        assert req.get(f"{server.http_url}/patient/dicom-web/studies").status == 401
        assert req.get(f"{url_b}/dicom-web/studies").status == 401
        context.close()
        alone.close()
