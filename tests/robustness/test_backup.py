"""Backup and restore (issue 20 part 5): an online snapshot while stores go on, restored onto an empty
archive and read back whole; a patient shredded after the backup stays unreadable once the shred log
is replayed; without the master key a backup opens nothing. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import io
import shutil
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.archive import Archive
from storage.backup import BackupError, backup, read_shred_log, restore, shred_log
from storage.check import check
from storage.config import load_settings
from storage.crypto import DecryptingReader
from storage.errors import KeyUnavailable, NotFound
from storage.index.models import PatientKey
from storage.keys import WrappedKey
from storage.retention import shred
from tests.conftest import _postgres_url, pacs_command
from tests.dicomgen import make_image


def _p10(ds) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _target_url(db_url: str, tmp_path: Path):  # noqa: ANN202 - (url, cleanup generator)
    if db_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'restored' / 'index.sqlite'}", None
    gen = _postgres_url()
    return next(gen), gen


def test_backup_online_restore_and_shred_replay(archive, settings, db_url, tmp_path: Path, figures) -> None:  # noqa: ANN001
    originals: dict[str, bytes] = {}
    for i in range(20):  # two patients; small objects (inline) and large ones (blob files)
        for pid in ("BK-KEEP", "BK-SHRED"):
            big = i % 5 == 0
            ds = make_image(patient_id=pid, patient_name=f"Backup^{pid}", rows=256 if big else 8,
                            columns=256 if big else 8, study_uid=f"2.25.77{pid == 'BK-KEEP':d}{i // 10}",
                            pixel_seed=i)
            data = _p10(ds)
            archive.store(data)
            originals[ds.SOPInstanceUID] = data
    before = set(originals)

    # stores go on while the backup runs, in another archive (another process's view)
    stop, during = threading.Event(), {}

    def keep_storing() -> None:
        other = Archive(settings)
        try:
            n = 0
            while not stop.is_set() and n < 400:
                ds = make_image(patient_id="BK-LIVE", rows=8, columns=8, pixel_seed=n)
                data = _p10(ds)
                other.store(data)
                during[ds.SOPInstanceUID] = data
                n += 1
        finally:
            other.close()

    writer = threading.Thread(target=keep_storing)
    writer.start()
    dest = tmp_path / "backup"
    result = backup(archive, dest)
    stop.set()
    writer.join()
    assert not result.master_key_included and not (dest / "master.key").exists()
    assert (dest.stat().st_mode & 0o077) == 0

    # after the backup: shred one patient in the live archive; its shred log goes with the backups
    victim = archive.find_patient("BK-SHRED")
    victim_key = archive.instances(study_uid="2.25.7700")[0].key_id
    shred(archive, victim, actor="test", origin="test", reason="request")
    log_file = tmp_path / "shred.log"
    log_file.write_text("\n".join(shred_log(archive)) + "\n")
    assert victim_key in read_shred_log(log_file)

    # the backup holds no master key: not the file's text, not the raw key bytes
    ring = archive.vault.ring
    secrets = [ring.dumps().splitlines()[-1].split(":", 1)[1].encode()]
    secrets += [base64.b64decode(s) for s in secrets]
    for f in dest.rglob("*"):
        if f.is_file():
            content = f.read_bytes()
            assert not any(s in content for s in secrets), f

    target_url, cleanup = _target_url(db_url, tmp_path)
    try:
        target = load_settings(env={}, data_dir=tmp_path / "restored", database_url=target_url)
        with pytest.raises(BackupError, match="does not hold the master key"):
            restore(dest, target, shred_logs=[log_file])
        target.master_key_file.parent.mkdir(parents=True, exist_ok=True)
        other_key = tmp_path / "other.key"
        from storage.keys import MasterKeyRing

        MasterKeyRing({1: b"\x01" * 32}).save(other_key)
        shutil.copy(other_key, target.master_key_file)
        with pytest.raises(KeyUnavailable):  # a wrong key opens nothing; nothing was written
            restore(dest, target, shred_logs=[log_file])
        assert not (tmp_path / "restored" / "blobs").exists() or not any((tmp_path / "restored" / "blobs").iterdir())

        ring.save(target.master_key_file)  # the key, kept apart from the backup, comes back
        r = restore(dest, target, shred_logs=[log_file])
        assert r.shredded == 1
        restored = Archive(target)
        try:
            with pytest.raises(NotFound):
                restored.find_patient("BK-SHRED")
            with restored.sessions() as s:
                assert s.get(PatientKey, victim_key) is None
                keys = [restored.vault.ring.unwrap(k.key_id, WrappedKey(k.kek_version, k.wrapped))
                        for k in s.scalars(select(PatientKey))]
            # the backup's copy of the victim's ciphertext opens under no key the restore holds
            victim_blobs = [p for p in (dest / "blobs").rglob("*") if p.is_file()]
            victims = 0
            for path in victim_blobs:
                for key in keys:
                    try:
                        DecryptingReader(io.BytesIO(path.read_bytes()), key, path.name).verify()
                        break
                    except KeyUnavailable:
                        continue
                else:
                    victims += 1
            assert victims == 4  # BK-SHRED's four large objects: unreadable for good

            read = 0
            for uid, data in {**originals, **during}.items():
                try:
                    info = restored.instances(sop_uid=uid)[0]
                except NotFound:
                    assert uid not in before or uid in _of(originals, "BK-SHRED"), uid
                    continue
                assert restored.read_bytes(info) == data
                read += 1
            report = check(restored, grace_seconds=0)
            assert report.ok, report.lines()
        finally:
            restored.close()
    finally:
        if cleanup is not None:
            next(cleanup, None)
    figures(backed_up=result.instances, stored_during_backup=len(during),
            dropped_after_snapshot=result.dropped, restored_and_read=read, shreds_replayed=r.shredded)


def _of(originals: dict[str, bytes], patient_id: str) -> set[str]:
    return {uid for uid, data in originals.items() if patient_id.encode() in data}


def test_backup_and_restore_commands(tmp_path: Path) -> None:
    data, folder = tmp_path / "data", tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.dcm").write_bytes(_p10(make_image(patient_id="BK-CLI", pixel_seed=i)))
    assert pacs_command(data, "import", str(folder)).returncode == 0
    made = pacs_command(data, "backup", str(tmp_path / "b"))
    assert made.returncode == 0, made.stderr
    assert "NOT in it" in made.stdout
    refused = pacs_command(tmp_path / "new", "restore", str(tmp_path / "b"))
    assert refused.returncode == 1 and "master key" in refused.stderr
    (tmp_path / "new").mkdir()
    shutil.copy(data / "master.key", tmp_path / "new" / "master.key")
    done = pacs_command(tmp_path / "new", "restore", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    assert "restored 3 instance(s)" in done.stdout
    ok = pacs_command(tmp_path / "new", "check", "--grace", "0")
    assert ok.returncode == 0, ok.stdout
