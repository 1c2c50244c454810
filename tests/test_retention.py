"""Retention and crypto-shredding: after shredding, a copy of the patient's blobs taken before cannot
be decrypted by any key the system still holds; their letters stop working; others are untouched."""

from __future__ import annotations

import io
from datetime import date, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.crypto import DecryptingReader
from storage.errors import NotFound
from storage.index.models import PatientKey, SystemKey
from storage.keys import WrappedKey
from storage.letters import AccessDenied, Letters
from storage.retention import apply, due, shred
from tests.conftest import raw_blob
from tests.dicomgen import make_study


def _all_keys(archive) -> list[bytes]:  # noqa: ANN001
    """Every data and system key the archive can still unwrap."""
    ring = archive.vault.ring
    keys = []
    with archive.sessions() as s:
        for row in s.scalars(select(PatientKey)).all():
            keys.append(ring.unwrap(row.key_id, WrappedKey(row.kek_version, row.wrapped)))
        for row in s.scalars(select(SystemKey)).all():
            keys.append(ring.unwrap(row.name, WrappedKey(row.kek_version, row.wrapped)))
    return keys


def _opens(path: Path, key: bytes, blob_key: str) -> bool:
    try:
        with DecryptingReader(io.BytesIO(path.read_bytes()), key, blob_key) as r:
            return r.read(132)[128:132] == b"DICM"
    except Exception:  # noqa: BLE001 - any failure to decrypt is what we want
        return False


def test_retention_shreds_old_patients_only(archive, tmp_path: Path) -> None:  # noqa: ANN001
    old = [archive.store(p) for p in make_study(tmp_path / "old", n_series=1, per_series=2,
                                                 patient_id="RET-OLD", study_date="20100105")]
    new = [archive.store(p) for p in make_study(tmp_path / "new", n_series=1, per_series=1,
                                                 patient_id="RET-NEW", study_date="20250105")]
    old_ref, new_ref = old[0].patient_ref, new[0].patient_ref
    letters = Letters(archive)
    letter = letters.issue(old_ref, expires_at=datetime(2100, 1, 1))  # default: already expired
    assert letters.default_expiry(old_ref) == datetime(2017, 1, 6)
    assert letters.authenticate(letter.selector, letter.access_code, "192.0.2.9")
    infos = archive.instances(study_uid=old[0].study_uid)
    copies = tmp_path / "copies"
    copies.mkdir()
    for info in infos:  # the attacker's (or the backup's) copy, taken before shredding
        (copies / info.blob_key).write_bytes(raw_blob(archive, info.blob_key))
        assert _opens(copies / info.blob_key, archive.vault.dek(info.key_id), info.blob_key)

    today = date(2026, 11, 25)
    assert [d.patient_ref for d in apply(archive, dry_run=True, today=today)] == [old_ref]
    assert archive.instances(study_uid=old[0].study_uid)  # dry run changed nothing
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
        archive.instances(study_uid=old[0].study_uid)
    with pytest.raises(AccessDenied):
        Letters(archive).authenticate(letter.selector, letter.access_code, "192.0.2.9")
    assert archive.instances(study_uid=new[0].study_uid)  # the other patient stays
    assert archive.patient_values(new_ref)["PatientName"] == "Doe^Jane"
    assert due(archive, today) == []
    shredded = list(archive.audit.events(patient_ref=old_ref, action="shred"))
    assert len(shredded) == 1 and "retention" in shredded[0].detail


def test_shred_on_request_ends_sessions(archive, tmp_path: Path) -> None:  # noqa: ANN001
    ref = archive.store(make_study(tmp_path, n_series=1, per_series=1, patient_id="RET-REQ")[0]).patient_ref
    letters = Letters(archive)
    letter = letters.issue(ref)
    grant = letters.authenticate(letter.selector, letter.access_code, "192.0.2.10")
    token = letters.open_session(grant)
    assert letters.session(letter.selector, token) is not None
    assert shred(archive, ref, actor="test", origin="", reason="request") == 1
    assert letters.session(letter.selector, token) is None
    assert letters.list(ref) == []
