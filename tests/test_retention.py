"""Retention and crypto-shredding (issues 6 and 13).

After shredding, a copy of the patient's blobs taken before cannot be decrypted by any key the system
still holds; their letters stop working; others are untouched. The clock counts from the later of
the latest study date and the last receipt, so a legacy study received today is kept the whole
period from today; no run shreds more than ``retention_max_per_run`` unless a person confirms.
"""

from __future__ import annotations

import dataclasses
import io
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from storage.crypto import DecryptingReader
from storage.errors import NotFound
from storage.index.models import Patient, PatientKey, SystemKey
from storage.keys import WrappedKey
from storage.letters import AccessDenied, LetterInvalid, LetterRefused, Letters
from storage.query import Query
from storage.retention import (
    NoLongerDue,
    OverLimit,
    apply,
    count_due,
    due,
    max_per_run,
    shred,
    today_utc,
)
from tests.conftest import raw_blob
from tests.dicomgen import make_study


def _all_keys(archive) -> list[bytes]:
    """Every data and system key the archive can still unwrap."""
    ring = archive.vault.ring
    keys = []
    with archive.sessions() as s:
        for row in s.scalars(select(PatientKey)).all():
            if row.wrapped:
                keys.append(ring.unwrap(row.key_id, WrappedKey(row.kek_version, row.wrapped)))
        for row in s.scalars(select(SystemKey)).all():
            keys.append(ring.unwrap(row.name, WrappedKey(row.kek_version, row.wrapped)))
    return keys


def _opens(path: Path, key: bytes, blob_key: str) -> bool:
    try:
        with DecryptingReader(io.BytesIO(path.read_bytes()), key, blob_key) as r:
            return r.read(132)[128:132] == b"DICM"
    except Exception:  # any failure to decrypt is what we want
        return False


def _years_after(d: date, years: int) -> date:
    try:
        return d.replace(year=d.year + years)
    except ValueError:  # 29 February
        return d.replace(year=d.year + years, day=28)


def _store(archive, folder: Path, patient_id: str, study_date: str, n: int = 1) -> int:
    return [archive.store(p) for p in make_study(folder, n_series=1, per_series=n,
                                                  patient_id=patient_id, study_date=study_date)][0].patient_ref


def _received_on(archive, ref: int, day: date) -> None:
    """Test setup: pretend everything of this patient arrived on ``day`` (a record kept for years)."""
    with archive.write_sessions.begin() as s:
        s.execute(update(Patient).where(Patient.id == ref)
                  .values(last_received_at=datetime(day.year, day.month, day.day, 12)))


def test_a_legacy_study_received_today_is_kept_the_whole_period_from_today(archive, tmp_path):
    """The bug: StudyDate 2010 pushed today was shredded a minute later."""
    ref = _store(archive, tmp_path / "legacy", "RET-LEGACY", "20100215", n=2)
    today = today_utc()
    end = _years_after(today, 7)  # retention_years = 7 (the default)
    assert due(archive, today) == [] and apply(archive, today=today) == []
    assert due(archive, end) == []  # the last day of the period: still kept
    [d] = due(archive, end + timedelta(days=1))
    assert (d.patient_ref, d.last_study_date, d.last_received, d.due_since, d.instances) == \
        (ref, "20100215", today, end + timedelta(days=1), 2)
    assert Letters(archive).default_expiry(ref) == datetime(end.year, end.month, end.day) + timedelta(days=1)
    assert len(list(archive.find(Query("PATIENT", filters={"PatientID": "RET-LEGACY"})))) == 1


def test_the_later_of_study_date_and_receipt_counts(archive, tmp_path):
    today = today_utc()
    old = _store(archive, tmp_path / "a", "RET-OLD", "20100105")
    _received_on(archive, old, date(2010, 1, 6))  # both long ago: due
    future = _store(archive, tmp_path / "b", "RET-FUTURE", "20990101")  # a modality's clock is wrong
    _received_on(archive, future, date(2010, 1, 6))  # kept: its study date is later
    resent = _store(archive, tmp_path / "c", "RET-RESENT", "20100105")
    _received_on(archive, resent, date(2010, 1, 6))
    _store(archive, tmp_path / "d", "RET-RESENT", "20100105")  # a new object today restarts the clock
    bad = _store(archive, tmp_path / "e", "RET-BADDATE", "2010")  # not a date: receipt only
    _received_on(archive, bad, date(2010, 1, 6))
    assert [d.patient_ref for d in due(archive, today)] == [old, bad]
    [o, b] = due(archive, today)
    assert (o.last_study_date, o.last_received, o.due_since) == ("20100105", date(2010, 1, 6), date(2017, 1, 7))
    assert b.last_study_date == ""
    with archive.sessions() as s:
        p = s.get(Patient, resent)
        assert p.last_study_date == "20100105" and p.last_received_at.date() == today


