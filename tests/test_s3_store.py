"""The S3 blob store against a real SeaweedFS (started by scripts/test, or by a test itself).

Objects go up as one PUT or a streamed multipart upload, come back byte-identical, frames are read
with ranged GETs only; keys are random ids with no metadata; an unreachable store refuses that one
object with Out of Resources and storing resumes when it is back; interrupted uploads are swept;
a wrong bucket or wrong credentials stop ``pacs serve`` with one line naming the setting.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
import uuid

import numpy as np
import pytest

from storage.archive import Archive
from storage.config import load_settings
from storage.errors import NotFound, StorageFull
from storage.s3store import S3BlobStore
from tests.conftest import PACS, free_port
from tests.dicomgen import make_image
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Weed, weed_binary


def _shared_s3() -> dict[str, str]:
    endpoint = os.environ.get("PACS_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.skip("SeaweedFS not started (scripts/test starts it and sets PACS_TEST_S3_ENDPOINT)")
    return {"endpoint": endpoint, "bucket": os.environ["PACS_TEST_S3_BUCKET"],
            "key": os.environ["PACS_TEST_S3_ACCESS_KEY_ID"],
            "secret": os.environ["PACS_TEST_S3_SECRET_ACCESS_KEY"]}


def s3_settings(tmp_path, endpoint: str, bucket: str, key: str = ACCESS_KEY,
                secret: str = SECRET_KEY, **extra):
    prefix = "t-" + uuid.uuid4().hex[:8]
    return load_settings(env={}, data_dir=tmp_path / "data", blob_store=f"s3://{bucket}/{prefix}",
                         s3_endpoint=endpoint, s3_access_key_id=key, s3_secret_access_key=secret,
                         **{"blob_timeout": 5.0, **extra})


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture
def s3_archive(tmp_path):
    s3 = _shared_s3()
    a = Archive(s3_settings(tmp_path, s3["endpoint"], s3["bucket"], s3["key"], s3["secret"]),
                create_key=True)
    yield a
    a.close()


def test_objects_round_trip_through_s3_with_random_keys(s3_archive: Archive):
    a = s3_archive
    rng = np.random.default_rng(7)
    pid = "S3-" + uuid.uuid4().hex[:8]
    small = _bytes(make_image(patient_id=pid, rows=256, columns=256,
                              pixels=rng.integers(0, 4095, (256, 256), dtype=np.uint16)))
    big_ds = make_image(patient_id=pid, rows=1024, columns=1024, frames=5,
                        pixels=rng.integers(0, 4095, (5, 1024, 1024), dtype=np.uint16))
    big = _bytes(big_ds)  # 10 MB: a multipart upload of two parts
    assert len(big) > a.blobs.part_size
    stored = [a.store(small), a.store(big)]
    for data, res in zip((small, big), stored, strict=True):
        [info] = a.instances(res.study_uid, res.series_uid, res.sop_instance_uid)
        assert a.read_bytes(info) == data
    [info] = a.instances(stored[1].study_uid)
    frame3 = a.read_frame(info, 3)
    assert frame3 == big_ds.PixelData[2 * 1024 * 1024 * 2: 3 * 1024 * 1024 * 2]

    client = a.blobs._client
    listing = client.list_objects_v2(Bucket=a.blobs.bucket, Prefix=a.blobs.prefix + "/")
    names = [o["Key"].split("/")[-1] for o in listing["Contents"]]
    assert sorted(names) == sorted(i.blob_key for i in a.instances(stored[0].study_uid) +
                                   a.instances(stored[1].study_uid))
    for o in listing["Contents"]:
        head = client.head_object(Bucket=a.blobs.bucket, Key=o["Key"])
        assert head.get("Metadata", {}) == {}
        assert stored[1].sop_instance_uid not in o["Key"] and pid not in o["Key"]


def test_a_frame_read_asks_only_for_ranges(s3_archive: Archive):
    a = s3_archive
    rng = np.random.default_rng(8)
    ds = make_image(patient_id="S3R-" + uuid.uuid4().hex[:6], rows=1024, columns=1024, frames=8,
                    pixels=rng.integers(0, 4095, (8, 1024, 1024), dtype=np.uint16))
    res = a.store(_bytes(ds))
    [info] = a.instances(res.study_uid)
    a.frame_index(info)  # known at ingest for native objects
    ranges: list[str | None] = []

    def seen(request, **_kw) -> None:  # noqa: ANN001
        if request.method == "GET":
            r = request.headers.get("Range")
            ranges.append(r.decode() if isinstance(r, bytes) else r)

    a.blobs._client.meta.events.register("before-send.s3.GetObject", seen)
    try:
        assert a.read_frame(info, 8) == ds.PixelData[7 * 2 * 1024 * 1024:]
    finally:
        a.blobs._client.meta.events.unregister("before-send.s3.GetObject", seen)
    assert ranges and all(r is not None for r in ranges)
    fetched = 0
    for r in ranges:
        lo, _, hi = r.removeprefix("bytes=").partition("-")  # type: ignore[union-attr]
        fetched += int(hi) - int(lo) + 1
    assert fetched < info.blob_size / 3  # the header's segment, and the frame's (one of eight)


def test_interrupted_multipart_uploads_are_aborted_by_the_sweep(s3_archive: Archive):
    store = s3_archive.blobs
    key = store.new_key()
    fh = store.create(key)
    fh.write(os.urandom(store.part_size + 10))  # one part sent: an upload is open
    fh._done = True  # a process killed here never aborts it
    client = store._client
    open_uploads = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix + "/")
    assert [u["Key"] for u in open_uploads.get("Uploads", [])] == [f"{store.prefix}/{key}"]
    assert store.sweep_incomplete(time.time() + 60) == 1
    left = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix + "/")
    assert left.get("Uploads", []) == []
    with pytest.raises(NotFound):
        store.open(key).read(10)


def test_an_unreachable_store_refuses_the_object_then_storing_resumes(tmp_path):
    if weed_binary() is None:
        pytest.skip("weed not installed")
    weed = Weed(tmp_path / "weed").start()
    try:
        weed.create_bucket("resume")
        a = Archive(s3_settings(tmp_path, weed.endpoint, "resume", blob_timeout=2.0), create_key=True)
        try:
            rng = np.random.default_rng(9)
            pid = "S3D-" + uuid.uuid4().hex[:6]

            def obj() -> bytes:
                return _bytes(make_image(patient_id=pid, rows=256, columns=256,
                                         pixels=rng.integers(0, 4095, (256, 256), dtype=np.uint16)))

            first = a.store(obj())
            weed.stop()
            refused = obj()
            with pytest.raises(StorageFull) as err:
                a.store(refused)
            assert "object store" in str(err.value)
            assert err.value.sop_instance_uid  # the refused object is named
            with pytest.raises(NotFound):  # nothing half-indexed
                a.instances(sop_uid=err.value.sop_instance_uid)
            weed.start()
            again = a.store(refused)  # the same archive: no restart
            assert again.status == "stored"
            for r in (first, again):
                [info] = a.instances(sop_uid=r.sop_instance_uid)
                assert a.read_bytes(info)[128:132] == b"DICM"
        finally:
            a.close()
    finally:
        weed.stop()


@pytest.mark.parametrize("what", ["bucket", "credentials"])
def test_serve_refuses_a_wrong_bucket_or_credentials_in_one_line(tmp_path, what):
    s3 = _shared_s3()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"), PACS_DICOM_PORT=str(free_port()),
               PACS_HTTP_PORT=str(free_port()), PACS_DICOM_HOST="127.0.0.1",
               PACS_HTTP_HOST="127.0.0.1", PACS_S3_ENDPOINT=s3["endpoint"],
               PACS_BLOB_STORE=f"s3://{s3['bucket']}/x", PACS_S3_ACCESS_KEY_ID=s3["key"],
               PACS_S3_SECRET_ACCESS_KEY=s3["secret"])
    if what == "bucket":
        env["PACS_BLOB_STORE"] = "s3://no-such-bucket-here/x"
    else:
        env["PACS_S3_SECRET_ACCESS_KEY"] = "wrong-secret"
    done = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "blob_store" in lines[0] and "refusing to start" in lines[0]
    assert "Traceback" not in done.stderr and "wrong-secret" not in done.stderr
    assert ("does not exist" if what == "bucket" else "credentials") in lines[0]


def test_the_secret_can_come_from_a_file(tmp_path):
    s3 = _shared_s3()
    secret = tmp_path / "s3.secret"
    secret.write_text(s3["secret"] + "\n")
    settings = load_settings(env={}, data_dir=tmp_path / "data",
                             blob_store=f"s3://{s3['bucket']}/f-{uuid.uuid4().hex[:6]}",
                             s3_endpoint=s3["endpoint"], s3_access_key_id=s3["key"],
                             s3_secret_access_key_file=str(secret))
    a = Archive(settings, create_key=True)
    try:
        a.blobs.check()
        data = _bytes(make_image(patient_id="S3F-" + uuid.uuid4().hex[:6], rows=256, columns=256,
                                 pixels=np.ones((256, 256), dtype=np.uint16)))
        [info] = a.instances(sop_uid=a.store(data).sop_instance_uid)
        assert a.read_bytes(info) == data
    finally:
        a.close()


def test_s3_store_names_no_secret(tmp_path):
    s3 = _shared_s3()
    store = S3BlobStore(s3["bucket"], "p", endpoint=s3["endpoint"], access_key_id=s3["key"],
                        secret_access_key=s3["secret"])
    settings = s3_settings(tmp_path, s3["endpoint"], s3["bucket"], s3["key"], s3["secret"])
    assert s3["secret"] not in repr(store) and s3["secret"] not in repr(settings)


@pytest.mark.slow
def test_a_push_while_the_object_store_is_down_gets_out_of_resources_and_goes_on(tmp_path):
    """Over DIMSE (pynetdicom SCU, one association): each object sent while SeaweedFS is down is
    answered A700 with a comment, the association stays up, and once the store is back the next
    C-STORE on the same association succeeds (no server restart)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    from tests.conftest import start_server

    if weed_binary() is None:
        pytest.skip("weed not installed")
    weed = Weed(tmp_path / "weed").start()
    weed.create_bucket("push")
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", PACS_BLOB_STORE="s3://push/p", PACS_S3_ENDPOINT=weed.endpoint,
                       PACS_S3_ACCESS_KEY_ID=ACCESS_KEY, PACS_S3_SECRET_ACCESS_KEY=SECRET_KEY,
                       PACS_BLOB_TIMEOUT="2", PACS_INLINE_BLOB_LIMIT="0")
    try:
        rng = np.random.default_rng(5)
        pid = "S3P-" + uuid.uuid4().hex[:6]

        def image():  # noqa: ANN202
            return make_image(patient_id=pid, rows=128, columns=128,
                              pixels=rng.integers(0, 4095, (128, 128), dtype=np.uint16))

        ae = AE(ae_title="PUSHER")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title)
        assert assoc.is_established
        try:
            ok = image()
            assert assoc.send_c_store(ok).Status == 0x0000
            weed.stop()
            refused = [image(), image()]
            for ds in refused:
                status = assoc.send_c_store(ds)
                assert status.Status == 0xA700
                assert "object store" in str(status.get("ErrorComment", ""))
                assert assoc.is_established
            weed.start()
            assert assoc.send_c_store(refused[0]).Status == 0x0000
        finally:
            assoc.release()
        a = srv.archive()
        try:
            assert a.instances(sop_uid=refused[0].SOPInstanceUID)
            with pytest.raises(NotFound):
                a.instances(sop_uid=refused[1].SOPInstanceUID)
        finally:
            a.close()
        assert "Traceback" not in (tmp_path / "srv" / "server.log").read_text()
    finally:
        srv.stop()
        weed.stop()
