"""``pacs import DIR``: a folder stored recursively, with a summary of what was refused and why."""

from __future__ import annotations

from storage.archive import Archive
from storage.config import load_settings
from storage.query import Query
from tests.conftest import pacs_command
from tests.dicomgen import make_study


def test_import_stores_a_folder_and_names_what_it_refused(tmp_path):
    folder = tmp_path / "in"
    good = make_study(folder / "nested" / "deeper", n_series=2, per_series=3, patient_id="IMP1")
    (folder / "readme.txt").write_text("not DICOM")
    (folder / "cut.dcm").write_bytes(good[0].read_bytes()[:300])
    for n in range(7):  # more of one reason than are listed by name
        (folder / "junk" / f"{n}.bin").parent.mkdir(exist_ok=True)
        (folder / "junk" / f"{n}.bin").write_bytes(b"\0" * 50)
    run = pacs_command(tmp_path / "data", "import", "-q", str(folder))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "stored 6, replaced 0, already there 0, refused 9"
    assert "  refused 8: not a readable DICOM Part 10 object (InvalidDicomError)" in lines
    assert f"    {folder / 'readme.txt'}" in lines or f"    {folder / 'junk' / '0.bin'}" in lines
    assert "    and 3 more" in lines  # 8 refused for that reason, 5 named
    assert any(str(folder / "cut.dcm") in line for line in lines)

    again = pacs_command(tmp_path / "data", "import", "-q", str(folder / "nested"))
    assert again.stdout.splitlines()[0] == "stored 0, replaced 0, already there 6, refused 0"

    archive = Archive(load_settings(env={"PACS_DATA_DIR": str(tmp_path / "data")}))
    try:
        [study] = archive.find(Query("STUDY", filters={"PatientID": "IMP1"},
                                     return_keys=["NumberOfStudyRelatedInstances"]))
        assert study["NumberOfStudyRelatedInstances"] == 6
    finally:
        archive.close()


def test_import_of_nothing_storable_fails(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("nothing here")
    run = pacs_command(tmp_path / "data", "import", "-q", str(tmp_path / "in"))
    assert run.returncode == 1
    assert run.stdout.splitlines()[0] == "stored 0, replaced 0, already there 0, refused 1"