def test_study_date_clock_counts_from_the_study_date_only(settings, tmp_path):
    from storage.archive import Archive

    a = Archive(dataclasses.replace(settings, retention_clock="study_date"), create_key=True)
    try:
        ref = _store(a, tmp_path / "a", "RET-SD", "20100105")
        nodate = _store(a, tmp_path / "b", "RET-SD-NODATE", "")  # no study date: receipt (today)
        today = today_utc()
        assert [d.patient_ref for d in due(a, today)] == [ref]
        assert [d.due_since for d in due(a, today)] == [date(2017, 1, 6)]
        with pytest.raises(LetterRefused, match="past retention since 2017-01-06"):
            Letters(a).issue(ref)
        assert Letters(a).issue(nodate).expires_at is not None
        assert [d.patient_ref for d in apply(a, today=today)] == [ref]
    finally:
        a.close()


def test_fractional_and_worded_periods(settings, tmp_path):
    from storage.archive import Archive

    a = Archive(dataclasses.replace(settings, retention_years="18 months"), create_key=True)
    try:
        ref = _store(a, tmp_path / "a", "RET-18M", "20240110")
        _received_on(a, ref, date(2024, 1, 10))
        assert due(a, date(2025, 7, 10)) == []
        assert [d.due_since for d in due(a, date(2025, 7, 11))] == [date(2025, 7, 11)]
    finally:
        a.close()


def test_a_run_over_the_limit_shreds_nothing_and_raises_an_alarm(settings, tmp_path):
    from storage.archive import Archive

    a = Archive(dataclasses.replace(settings, retention_max_per_run="1%"), create_key=True)
    try:
        refs = []
        for i in range(12):
            ref = _store(a, tmp_path / f"p{i}", f"RET-LIMIT-{i}", "20100105")
            _received_on(a, ref, date(2010, 1, 6))
            refs.append(ref)
        assert max_per_run(a) == (10, 12)  # 1 % of 12 is 0: at least 10
        with pytest.raises(OverLimit, match="12 patient.s. are past retention.*allows 10 of 12"):
            apply(a, actor="retention schedule")
        assert count_due(a) == 12  # nothing shredded
        [alarm] = a.audit.events(action="alarm")
        assert alarm.outcome == "alarm" and "retention run refused: 12 patient(s) due" in alarm.detail
        assert alarm.actor == "retention schedule"
        assert list(a.audit.events(action="shred")) == []
        # a person confirmed the 12
        assert sorted(d.patient_ref for d in apply(a, limit=12, actor="pacs retention --confirm")) == refs
        assert count_due(a) == 0 and len(list(a.audit.events(action="shred"))) == 12
    finally:
        a.close()


def test_a_patient_who_received_something_during_the_run_is_kept(archive, tmp_path):
    ref = _store(archive, tmp_path / "a", "RET-RACE", "20100105")
    _received_on(archive, ref, date(2010, 1, 6))
    today = today_utc()
    assert [d.patient_ref for d in due(archive, today)] == [ref]  # listed by the run ...
    _store(archive, tmp_path / "b", "RET-RACE", "20100105")  # ... then a prior arrives
    with pytest.raises(NoLongerDue):
        shred(archive, ref, actor="retention", origin="", reason="retention", today=today)
    assert archive.patient_values(ref)["PatientID"] == "RET-RACE"


def test_letters_that_would_be_expired_are_refused(archive, tmp_path):
    ref = _store(archive, tmp_path / "a", "RET-LETTER", "20100105")
    letters = Letters(archive)
    with pytest.raises(LetterRefused, match="expiry date 2020-01-01 is already past"):
        letters.issue(ref, expires_at=datetime(2020, 1, 1))
    short = letters.issue(ref, expires_at=datetime.now() + timedelta(days=400))
    assert letters.reissue(short.letter_id).expires_at == short.expires_at
    _received_on(archive, ref, date(2010, 1, 6))
    with pytest.raises(LetterRefused, match="past retention since 2017-01-07"):
        letters.issue(ref)
    with pytest.raises(LetterRefused, match="past retention"):
        letters.reissue(letters.list(ref)[-1].id)
    assert letters.list(ref)[-1].state == "active"  # a refused reissue revokes nothing


