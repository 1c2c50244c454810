"""``pacs retention apply``, the daily run: it also removes orphan blobs an interrupted store left."""

from __future__ import annotations

import os
import time

from storage.archive import Archive
from storage.config import load_settings
from tests.conftest import pacs_command
from tests.dicomgen import make_image
from tests.test_archive import part10


def _orphan(archive: Archive, age_seconds: float) -> str:
    key = archive.blobs.new_key()
    fh = archive.blobs.create(key)
    fh.write(b"written by a store interrupted before its index commit")
    archive.blobs.commit(fh)
    then = time.time() - age_seconds
    os.utime(archive.blobs.path(key), (then, then))
    return key


def test_the_daily_run_removes_old_orphan_blobs_and_nothing_else(tmp_path):
    data = tmp_path / "data"
    archive = Archive(load_settings(env={"PACS_DATA_DIR": str(data)}), create_key=True)
    try:
        kept = archive.store(part10(make_image(rows=256, columns=256)))  # a blob file, indexed
        old = _orphan(archive, age_seconds=2 * 3600)
        recent = _orphan(archive, age_seconds=60)  # perhaps a store still running: left alone

        dry = pacs_command(data, "retention", "apply", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert old in set(archive.blobs.keys())

        run = pacs_command(data, "retention", "apply")
        assert run.returncode == 0, run.stderr
        assert "removed 1 orphan blob(s)" in run.stdout
        left = set(archive.blobs.keys())
        assert recent in left and old not in left
        [info] = archive.instances(sop_uid=kept.sop_instance_uid)
        assert archive.read_bytes(info)
    finally:
        archive.close()


def test_confirm_with_yes_shreds_past_the_limit_without_asking(tmp_path):
    from datetime import datetime

    from sqlalchemy import update

    from storage.index.models import Patient
    from tests.dicomgen import make_study

    data = tmp_path / "data"
    archive = Archive(load_settings(env={"PACS_DATA_DIR": str(data)}), create_key=True)
    try:
        for i in range(11):
            archive.store(make_study(tmp_path / f"p{i}", n_series=1, per_series=1, patient_id=f"RET-YES-{i}",
                                     study_date="20100105", rows=8, columns=8)[0])
        with archive.write_sessions.begin() as s:
            s.execute(update(Patient).values(last_received_at=datetime(2016, 1, 6)))
    finally:
        archive.close()
    alone = pacs_command(data, "retention", "apply", "--yes")
    assert alone.returncode == 2 and "--yes goes with --confirm" in alone.stderr
    refused = pacs_command(data, "retention", "apply")
    assert refused.returncode == 1 and "11 patient(s) are past retention" in refused.stderr
    run = pacs_command(data, "retention", "apply", "--confirm", "--yes")
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("shredded: patient") == 11 and "11 patient(s) shredded" in run.stdout
    assert "RET-YES" not in run.stdout
