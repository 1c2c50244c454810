"""Master key rotation: every object reads back, no blob changes, the old version can be retired."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from storage.archive import Archive
from storage.errors import KeyUnavailable
from storage.keys import MasterKeyRing
from storage.letters import Letters
from storage.rotation import RotationError, retire, rotate, versions_in_use
from tests.conftest import PACS, raw_blob
from tests.dicomgen import make_study


def _blobs(archive: Archive) -> dict[str, str]:
    """Every stored blob (files and rows of the index) by key, as a digest of its encrypted bytes."""
    return {key: hashlib.sha256(raw_blob(archive, key)).hexdigest() for key in archive.blob_keys()}


def test_rotate_retire_restart(archive, tmp_path: Path) -> None:
    paths = make_study(tmp_path / "a", n_series=2, per_series=2, patient_id="ROT-1")
    paths += make_study(tmp_path / "b", n_series=1, per_series=1, patient_id="ROT-2")
    results = [archive.store(p) for p in paths]
    letters = Letters(archive)
    letter = letters.issue(results[0].patient_ref)
    before = _blobs(archive)
    old_ring = archive.vault.ring

    r = rotate(archive)
    assert r.version == 2 and r.patient_keys == 2 and r.system_keys >= 2
    assert versions_in_use(archive) == {2: r.patient_keys + r.system_keys}
    assert MasterKeyRing.loads(archive.settings.master_key_file.read_text()).versions == [1, 2]
    retire(archive, 1)
    assert MasterKeyRing.loads(archive.settings.master_key_file.read_text()).versions == [2]
    with pytest.raises(RotationError):
        retire(archive, 2)  # never the current one
    assert _blobs(archive) == before  # no stored object rewritten
    settings = archive.settings
    archive.close()

    again = Archive(settings)  # a restart: only version 2 in the key file
    try:
        assert again.vault.ring.versions == [2]
        for path, res in zip(paths, results, strict=True):
            info = again.instances(sop_uid=res.sop_instance_uid)[0]
            assert again.read_bytes(info) == path.read_bytes()
        assert again.patient_values(results[0].patient_ref)["PatientName"] == "Doe^Jane"
        assert Letters(again).authenticate(letter.selector, letter.access_code, "192.0.2.20")
        assert {e.action for e in again.audit.events(action=None)} >= {"key-rotate", "key-retire"}
    finally:
        again.close()
    # the old master key alone no longer opens this archive
    old_only = tmp_path / "old.key"
    old_ring.save(old_only)
    with pytest.raises(KeyUnavailable):
        Archive(type(settings)(**{**settings.__dict__, "master_key_file": old_only}))


def test_cli_rotate_with_key_from_environment(tmp_path: Path) -> None:
    """With PACS_MASTER_KEY the new ring is printed for the operator (no key file is written)."""
    ring = MasterKeyRing({1: os.urandom(32)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"),
               PACS_MASTER_KEY=",".join(line for line in ring.dumps().splitlines() if not line.startswith("#")))
    for p in make_study(tmp_path / "in", n_series=1, per_series=1, patient_id="ROT-ENV"):
        subprocess.run([PACS, "import", "-q", str(p)], env=env, check=True, capture_output=True, timeout=120)
    out = subprocess.run([PACS, "keys", "rotate"], env=env, check=True, capture_output=True, text=True,
                         timeout=120).stdout
    printed = out.strip().splitlines()[-1]
    new = MasterKeyRing.loads(printed)
    assert new.versions == [1, 2] and not (tmp_path / "data" / "master.key").exists()
    env["PACS_MASTER_KEY"] = printed
    status = subprocess.run([PACS, "keys", "status"], env=env, check=True, capture_output=True, text=True,
                            timeout=120).stdout
    assert "version 1: 0 wrapped key(s)" in status and "(current)" in status


def test_running_process_follows_a_rotation(archive, tmp_path: Path) -> None:
    """A worker started before `pacs keys rotate` reads keys wrapped under the new version."""
    first = archive.store(make_study(tmp_path / "a", n_series=1, per_series=1, patient_id="RUN-1")[0])
    running = Archive(archive.settings)  # e.g. a gunicorn worker, its ring holds version 1 only
    try:
        rotate(archive)  # another process rotates; new keys are now wrapped under version 2
        path = make_study(tmp_path / "b", n_series=1, per_series=1, patient_id="RUN-2")[0]
        second = archive.store(path)
        assert running.vault.ring.versions == [1]
        info = running.instances(sop_uid=second.sop_instance_uid)[0]
        assert running.read_bytes(info) == path.read_bytes()
        assert running.vault.ring.versions == [1, 2]
        assert running.read_bytes(running.instances(sop_uid=first.sop_instance_uid)[0])
    finally:
        running.close()
