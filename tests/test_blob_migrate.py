"""``pacs blobs migrate --to s3://...``: a running file archive moves into a SeaweedFS bucket.

Interrupted after two copies, resumed; objects pushed during and after the migration; the running
server switches to the bucket without a restart; everything reads back byte-identical through
WADO-RS and the archive, and every blob is in the bucket.
"""

from __future__ import annotations

import io
import os
import subprocess
import uuid

import numpy as np
import pydicom
import pytest
import requests

from dicomweb.multipart import decode_bytes
from storage.blobstore import is_inline
from storage.blobstores import SWITCH_FILE
from tests.conftest import PACS, require, start_server
from tests.dicomgen import dataset_bytes, make_image, write


def _s3_env() -> dict[str, str]:
    endpoint = os.environ.get("PACS_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.skip("SeaweedFS not started (scripts/test starts it and sets PACS_TEST_S3_ENDPOINT)")
    return {"PACS_S3_ENDPOINT": endpoint,
            "PACS_S3_ACCESS_KEY_ID": os.environ["PACS_TEST_S3_ACCESS_KEY_ID"],
            "PACS_S3_SECRET_ACCESS_KEY": os.environ["PACS_TEST_S3_SECRET_ACCESS_KEY"]}


@pytest.mark.slow
def test_migrate_a_running_file_archive_into_a_bucket(tmp_path):
    require("storescu")
    s3 = _s3_env()
    bucket = os.environ["PACS_TEST_S3_BUCKET"]
    to = f"s3://{bucket}/mig-{uuid.uuid4().hex[:8]}"
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", **s3)
    rng = np.random.default_rng(21)
    pid = "MIG-" + uuid.uuid4().hex[:6]
    study = pydicom.uid.generate_uid()
    sent: dict[str, bytes] = {}

    def push(count: int, folder: str) -> None:
        files = [write(make_image(patient_id=pid, study_uid=study, rows=r, columns=r,
                                  pixels=rng.integers(0, 4095, (r, r), dtype=np.uint16)),
                       tmp_path / folder) for r in [300, 100, 256][:count]]
        done = subprocess.run(["storescu", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port),
                               *map(str, files)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        for f in files:
            sent[str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = f.read_bytes()

    def migrate(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([PACS, "blobs", "migrate", "--to", to, *extra], env=srv.env,
                              capture_output=True, text=True, timeout=300)

    try:
        for n in range(3):
            push(3, f"in{n}")
        first = migrate("--limit", "2")  # interrupted after two copies
        assert first.returncode == 0, first.stderr
        assert "copied: 2" in first.stdout
        assert (srv.data_dir / "blob-migrate.json").exists()
        assert not (srv.data_dir / SWITCH_FILE).exists()
        push(3, "during")  # the server keeps storing into files meanwhile
        second = migrate()
        assert second.returncode == 0, second.stderr
        assert "switched" in second.stdout and "done" in second.stdout
        assert not (srv.data_dir / "blob-migrate.json").exists()
        files_before = {p.name for p in (srv.data_dir / "blobs").rglob("*") if p.is_file()}
        push(1, "after")  # the running server switched (it looks for the switch file each second)
        files_now = {p.name for p in (srv.data_dir / "blobs").rglob("*") if p.is_file()}
        assert files_now == files_before  # new objects no longer become files

        archive = srv.archive()
        try:
            from storage.blobstores import s3_store

            target = s3_store(to, archive.settings)
            in_bucket = set(target.keys())
            infos = archive.instances(study)
            assert {i.sop_uid for i in infos} == set(sent)
            assert {i.blob_key for i in infos if not is_inline(i.blob_key)} <= in_bucket
            for info in infos:
                assert dataset_bytes(archive.read_bytes(info)) == dataset_bytes(sent[info.sop_uid])
        finally:
            archive.close()

        r = requests.get(f"{srv.dicomweb_url}/studies/{study}", timeout=60, headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert r.status_code == 200
        parts = decode_bytes(r.content, r.headers["Content-Type"])
        assert len(parts) == len(sent)
        for part in parts:
            raw = part.read()
            uid = str(pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).SOPInstanceUID)
            assert dataset_bytes(raw) == dataset_bytes(sent[uid])
    finally:
        srv.stop()
