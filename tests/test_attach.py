"""``pacs attach`` and :func:`storage.ingest.attach`: bad input refused with a reason, nothing stored;
demographics of known patients, existing studies, and references from notes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from storage.archive import Archive
from storage.artifacts import InvalidArtifact
from storage.errors import BadInput, NotFound
from storage.ingest import attach
from storage.query import Query
from tests.conftest import PACS, Server
from tests.data_artifacts import make_jpeg, make_pdf


def studies_of(server: Server, pid: str) -> list[dict]:
    r = requests.get(f"{server.dicomweb_url}/studies", params={"PatientID": pid}, timeout=30)
    assert r.status_code == 200, r.text  # no match: 200 and [] (dicomweb/qido.py)
    return r.json()


BAD_FILES = {  # name -> (content, the reason's words)
    "empty.pdf": (b"", "empty"),
    "truncated.pdf": (make_pdf()[:700], "PDF"),
    "photo.pdf": (make_jpeg(), "says application/pdf but the content is image/jpeg"),
    "program.exe": (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(range(256)) * 4, "support"),
}


def test_bad_files_refused_nothing_stored(server: Server, tmp_path: Path) -> None:
    for name, (content, _) in BAD_FILES.items():
        (tmp_path / name).write_bytes(content)
    p = server.pacs("attach", *(str(tmp_path / n) for n in BAD_FILES), "--patient-id", "BAD1",
                    "--patient-name", "Bad^Bo", check=False)
    assert p.returncode != 0
    lines = {line.split(": ", 1)[0].rsplit("/", 1)[-1]: line for line in p.stdout.splitlines()}
    for name, (_, reason) in BAD_FILES.items():
        assert "refused" in lines[name] and reason.lower() in lines[name].lower(), lines[name]
    assert "stored 0, refused 4" in p.stdout
    assert studies_of(server, "BAD1") == []


def test_over_size_refused(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "big.pdf"
    path.write_bytes(make_pdf(pages=30))
    env = {**server.env, "PACS_MAX_UPLOAD_BYTES": "2000"}
    p = subprocess.run([PACS, "attach", str(path), "--patient-id", "BIG1", "--patient-name", "Big^Bo"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "limit" in p.stdout, p.stdout + p.stderr
    assert studies_of(server, "BIG1") == []


def test_unknown_patient_without_name_refused(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "letter.pdf"
    path.write_bytes(make_pdf())
    p = server.pacs("attach", str(path), "--patient-id", "NOBODY", check=False)
    assert p.returncode != 0 and "unknown patient" in p.stdout, p.stdout
    assert studies_of(server, "NOBODY") == []


def test_several_files_one_new_study_some_refused(server: Server, tmp_path: Path) -> None:
    (tmp_path / "a.pdf").write_bytes(make_pdf("A"))
    (tmp_path / "b.jpg").write_bytes(make_jpeg())
    (tmp_path / "c.pdf").write_bytes(b"not a pdf at all")
    p = server.pacs("attach", *(str(tmp_path / n) for n in ("a.pdf", "b.jpg", "c.pdf")),
                    "--patient-id", "MULTI1", "--patient-name", "Multi^Mo", "--new-study",
                    "--description", "Referral", check=False)
    assert p.returncode == 1
    assert p.stdout.count(": stored ") == 2 and "c.pdf: refused" in p.stdout
    [study] = studies_of(server, "MULTI1")
    assert study["00201208"]["Value"] == [2]  # NumberOfStudyRelatedInstances
    # a later call adds to that study; the known patient needs no name
    study_uid = study["0020000D"]["Value"][0]
    (tmp_path / "later.txt").write_text("Seen again, see a.pdf")
    p = server.pacs("attach", str(tmp_path / "later.txt"), "--patient-id", "MULTI1",
                    "--study", study_uid)
    assert f"in study {study_uid}" in p.stdout
    # the wrong name for a known patient is refused
    p = server.pacs("attach", str(tmp_path / "a.pdf"), "--patient-id", "MULTI1",
                    "--patient-name", "Other^Person", check=False)
    assert p.returncode != 0 and "does not match" in p.stdout


# -- storage.ingest on SQLite and PostgreSQL ---------------------------------------------------------

def test_ingest_known_patient_study_and_note_references(archive: Archive) -> None:
    pdf = attach(archive, make_pdf(), filename="letter.pdf", patient_id="ING1",
                 patient_name="Ing^Ida", birth_date="19800101", new_study_description="Letters",
                 actor="test", origin="test")
    photo = attach(archive, make_jpeg(), filename="photo.jpg", patient_id="ING1",
                   study_uid=pdf.study_uid, actor="test", origin="test")
    assert photo.study_uid == pdf.study_uid and photo.patient_ref == pdf.patient_ref
    note = attach(archive, f"Compare photo.jpg with {pdf.sop_instance_uid}.".encode(),
                  filename="note.txt", patient_id="ING1", study_uid=pdf.study_uid,
                  named_files={"photo.jpg": photo}, actor="test", origin="test")
    ds = archive.dataset(archive.instances(sop_uid=note.sop_instance_uid)[0])
    refs = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
            for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert refs == {pdf.sop_instance_uid, photo.sop_instance_uid}
    assert ds.PatientBirthDate == "19800101" and str(ds.PatientName) == "Ing^Ida"
    [row] = archive.find(Query("STUDY", filters={"PatientID": "ING1"},
                               return_keys=["StudyDescription", "NumberOfStudyRelatedInstances"]))
    assert row["StudyDescription"] == "Letters" and row["NumberOfStudyRelatedInstances"] == 3
    assert sorted(i.content_type for i in archive.instances(study_uid=pdf.study_uid)) == [
        "application/pdf", "image/jpeg", "text/plain"]


def test_ingest_refusals_store_nothing(archive: Archive) -> None:
    with pytest.raises(BadInput, match="unknown patient"):
        attach(archive, make_pdf(), filename="x.pdf", patient_id="ING2", actor="t", origin="t")
    with pytest.raises(InvalidArtifact):
        attach(archive, make_jpeg(), filename="x.pdf", patient_id="ING2", patient_name="A^B",
               actor="t", origin="t")
    with pytest.raises(NotFound):
        attach(archive, make_pdf(), filename="x.pdf", patient_id="ING2", patient_name="A^B",
               study_uid="1.2.3.4.5", actor="t", origin="t")
    assert list(archive.find(Query("PATIENT", filters={"PatientID": "ING2"}))) == []
