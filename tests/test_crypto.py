"""Encryption at rest: per-patient keys, wrapping, object binding, tamper detection."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest
from sqlalchemy import select, update

from storage.archive import Archive
from storage.blobstore import is_inline
from storage.config import load_settings
from storage.crypto import DecryptingReader, DecryptionFailed, EncryptingWriter
from storage.errors import KeyUnavailable
from storage.index.models import InlineBlob, Patient, PatientKey
from storage.keys import MasterKeyRing, WrappedKey
from tests.conftest import PACS, free_port
from tests.dicomgen import make_image
from tests.test_archive import part10


@pytest.mark.parametrize("size", [0, 1, 1000, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 17])
def test_segmented_stream_round_trip_and_random_access(size):
    data = os.urandom(size)
    dek = os.urandom(32)
    sink = io.BytesIO()
    w = EncryptingWriter(sink, dek, "obj1")
    w.write(data[: size // 3])
    w.write(data[size // 3:])
    w.close()
    blob = sink.getvalue()
    assert size < 16 or data[:64] not in blob  # a short run may occur in ciphertext by chance
    r = DecryptingReader(io.BytesIO(blob), dek, "obj1")
    assert r.size == size
    assert r.read() == data
    if size > 10:
        r.seek(size // 2)
        assert r.read(7) == data[size // 2: size // 2 + 7]


def _blob(data: bytes, dek: bytes, oid: str) -> bytes:
    sink = io.BytesIO()
    w = EncryptingWriter(sink, dek, oid, segment_size=1024)
    w.write(data)
    w.close()
    return sink.getvalue()


def test_blob_bound_to_object_id_and_key():
    dek, data = os.urandom(32), os.urandom(5000)
    blob = _blob(data, dek, "object-a")
    with pytest.raises(DecryptionFailed):
        DecryptingReader(io.BytesIO(blob), dek, "object-b").read()
    with pytest.raises(DecryptionFailed):
        DecryptingReader(io.BytesIO(blob), os.urandom(32), "object-a").read()


@pytest.mark.parametrize("attack", ["truncate-segment", "drop-last-segment", "flip-bit", "swap-segments"])
def test_tampering_is_detected(attack):
    dek, data = os.urandom(32), os.urandom(5000)
    blob = bytearray(_blob(data, dek, "o"))
    seg = 1024 + 16
    head = 35
    if attack == "truncate-segment":
        blob = blob[:-5]
    elif attack == "drop-last-segment":
        blob = blob[: head + 4 * seg]  # exactly four full segments: the last-flag is missing
    elif attack == "flip-bit":
        blob[head + 100] ^= 1
    else:
        s0, s1 = blob[head: head + seg], blob[head + seg: head + 2 * seg]
        blob[head: head + seg], blob[head + seg: head + 2 * seg] = s1, s0
    with pytest.raises(DecryptionFailed):
        DecryptingReader(io.BytesIO(bytes(blob)), dek, "o").read()


def test_patients_have_different_data_keys_and_wrong_master_key_fails(archive: Archive):
    archive.store(part10(make_image(patient_id="K1")))
    archive.store(part10(make_image(patient_id="K2")))
    with archive.sessions() as s:
        rows = s.query(PatientKey).all()
        patients = s.query(Patient).all()
    assert len(rows) == 2 and len(patients) == 2
    deks = {archive.vault.dek(r.key_id) for r in rows}
    assert len(deks) == 2
    wrong = MasterKeyRing({1: os.urandom(32)})
    for r in rows:
        with pytest.raises(KeyUnavailable):
            wrong.unwrap(r.key_id, WrappedKey(r.kek_version, r.wrapped))
        # a wrapped key moved to another key id does not open either
        other = next(x for x in rows if x.key_id != r.key_id)
        with pytest.raises(KeyUnavailable):
            archive.vault.ring.unwrap(other.key_id, WrappedKey(r.kek_version, r.wrapped))


@pytest.mark.parametrize("inline_limit", [0, 1 << 20], ids=["file", "inline"])
def test_blob_copied_onto_another_object_fails(archive: Archive, inline_limit: int):
    archive.settings.inline_blob_limit = inline_limit
    a = archive.store(part10(make_image(patient_id="C1")))
    b = archive.store(part10(make_image(patient_id="C1")))
    ia, ib = (archive.instances(sop_uid=x.sop_instance_uid)[0] for x in (a, b))
    assert is_inline(ia.blob_key) == bool(inline_limit)
    if inline_limit:  # same patient, same key: only the object binding protects
        with archive.write_engine.begin() as c:
            data = c.execute(select(InlineBlob.data).where(InlineBlob.key == ia.blob_key)).scalar_one()
            c.execute(update(InlineBlob).where(InlineBlob.key == ib.blob_key).values(data=data))
    else:
        shutil.copyfile(archive.blobs.path(ia.blob_key), archive.blobs.path(ib.blob_key))
    with pytest.raises(DecryptionFailed):
        archive.read_bytes(ib)
    assert archive.read_bytes(ia)


def test_archive_refuses_wrong_master_key(tmp_path):
    settings = load_settings(env={}, data_dir=tmp_path / "d")
    Archive(settings, create_key=True).close()
    settings.master_key_file.write_text(MasterKeyRing({1: os.urandom(32)}).dumps())
    with pytest.raises(KeyUnavailable):
        Archive(settings)


def test_serve_refuses_to_start_with_wrong_or_missing_key(tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(data), PACS_DICOM_PORT=str(free_port()),
               PACS_HTTP_PORT=str(free_port()), PACS_DICOM_HOST="127.0.0.1",
               PACS_HTTP_HOST="127.0.0.1")
    archive = Archive(load_settings(env=env), create_key=True)
    archive.store(part10(make_image(patient_id="W1")))
    archive.close()
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file() and "index.sqlite" not in p.name}
    key_file = data / "master.key"
    good_key = key_file.read_text()
    key_file.write_text(MasterKeyRing({1: os.urandom(32)}).dumps())
    proc = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "refusing to start" in proc.stderr and "wrong master key" in proc.stderr
    assert "Traceback" not in proc.stderr
    key_file.write_text(good_key)
    after = {p: p.read_bytes() for p in data.rglob("*") if p.is_file() and "index.sqlite" not in p.name
             and p.name != "master.key"}
    assert {p: v for p, v in before.items() if p.name != "master.key"} == after
    key_file.unlink()
    env["PACS_MASTER_KEY"] = ""
    proc = subprocess.run([PACS, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "refusing to start" in proc.stderr
    assert not key_file.exists(), "a missing key must not be replaced by a new one beside old data"


def test_shredded_key_leaves_no_trace_in_database_files(archive: Archive):
    if archive.engine.dialect.name != "sqlite":
        pytest.skip("file-level check is for the SQLite index")
    ref = archive.store(part10(make_image(patient_id="SHRED1"))).patient_ref
    with archive.sessions() as s:
        key_row = s.query(PatientKey).one()
        wrapped = key_row.wrapped
    archive.shred_patient(ref)
    db = archive.settings.data_dir.parent / "index.sqlite"
    files = [p for p in db.parent.iterdir() if p.name.startswith("index.sqlite")]
    assert files
    for path in files:
        assert wrapped[12:40] not in path.read_bytes(), f"wrapped key still in {path.name}"


@pytest.mark.parametrize("pieces", [[1 << 20], [1, (1 << 20) - 1, 5], [(1 << 20) + 1, 3], [7] * 300,
                                    [3 << 20], [(1 << 20) - 1, 1, 1 << 20, 2]])
def test_any_write_pattern_gives_the_same_segments(pieces):
    """Whole segments are encrypted straight from the caller's buffer, the rest held back: the
    blob must not depend on how the plaintext was cut into writes (memoryviews included)."""
    data = os.urandom(sum(pieces))
    dek = os.urandom(32)
    sink = io.BytesIO()
    w = EncryptingWriter(sink, dek, "obj")
    pos = 0
    for n in pieces:
        w.write(memoryview(data)[pos:pos + n])
        pos += n
    w.close()
    assert len(sink.getvalue()) == len(_blob_default(data, dek, "obj"))
    r = DecryptingReader(io.BytesIO(sink.getvalue()), dek, "obj")
    assert r.read() == data
    last = io.BytesIO()  # the whole plaintext at once, as the archive writes an in-memory object
    EncryptingWriter(last, dek, "obj").write_last(memoryview(data))
    assert len(last.getvalue()) == len(sink.getvalue())
    assert DecryptingReader(io.BytesIO(last.getvalue()), dek, "obj").read() == data


def _blob_default(data: bytes, dek: bytes, oid: str) -> bytes:
    sink = io.BytesIO()
    w = EncryptingWriter(sink, dek, oid)
    w.write(bytes(data))
    w.close()
    return sink.getvalue()
