"""Issue 21 end to end: dictations, phone videos, photos and scans in through all three doors
(``pacs attach``, STOW-RS JSON with bulk data, ``/upload``) of a real ``pacs serve``; found by
QIDO-RS and C-FIND (dcmtk findscu); the original back byte-identical through WADO-RS and the
patient export; bad and mislabelled files refused with a reason and nothing stored; ``--about``
shown beside its study on the patient page (headless Chromium)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
import zipfile
from functools import cache
from pathlib import Path

import pytest
import requests

from dicomweb.multipart import Part, encode
from tests import data_artifacts as samples
from tests.conftest import Server, require
from tests.test_letters import parse_letter

DICOM_JSON = "application/dicom+json"

# kind -> (file name, media type, maker, WADO-RS suffix, objects made)
KINDS = {
    "mp3": ("dictation.mp3", "audio/mpeg", lambda: samples.make_mp3(seconds=0.4), "rendered", 1),
    "m4a": ("memo.m4a", "audio/mp4", lambda: samples.make_m4a(seconds=0.4), "rendered", 1),
    "ogg": ("voice.ogg", "audio/ogg", lambda: samples.make_ogg_opus(seconds=0.4), "rendered", 1),
    "aac": ("memo.aac", "audio/aac", lambda: samples.make_aac(seconds=0.4), "rendered", 1),
    "hevc-mov": ("IMG_0001.MOV", "video/quicktime", lambda: samples.make_video(".mov", audio=True),
                 "bulkdata/7FE00010", 1),
    "hevc-mp4": ("clip.mp4", "video/mp4", lambda: samples.make_video(".mp4"), "bulkdata/7FE00010", 1),
    "mpeg4": ("old.mp4", "video/mp4", lambda: samples.make_video(".mp4", codec="mpeg4"),
              "bulkdata/7FE00010", 1),
    "heic": ("IMG_0002.HEIC", "image/heic", lambda: samples.make_heic(), "bulkdata/7FE00010", 1),
    "rotated-jpeg": ("phone.jpg", "image/jpeg", lambda: samples.make_rotated_jpeg(),
                     "bulkdata/7FE00010", 1),
    "tiff-scan": ("scan.tif", "image/tiff", lambda: samples.make_multipage("TIFF"),
                  "bulkdata/7FE00010", 3),
    "gif": ("anim.gif", "image/gif", lambda: samples.make_multipage("GIF"), "bulkdata/7FE00010", 3),
}
DOORS = ["attach", "stow", "upload"]
_STORED = re.compile(r": stored (\S+) in study (\S+)")


@cache
def sample(kind: str) -> bytes:
    return KINDS[kind][2]()


def unique_pid(tag: str) -> str:
    return f"D21-{tag}-{uuid.uuid4().hex[:6]}"


def via_attach(server: Server, tmp_path: Path, pid: str, name: str, data: bytes,
               *extra: str) -> tuple[str, str]:
    path = tmp_path / name
    path.write_bytes(data)
    p = server.pacs("attach", str(path), "--patient-id", pid, "--patient-name", "Door^Dora",
                    *extra, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    m = _STORED.search(p.stdout)
    assert m, p.stdout
    return m.group(2), m.group(1)


def via_stow(server: Server, pid: str, name: str, media: str, data: bytes,
             about: str | None = None) -> tuple[str, str]:
    item = {"00100020": {"vr": "LO", "Value": [pid]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Door^Dora"}]},
            "7FE00010": {"vr": "OB", "BulkDataURI": "http://client/bulk/1"}}
    if about:
        item["00081110"] = {"vr": "SQ", "Value": [{
            "00081150": {"vr": "UI", "Value": ["1.2.840.10008.3.1.2.3.1"]},
            "00081155": {"vr": "UI", "Value": [about]}}]}
    r = stow(server, [Part.make(json.dumps([item]).encode(), DICOM_JSON),
                      Part.make(data, media, "http://client/bulk/1")])
    assert r.status_code == 200, r.text
    refs = r.json()["00081199"]["Value"]
    first = refs[0]["00081190"]["Value"][0]
    study = first.split("/studies/")[1].split("/")[0]
    return study, refs[0]["00081155"]["Value"][0]


def stow(server: Server, parts: list[Part]) -> requests.Response:
    ctype, body = encode(parts, media_type=DICOM_JSON)
    return requests.post(f"{server.dicomweb_url}/studies", data=b"".join(body), timeout=120,
                         headers={"Content-Type": ctype, "Accept": DICOM_JSON})


def via_upload(server: Server, pid: str, name: str, media: str, data: bytes,
               about: str | None = None) -> requests.Response:
    form = {"patient_id": pid, "patient_name": "Door^Dora"}
    if about:
        form["about"] = about
    return requests.post(server.http_url + "/upload/files", files={"file": (name, data, media)},
                         data=form, timeout=120, headers={"X-PACS-Upload": "1"})


def store(server: Server, tmp_path: Path, door: str, pid: str, kind: str) -> tuple[str, str]:
    name, media, _make, _suffix, _n = KINDS[kind]
    data = sample(kind)
    if door == "attach":
        return via_attach(server, tmp_path, pid, name, data)
    if door == "stow":
        return via_stow(server, pid, name, media, data)
    r = via_upload(server, pid, name, media, data)
    assert r.status_code == 200, r.text
    return r.json()["study_uid"], r.json()["sop_instance_uid"]


def qido_instances(server: Server, study: str) -> list[dict]:
    r = requests.get(f"{server.dicomweb_url}/studies/{study}/instances", timeout=30,
                     headers={"Accept": DICOM_JSON})
    return r.json() if r.status_code == 200 else []


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_in_through_each_door_and_back(server: Server, tmp_path: Path, kind: str,
                                       door: str) -> None:
    name, media, _make, suffix, count = KINDS[kind]
    data = sample(kind)
    pid = unique_pid(kind)
    study, sop = store(server, tmp_path, door, pid, kind)

    # QIDO-RS: the patient's study, with every page of a scan
    r = requests.get(f"{server.dicomweb_url}/studies", params={"PatientID": pid}, timeout=30)
    assert [s["0020000D"]["Value"][0] for s in r.json()] == [study]
    instances = qido_instances(server, study)
    assert len(instances) == count
    first = next(i for i in instances if i["00080018"]["Value"] == [sop])
    series = first["0020000E"]["Value"][0]

    # WADO-RS: the original, byte for byte, with its media type
    url = f"{server.dicomweb_url}/studies/{study}/series/{series}/instances/{sop}/{suffix}"
    r = requests.get(url, headers={"Accept": media}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.headers["Content-Type"] == media and r.content == data

    # C-FIND (dcmtk findscu), image level
    p = subprocess.run([require("findscu"), "-S", "-aec", server.ae_title,
                        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                        "-k", f"SeriesInstanceUID={series}", "-k", "SOPInstanceUID",
                        "127.0.0.1", str(server.dicom_port)], capture_output=True, timeout=60)
    found = (p.stdout + p.stderr).decode("latin-1")
    assert p.returncode == 0 and sop in found


def test_original_in_the_patient_export(server: Server, tmp_path: Path) -> None:
    """``pacs export``: the zip holds each original as it came (MP3, MOV, HEIC, TIFF)."""
    pid = unique_pid("export")
    for kind in ("mp3", "hevc-mov", "heic", "tiff-scan"):
        name, *_ = KINDS[kind]
        via_attach(server, tmp_path, pid, name, sample(kind))
    out = tmp_path / "record.zip"
    server.pacs("export", "--patient-id", pid, "--format", "zip", "--out", str(out))
    with zipfile.ZipFile(out) as zf:
        contents = {zf.read(n) for n in zf.namelist() if not n.endswith("/")}
    for kind in ("mp3", "hevc-mov", "heic", "tiff-scan"):
        assert sample(kind) in contents, kind


BAD = [
    # (file name, declared type, bytes, what the refusal says)
    ("dictation.mp3", "audio/mpeg", samples.make_png(), "audio/mpeg"),
    ("dictation.wav", "audio/wav", b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(300), "audio/wav"),
    ("clip.mov", "video/quicktime", samples.make_pdf(), "video/quicktime"),
    ("photo.heic", "image/heic", b"\x00\x00\x00\x18ftypheic" + bytes(40), "heic"),
    ("scan.tif", "image/tiff", b"II*\x00" + bytes(20), "image"),
]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("bad", range(len(BAD)))
def test_bad_and_mislabelled_refused_nothing_stored(server: Server, tmp_path: Path, door: str,
                                                    bad: int) -> None:
    name, media, data, says = BAD[bad]
    pid = unique_pid("bad")
    if door == "attach":
        (tmp_path / name).write_bytes(data)
        p = server.pacs("attach", str(tmp_path / name), "--patient-id", pid, "--patient-name",
                        "Bad^Bea", check=False)
        assert p.returncode == 1 and "refused" in p.stdout and says in p.stdout, p.stdout
    elif door == "stow":
        item = {"00100020": {"vr": "LO", "Value": [pid]},
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Bad^Bea"}]},
                "7FE00010": {"vr": "OB", "BulkDataURI": "http://client/bulk/1"}}
        r = stow(server, [Part.make(json.dumps([item]).encode(), DICOM_JSON),
                          Part.make(data, media, "http://client/bulk/1")])
        assert r.status_code == 409, r.text
        assert says in json.dumps(r.json())
    else:
        r = via_upload(server, pid, name, media, data)
        assert r.status_code in (400, 415), r.text
        assert says in r.json()["error"]
    r = requests.get(f"{server.dicomweb_url}/studies", params={"PatientID": pid}, timeout=30)
    assert r.status_code in (200, 204) and (r.status_code == 204 or r.json() == [])


def test_about_a_study_through_each_door_and_on_the_patient_page(server: Server,
                                                                 tmp_path: Path) -> None:
    from tests.browser import browser_unavailable, chromium

    pid = unique_pid("about")
    lab_text = f"Blood chemistry {uuid.uuid4().hex[:6]}\n".encode()
    lab, _ = via_attach(server, tmp_path, pid, "lab.txt", lab_text, "--description", "Lab 2/14")
    note = f"Blood chemistry of 2/14 indicates normal values ({uuid.uuid4().hex[:6]}).\n"
    _, note_sop = via_attach(server, tmp_path, pid, "note.txt", note.encode(), "--about", lab,
                             "--new-study")
    _, stow_sop = via_stow(server, pid, "d.mp3", "audio/mpeg", sample("mp3"), about=lab)
    r = via_upload(server, pid, "p.heic", "image/heic", sample("heic"), about=lab)
    assert r.status_code == 200, r.text
    upload_sop = r.json()["sop_instance_uid"]
    archive = server.archive()
    try:
        for sop in (note_sop, stow_sop, upload_sop):
            info = archive.instances(sop_uid=sop)[0]
            assert info.study_uid != lab
            ds = archive.header(info)
            assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == lab
    finally:
        archive.close()

    # A study of another patient cannot be named: refused, nothing stored.
    other = unique_pid("other")
    p = server.pacs("attach", str(tmp_path / "note.txt"), "--patient-id", other,
                    "--patient-name", "Other^Olga", "--about", lab, check=False)
    assert p.returncode == 1 and "not one of this patient's studies" in p.stdout
    r = via_upload(server, other, "d.mp3", "audio/mpeg", sample("mp3"), about=lab)
    assert r.status_code == 404, r.text

    reason = browser_unavailable()
    if reason:
        pytest.fail(reason)
    letter = parse_letter(server.pacs("letter", "issue", "--patient-id", pid).stdout)
    with chromium() as browser:
        page = browser.new_context(java_script_enabled=False).new_page()
        page.goto(f"{server.http_url}/letters/{letter['selector']}")
        page.get_by_label("Access code from your letter").fill(letter["access code"])
        page.get_by_role("button", name="Open").click()
        page.wait_for_selector("li.study")
        lab_item = page.locator("li.study", has_text="Lab 2/14")
        assert lab_item.count() == 1
        notes = lab_item.locator("li.note")
        assert notes.count() == 3
        text = lab_item.inner_text()
        assert note.strip() in text and "Dictation" in text and "Photo" in text
        link = notes.first.locator("a").get_attribute("href")
        assert page.context.request.get(server.http_url + link).status == 200


@pytest.mark.parametrize(("kind", "prefer"), [("hevc-mov", ["+x4"]), ("hevc-mp4", ["+x4"]),
                                              ("mpeg4", ["+xn"]), ("mp3", []), ("heic", []),
                                              ("tiff-scan", [])])
def test_cget_original(server: Server, tmp_path: Path, kind: str, prefer: list[str]) -> None:
    """C-GET (dcmtk getscu, proposing the stored syntax first): the object, and the original out
    of it byte for byte."""
    import pydicom

    from storage.artifacts import extract_original

    name, *_ = KINDS[kind]
    pid = unique_pid("cget")
    study, sop = via_attach(server, tmp_path, pid, name, sample(kind))
    out = tmp_path / "got"
    out.mkdir()
    p = subprocess.run([require("getscu"), "-S", "-aec", server.ae_title, *prefer,
                        "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                        "-k", f"SOPInstanceUID={sop}", "-od", str(out), "127.0.0.1",
                        str(server.dicom_port)], capture_output=True, timeout=120)
    files = list(out.iterdir())
    assert len(files) == 1, (p.returncode, p.stderr.decode("latin-1")[-2000:])
    assert extract_original(pydicom.dcmread(files[0])).data == sample(kind)
