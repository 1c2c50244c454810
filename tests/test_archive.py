"""The archive core on SQLite and on PostgreSQL: ingest, matching, duplicates, deletion, crash safety."""

from __future__ import annotations

import io
import json

import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from storage.archive import Archive, Scope, StoreResult
from storage.errors import ArchiveError, BadInput, Conflict, Duplicate, NotFound, StudyMismatch
from storage.query import Query
from tests.dicomgen import make_image


def part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_store_is_byte_identical_and_indexed(archive: Archive):
    originals = [get_testdata_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm",
                                                "SC_rgb_rle.dcm", "rtplan.dcm")]
    for path in originals:
        result = archive.store(path)
        assert result.status == "stored"
        info = archive.instances(sop_uid=result.sop_instance_uid)[0]
        with open(path, "rb") as fh:
            assert archive.read_bytes(info) == fh.read()
        assert info.transfer_syntax == result.transfer_syntax
    assert len(list(archive.find(Query("IMAGE")))) == len(originals)


def test_counts_and_computed_attributes(archive: Archive):
    study = generate_uid()
    series = [generate_uid(), generate_uid()]
    for i in range(5):
        archive.store(part10(make_image(study_uid=study, series_uid=series[i % 2],
                                        modality="CT" if i % 2 == 0 else "MR", instance_number=i)))
    [row] = archive.find(Query("STUDY", filters={"StudyInstanceUID": study}, return_keys=[
        "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "SOPClassesInStudy"]))
    assert row["ModalitiesInStudy"] == "CT\\MR"
    assert row["NumberOfStudyRelatedSeries"] == 2
    assert row["NumberOfStudyRelatedInstances"] == 5
    assert set(row["SOPClassesInStudy"].split("\\")) == {"1.2.840.10008.5.1.4.1.1.2",
                                                          "1.2.840.10008.5.1.4.1.1.4"}
    counts = {r["SeriesInstanceUID"]: r["NumberOfSeriesRelatedInstances"] for r in archive.find(
        Query("SERIES", filters={"StudyInstanceUID": study},
              return_keys=["NumberOfSeriesRelatedInstances"]))}
    assert counts == {series[0]: 3, series[1]: 2}
    [patient] = archive.find(Query("PATIENT", filters={"PatientID": "PAT001"},
                                   return_keys=["NumberOfPatientRelatedInstances"]))
    assert patient["NumberOfPatientRelatedInstances"] == 5


@pytest.fixture
def populated(archive: Archive) -> Archive:
    rows = [("P1", "Doe^John", "20200105", "CT", "ACC1", "Chest CT"),
            ("P2", "Doe^Jane", "20201231", "MR", "ACC2", "Brain MR"),
            ("P3", "Smith^Anna", "20210301", "CT", "ACC3", "Abdomen"),
            ("P4", "Müller^Jürgen", "20190101", "US", "ACC4", "Schilddrüse")]
    for pid, name, date, mod, acc, desc in rows:
        archive.store(part10(make_image(patient_id=pid, patient_name=name, study_date=date,
                                        modality=mod if mod != "US" else "CT", accession=acc,
                                        study_description=desc, charset="ISO_IR 192")))
    return archive


def pids(archive: Archive, level: str = "STUDY", **filters) -> list[str]:
    return sorted(r["PatientID"] for r in archive.find(Query(level, filters=filters,
                                                             return_keys=["PatientID"])))


@pytest.mark.parametrize(("filters", "expected"), [
    ({"PatientName": "Doe*"}, ["P1", "P2"]),
    ({"PatientName": "doe^j?hn"}, ["P1"]),  # case-insensitive person names, ? wildcard
    ({"PatientName": "Müller*"}, ["P4"]),
    ({"PatientID": "P3"}, ["P3"]),  # exact match through the keyed hash
    ({"PatientID": "P*"}, ["P1", "P2", "P3", "P4"]),
    ({"AccessionNumber": "ACC2"}, ["P2"]),
    ({"StudyDate": "20200101-20201231"}, ["P1", "P2"]),
    ({"StudyDate": "20210101-"}, ["P3"]),
    ({"StudyDate": "-20191231"}, ["P4"]),
    ({"StudyDescription": "*CT*"}, ["P1"]),
    ({"StudyDescription": "schilddrüse"}, []),  # LO is case-sensitive
    ({"ModalitiesInStudy": "MR"}, ["P2"]),
    ({"PatientName": "", "StudyDate": ""}, ["P1", "P2", "P3", "P4"]),  # universal
])
def test_matching(populated: Archive, filters, expected):
    assert pids(populated, **filters) == expected


def test_uid_list_and_fuzzy(populated: Archive):
    studies = {r["PatientID"]: r["StudyInstanceUID"] for r in populated.find(
        Query("STUDY", return_keys=["PatientID"]))}
    got = pids(populated, StudyInstanceUID=f"{studies['P1']}\\{studies['P3']}")
    assert got == ["P1", "P3"]
    fuzzy = list(populated.find(Query("STUDY", filters={"PatientName": "jo"}, fuzzy=True,
                                      return_keys=["PatientID"])))
    assert [r["PatientID"] for r in fuzzy] == ["P1"]


def test_paging_is_exact_with_python_side_filters(populated: Archive):
    all_rows = pids(populated, PatientName="*")
    pages = []
    for offset in range(0, 5, 2):
        page = list(populated.find(Query("STUDY", filters={"PatientName": "*^*"}, limit=2,
                                         offset=offset, return_keys=["PatientID"])))
        pages += [r["PatientID"] for r in page]
    assert sorted(pages) == all_rows


def test_bad_range_is_bad_input(populated: Archive):
    with pytest.raises(BadInput):
        list(populated.find(Query("STUDY", filters={"StudyDate": "2020-01-01"})))


def test_scope_hides_other_patients(populated: Archive):
    ref = populated.find_patient("P1")
    other = next(populated.find(Query("STUDY", filters={"PatientID": "P2"})))
    assert pids(populated) == ["P1", "P2", "P3", "P4"]
    mine = list(populated.find(Query("STUDY", patient_scope=ref, return_keys=["PatientID"])))
    assert [r["PatientID"] for r in mine] == ["P1"]
    with pytest.raises(NotFound):
        populated.instances(other["StudyInstanceUID"], scope=Scope(ref))


def test_one_instance_by_uids_within_scope(populated: Archive):
    """Archive.instance (frame and bulk-data requests) answers as instances() does, scope included."""
    ref = populated.find_patient("P1")
    [info] = populated.instances(sop_uid=populated.instances()[0].sop_uid)
    mine = next(i for i in populated.instances() if i.patient_ref == ref)
    other = next(i for i in populated.instances() if i.patient_ref != ref)
    assert populated.instance(info.study_uid, info.series_uid, info.sop_uid) == info
    assert populated.instance(mine.study_uid, mine.series_uid, mine.sop_uid, scope=Scope(ref)) == mine
    assert populated.instance(mine.study_uid, mine.series_uid, mine.sop_uid,
                              scope=Scope(ref, frozenset({mine.study_uid}))) == mine
    refused = [(other, Scope(ref)), (mine, Scope(ref, frozenset({"1.2.3"}))), (mine, Scope(ref + 999))]
    for inst, scope in refused:
        with pytest.raises(NotFound):
            populated.instance(inst.study_uid, inst.series_uid, inst.sop_uid, scope=scope)
    with pytest.raises(NotFound):  # UIDs that exist, but not together
        populated.instance(mine.study_uid, other.series_uid, mine.sop_uid)


def test_duplicate_policies(archive: Archive):
    ds = make_image(patient_id="DUP")
    first = archive.store(part10(ds))
    assert first.status == "stored"
    ds.StudyDescription = "changed"
    assert archive.store(part10(ds)).status == "duplicate"  # keep: first copy wins
    info = archive.instances(sop_uid=first.sop_instance_uid)[0]
    assert b"changed" not in archive.read_bytes(info)
    archive.settings.duplicate_policy = "replace"
    assert archive.store(part10(ds)).status == "replaced"
    info = archive.instances(sop_uid=first.sop_instance_uid)[0]
    assert b"changed" in archive.read_bytes(info)
    assert len(archive.instances(sop_uid=first.sop_instance_uid)) == 1
    archive.settings.duplicate_policy = "reject"
    with pytest.raises(Duplicate):
        archive.store(part10(ds))


@pytest.mark.parametrize("mutate", [
    lambda ds: delattr(ds, "SOPInstanceUID"),
    lambda ds: delattr(ds, "StudyInstanceUID"),
    lambda ds: setattr(ds, "SeriesInstanceUID", "1." * 40),
])
def test_bad_objects_are_refused_and_nothing_is_left(archive: Archive, mutate):
    ds = make_image()
    mutate(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    with pytest.raises(BadInput):
        archive.store(buf.getvalue())
    assert archive.blob_keys() == set()
    assert list(archive.find(Query("IMAGE"))) == []


def test_garbage_and_truncated_input(archive: Archive):
    for data in (b"", b"not dicom at all" * 10, part10(make_image())[:200]):
        with pytest.raises(BadInput):
            archive.store(data)
    assert archive.blob_keys() == set()


def test_study_under_another_patient_is_a_conflict(archive: Archive):
    study = generate_uid()
    archive.store(part10(make_image(patient_id="A", study_uid=study)))
    with pytest.raises(Conflict):
        archive.store(part10(make_image(patient_id="B", study_uid=study)))
    assert len(archive.blob_keys()) == 1


def test_delete_fixes_counts_and_removes_blobs(archive: Archive):
    study, series = generate_uid(), generate_uid()
    results = [archive.store(part10(make_image(study_uid=study, series_uid=series, instance_number=i)))
               for i in range(3)]
    assert archive.delete(study, series, results[0].sop_instance_uid) == 1
    [row] = archive.find(Query("STUDY", filters={"StudyInstanceUID": study},
                               return_keys=["NumberOfStudyRelatedInstances"]))
    assert row["NumberOfStudyRelatedInstances"] == 2
    assert archive.delete(study) == 2
    assert list(archive.find(Query("STUDY"))) == []
    assert archive.blob_keys() == set()


def test_failed_index_write_leaves_no_blob(archive: Archive, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during the index transaction")

    monkeypatch.setattr(archive, "_index", boom)
    with pytest.raises(ArchiveError, match="index could not be written"):
        archive.store(part10(make_image()))
    assert archive.blob_keys() == set()


def test_orphan_blobs_are_swept(archive: Archive):
    kept = archive.store(part10(make_image()))
    key = archive.blobs.new_key()
    fh = archive.blobs.create(key)
    fh.write(b"left by a crash between blob write and index commit")
    archive.blobs.commit(fh)
    assert archive.sweep_orphans(grace_seconds=-1) == 1
    assert key not in set(archive.blobs.keys())
    info = archive.instances(sop_uid=kept.sop_instance_uid)[0]
    assert archive.read_bytes(info)


def test_frames_read_back(archive: Archive):
    ds = make_image(frames=3, rows=32, columns=32)
    result = archive.store(part10(ds))
    info = archive.instances(sop_uid=result.sop_instance_uid)[0]
    frame_len = 32 * 32 * 2
    for n in (1, 2, 3):
        assert archive.read_frame(info, n) == ds.PixelData[(n - 1) * frame_len: n * frame_len]
    # the index computed on first use is kept in the database, off the request path
    import time

    from storage.index.models import Instance

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with archive.engine.connect() as c:
            kept = c.execute(select(Instance.frame_index).where(Instance.id == info.id)).scalar()
        if kept:
            break
        time.sleep(0.1)
    assert kept and b'"number_of_frames": 3' in kept
    other = Archive(archive.settings)  # another process reads it from there
    try:
        assert other.read_frame(info, 2) == ds.PixelData[frame_len: 2 * frame_len]
    finally:
        other.close()


def test_unencrypted_bench_mode_and_concurrent_stores(tmp_path, db_url):
    """Encryption off (benchmarks only) must not fetch keys under the write lock (it hung once)."""
    import threading

    from storage.config import load_settings

    archive = Archive(load_settings(env={}, data_dir=tmp_path / "noenc", database_url=db_url,
                                    encrypt=False), create_key=True)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            study = generate_uid()
            for i in range(5):
                archive.store(part10(make_image(patient_id=f"T{n}", study_uid=study, instance_number=i)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not any(t.is_alive() for t in threads)  # none hung
        assert errors == []
        assert len(list(archive.find(Query("IMAGE")))) == 20
        info = archive.instances(sop_uid=next(archive.find(Query("IMAGE")))["SOPInstanceUID"])[0]
        assert b"DICM" in archive.read_bytes(info)[:200]
    finally:
        archive.close()


def test_refused_objects_are_named_and_study_checked(archive: Archive):
    """store_many refuses an object of another study than asked, and names what it refuses."""
    study = generate_uid()
    inside, outside = make_image(study_uid=study), make_image(study_uid=generate_uid())
    nameless = make_image(study_uid=study)
    nameless.SOPInstanceUID = ""
    ok, mismatch, bad = archive.store_many([part10(inside), part10(outside), part10(nameless)],
                                           study_uid=study)
    assert isinstance(ok, StoreResult) and ok.study_uid == study
    assert isinstance(mismatch, StudyMismatch)
    assert (mismatch.sop_class_uid, mismatch.sop_instance_uid) == (outside.SOPClassUID,
                                                                   outside.SOPInstanceUID)
    assert isinstance(bad, BadInput) and bad.sop_class_uid == nameless.SOPClassUID
    assert bad.sop_instance_uid == ""
    archive.settings.duplicate_policy = "reject"
    [dup] = archive.store_many([part10(inside)])
    assert isinstance(dup, Duplicate) and dup.sop_instance_uid == inside.SOPInstanceUID
    assert len(archive.instances(study)) == 1


def test_two_archives_create_the_same_study_at_once(archive: Archive):
    """Two processes' archives (here: two Archive objects) racing to create one study and series:
    on PostgreSQL one insert hits the unique index (the driver's IntegrityError), and is retried."""
    import threading

    other = Archive(archive.settings)
    study, series = generate_uid(), generate_uid()
    errors: list[BaseException] = []

    def work(a: Archive, n: int) -> None:
        try:
            for i in range(5):
                a.store(part10(make_image(study_uid=study, series_uid=series, instance_number=n * 10 + i)))
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(a, n))
                   for n, a in enumerate([archive, other] * 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        other.close()
    assert errors == []
    [row] = archive.find(Query("STUDY", filters={"StudyInstanceUID": study},
                               return_keys=["NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries"]))
    assert (row["NumberOfStudyRelatedInstances"], row["NumberOfStudyRelatedSeries"]) == (30, 1)


def test_native_frame_index_is_known_at_ingest(archive: Archive):
    """Uncompressed pixel data: the header reader stops at it, so its frame index is stored with the
    instance and the first frame request reads no header (it equals what index_frames computes)."""
    from storage.frames import FrameIndex, index_frames
    from storage.index.models import Instance

    ds = make_image(frames=4, rows=16, columns=16)
    data = part10(ds)
    result = archive.store(data)
    info = archive.instances(sop_uid=result.sop_instance_uid)[0]
    with archive.engine.connect() as c:
        kept = c.execute(select(Instance.frame_index).where(Instance.id == info.id)).scalar()
    assert kept is not None
    assert FrameIndex.from_dict(json.loads(kept)) == index_frames(io.BytesIO(data))
    assert archive.read_frame(info, 4) == ds.PixelData[3 * 512:]


def test_every_sqlite_write_transaction_waits_on_the_write_lock(archive: Archive):
    """Audit events, keys, letters, caches: every write transaction holds the flock beside the
    database, so a writer in another process waits on it (woken at release) instead of sleeping in
    SQLite's busy handler. The lock is re-entrant in its thread."""
    import fcntl
    import os

    if archive.engine.dialect.name != "sqlite":
        pytest.skip("the write lock is for the SQLite index")
    fd = os.open(str(archive.engine.url.database) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with archive.write_sessions.begin():
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with archive._write_lock:  # e.g. the ingest path inside: no self-deadlock
                pass
            with pytest.raises(BlockingIOError):  # still held by the outer transaction
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the transaction
        fcntl.flock(fd, fcntl.LOCK_UN)
        archive.audit.record("login", actor="test", outcome="success")
        archive.store(part10(make_image(patient_id="LOCKED")))  # a new patient: its own transaction
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nothing left held
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