def test_retention_shreds_old_patients_only(archive, tmp_path: Path) -> None:
    old_ref = _store(archive, tmp_path / "old", "RET-OLD", "20100105", n=2)
    new_ref = _store(archive, tmp_path / "new", "RET-NEW", "20250105")
    _received_on(archive, old_ref, date(2010, 1, 6))
    _received_on(archive, new_ref, date(2025, 1, 6))
    letters = Letters(archive)
    letter = letters.issue(new_ref)
    with pytest.raises(LetterRefused):
        letters.issue(old_ref)
    with archive.write_sessions.begin() as s:  # a letter from the time the record was live
        s.execute(update(Patient).where(Patient.id == old_ref).values(last_received_at=datetime.now()))
    old_letter = letters.issue(old_ref, expires_at=datetime(2100, 1, 1))
    _received_on(archive, old_ref, date(2010, 1, 6))
    assert letters.authenticate(old_letter.selector, old_letter.access_code, "192.0.2.9")
    [study_uid] = {r["StudyInstanceUID"] for r in archive.find(Query("STUDY", filters={"PatientID": "RET-OLD"}))}
    infos = archive.instances(study_uid=study_uid)
    copies = tmp_path / "copies"
    copies.mkdir()
    for info in infos:  # the attacker's (or the backup's) copy, taken before shredding
        (copies / info.blob_key).write_bytes(raw_blob(archive, info.blob_key))
        assert _opens(copies / info.blob_key, archive.vault.dek(info.key_id), info.blob_key)

    today = date(2026, 11, 25)
    assert [d.patient_ref for d in apply(archive, dry_run=True, today=today)] == [old_ref]
    assert archive.instances(study_uid=study_uid)  # dry run changed nothing
    assert [d.patient_ref for d in apply(archive, today=today)] == [old_ref]

    keys = _all_keys(archive)
    assert keys
    for info in infos:
        assert info.blob_key not in archive.blob_keys()
        for key in keys:
            assert not _opens(copies / info.blob_key, key, info.blob_key)
    with pytest.raises(NotFound):
        archive.vault.dek(infos[0].key_id)
    with pytest.raises(NotFound):
        archive.instances(study_uid=study_uid)
    with pytest.raises(AccessDenied):
        Letters(archive).authenticate(old_letter.selector, old_letter.access_code, "192.0.2.9")
    assert letters.authenticate(letter.selector, letter.access_code, "192.0.2.9")  # the other stays
    assert archive.patient_values(new_ref)["PatientName"] == "Doe^Jane"
    assert due(archive, today) == []
    shredded = list(archive.audit.events(patient_ref=old_ref, action="shred"))
    assert len(shredded) == 1 and "retention" in shredded[0].detail
    [run] = [e for e in archive.audit.events(action="retention") if e.outcome == "success"]
    assert run.detail == "1 due, limit 10, 1 shredded"


def test_shred_on_request_ends_sessions(archive, tmp_path: Path) -> None:
    ref = archive.store(make_study(tmp_path, n_series=1, per_series=1, patient_id="RET-REQ")[0]).patient_ref
    letters = Letters(archive)
    letter = letters.issue(ref)
    grant = letters.authenticate(letter.selector, letter.access_code, "192.0.2.10")
    token = letters.open_session(grant)
    assert letters.session(letter.selector, token) is not None
    assert shred(archive, ref, actor="test", origin="", reason="request") == 1
    assert letters.session(letter.selector, token) is None
    [gone] = letters.list(ref)
    assert gone.state == "revoked"
    with pytest.raises(LetterInvalid):  # gone for good (410 at the door), not an unknown letter
        letters.authenticate(letter.selector, letter.access_code, "192.0.2.10")


@pytest.mark.parametrize("filters", [{}, {"PatientName": "*"}], ids=["sql-only", "python-matching"])
def test_a_query_that_meets_a_shred_skips_that_patient(settings, tmp_path, filters, monkeypatch):
    """The shred runs in another archive (as the retention process does) between two results."""
    from storage.archive import Archive

    writer = Archive(settings, create_key=True)
    for i in range(30):
        writer.store(make_study(tmp_path / f"p{i}", n_series=1, per_series=1,
                                patient_id=f"RET-Q-{i:02d}", patient_name=f"Q^{i:02d}")[0])
    reader = Archive(settings)  # keys not cached: as a DIMSE or gunicorn worker that stored nothing
    monkeypatch.setattr("storage.query._STREAM", 4)  # the search reads rows 4 at a time
    try:
        query = Query("PATIENT", filters=dict(filters), return_keys=["PatientID", "PatientName"])
        matches = reader.find(query)
        first = next(matches)
        # later in PATIENT order (by reference), in batches the search has not read yet: a batch
        # already read may still be answered (one key check per batch, not per match)
        victims = list(range(6, 31, 3))
        for ref in victims:
            shred(writer, ref, actor="test", origin="", reason="retention")
        rest = list(matches)
        seen = [first["_patient_ref"], *(m["_patient_ref"] for m in rest)]
        assert seen == [r for r in range(1, 31) if r not in victims]
        assert all(m["PatientID"] == f"RET-Q-{m['_patient_ref'] - 1:02d}" for m in rest)
    finally:
        reader.close()
        writer.close()
