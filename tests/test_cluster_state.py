"""What a process keeps in memory stays correct when another one (another node) changes the index,
and cluster-wide jobs run once (storage/cluster.py). Two archives on one index stand for two nodes;
each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import cluster
from storage.archive import Archive
from storage.config import Settings
from storage.errors import NotFound
from storage.rotation import rotate
from tests.dicomgen import make_image, write


@pytest.fixture
def two(settings: Settings):
    a = Archive(settings, create_key=True)
    b = Archive(settings)
    yield a, b
    a.close()
    b.close()


def test_a_shred_elsewhere_drops_the_key_from_memory(two, tmp_path: Path) -> None:
    a, b = two
    stored = a.store(write(make_image(patient_id="CS-SHRED"), tmp_path))
    [info] = b.instances(stored.study_uid)
    assert b.read_bytes(info)  # B has unwrapped the patient's key and keeps it
    assert info.key_id in b.vault._deks
    a.shred_patient(stored.patient_ref)
    b._cluster.poll(b)  # what B's poller does every cluster_poll_interval
    assert info.key_id not in b.vault._deks and info.key_id not in b.vault._field_keys
    with pytest.raises(NotFound):
        b.instances(stored.study_uid)


def test_an_empty_wrapped_key_is_refused_even_when_cached(two, tmp_path: Path) -> None:
    a, b = two
    stored = a.store(write(make_image(patient_id="CS-CACHED"), tmp_path))
    [info] = b.instances(stored.study_uid)
    b.read_bytes(info)
    with pytest.raises(NotFound):  # a row read after the shred's first step: the key is gone
        b.vault.dek_from(info.key_id, 1, b"")
    assert info.key_id not in b.vault._deks


def test_a_rotation_elsewhere_is_followed(two, tmp_path: Path) -> None:
    a, b = two
    assert b.vault.ring.current_version == 1
    rotate(a)
    b._cluster.poll(b)
    assert b.vault.ring.current_version == 2  # B's new patients are wrapped under version 2
    stored = b.store(write(make_image(patient_id="CS-ROT"), tmp_path))
    with a.sessions() as s:
        from storage.index.models import Patient, PatientKey

        key_id = s.get(Patient, stored.patient_ref).key_id
        assert s.get(PatientKey, key_id).kek_version == 2


def test_a_job_runs_on_one_node_at_a_time(two) -> None:
    a, b = two
    with cluster.job_lock(a.write_engine, "retention") as mine:
        assert mine
        with cluster.job_lock(b.write_engine, "retention") as theirs, \
                cluster.job_lock(b.write_engine, "orphan-sweep") as other:
            assert other  # another job is free
            assert theirs is (not cluster.is_postgres(a.engine))  # SQLite: one machine, as before
    with cluster.job_lock(b.write_engine, "retention") as now:
        assert now


def test_one_leader_warms(two) -> None:
    a, b = two
    la = cluster.Leadership(a.engine, "metadata-warmer", a.settings.data_dir / "metadata-warmer.lock")
    lb = cluster.Leadership(b.engine, "metadata-warmer", b.settings.data_dir / "metadata-warmer.lock")
    try:
        assert la.held() and la.held()
        assert not lb.held()
        la.release()
        assert lb.held()
        assert not la.held()
    finally:
        la.release()
        lb.release()


def test_a_node_removes_its_own_orphans_at_start(settings: Settings, tmp_path: Path, monkeypatch) -> None:
    from dataclasses import replace

    monkeypatch.setenv(cluster.NODE_ENV, "1")
    node = replace(settings, node_name="node-a", inline_blob_limit=0)
    archive = Archive(node, create_key=True)
    try:
        tag = cluster.node_tag(node)
        assert len(tag) == 8
        kept = archive.store(write(make_image(patient_id="CS-ORPHAN"), tmp_path))
        [info] = archive.instances(kept.study_uid)
        assert info.blob_key.startswith(tag) and len(info.blob_key) == 32
        orphan = archive.blobs.new_key()
        archive.blobs.commit(_write(archive.blobs.create(orphan)))
        other = "0" * 8 + orphan[8:]  # another node's (or an untagged) object: keeps its grace
        archive.blobs.commit(_write(archive.blobs.create(other)))
        assert cluster.sweep_own_orphans(archive, tag) == 1
        assert set(archive.blobs.keys()) == {info.blob_key, other}
        assert archive.read_bytes(info)
    finally:
        archive.close()


def _write(fh):  # noqa: ANN001, ANN202
    fh.write(b"x" * 100)
    return fh
