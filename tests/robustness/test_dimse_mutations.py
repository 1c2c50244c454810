"""Mutated C-STOREs (issue 20 part 2): a pynetdicom SCU sends a few hundred corrupted data sets, as
they are, to a real ``pacs serve``. Every request gets an answer on the same association; a refusal
is a failure status with an error comment; nothing refused is stored; what is answered Success reads
back byte-identical; afterwards ``pacs check`` finds the archive whole."""

from __future__ import annotations

import io
import os
import random
import struct
from collections import Counter
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config

from storage.errors import NotFound
from tests.conftest import start_server
from tests.dicomgen import dataset_bytes, make_image

MUTATIONS = 300
PER_ASSOCIATION = 100


def _mutate(body: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One corruption of an encoded data set: what a broken modality or an attacker might send."""
    b = bytearray(body)
    kind = rng.choice(["flip", "truncate", "length", "garbage", "splice", "tag", "zero"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del b[rng.randrange(1, len(b)):]
    elif kind == "length":  # an element length made huge, odd or zero
        at = rng.randrange(0, len(b) - 8)
        b[at + 4:at + 8] = struct.pack("<I", rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 1, 3, 0, len(b) * 2]))
    elif kind == "garbage":
        at = rng.randrange(len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == "splice":  # the start of the data set again, in the middle
        at = rng.randrange(len(b))
        b[at:at] = body[:rng.randint(8, 200)]
    elif kind == "tag":  # a tag rewritten into a private, a group length or a sequence delimiter
        at = rng.randrange(0, len(b) - 4) & ~1
        b[at:at + 4] = rng.choice([b"\x09\x00\x10\x00", b"\x08\x00\x00\x00", b"\xfe\xff\xdd\xe0",
                                   b"\xe0\x7f\x10\x00"])
    else:
        at = rng.randrange(len(b))
        b[at:at + rng.randint(1, 32)] = bytes(rng.randint(1, 32))
    return kind, bytes(b)


def _part10(ds, body: bytes, ts: str) -> bytes:  # noqa: ANN001
    """A Part 10 file with ``ds``'s meta and ``body`` as its data set (pynetdicom sends it as is)."""
    ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian)
    raw = buf.getvalue()
    return raw[:len(raw) - len(dataset_bytes(raw))] + body


def test_mutated_c_stores(tmp_path: Path, figures) -> None:  # noqa: ANN001
    seed = int(os.environ.get("PACS_TEST_MUTATION_SEED") or int.from_bytes(os.urandom(4)))
    rng = random.Random(seed)
    print(f"mutation seed {seed} (PACS_TEST_MUTATION_SEED repeats a run)")
    srv = start_server(tmp_path)
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    sent: dict[str, tuple[int, bytes]] = {}  # SOP Instance UID -> (status, data set bytes)
    files = tmp_path / "mutated"
    files.mkdir()
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, never re-encoded
    ae = AE(ae_title="MUTATOR")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)  # one context per syntax:
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)  # the SCP accepts one of each
    aborted = 0
    try:
        done = 0
        while done < MUTATIONS:
            assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title)
            assert assoc.is_established
            for _ in range(min(PER_ASSOCIATION, MUTATIONS - done)):
                ts = rng.choice([ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                ds = make_image(patient_id="MUT-PAT", patient_name="Mutant^Mia", rows=8, columns=8,
                                pixel_seed=done)
                clean = _encoded(ds, ts)
                kind, body = _mutate(clean, rng)
                kinds[kind] += 1
                path = files / f"{done}.dcm"
                path.write_bytes(_part10(ds, body, ts))
                rsp = assoc.send_c_store(path)
                done += 1
                if not assoc.is_established:
                    aborted += 1
                    print(f"association lost after a {kind!r} mutation ({path})")
                    break
                assert rsp is not None and "Status" in rsp, "a C-STORE went unanswered"
                code = int(rsp.Status)
                statuses[f"{code:04X}"] += 1
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    assert rsp.get("ErrorComment"), f"failure {code:04X} without a reason"
                sent[_stored_uid(path, ds.SOPInstanceUID)] = (code, body)
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        srv.stop()
    assert aborted == 0, f"the server aborted an association over a bad data set (seed {seed})"
    archive = srv.archive()
    stored = refused_but_stored = 0
    try:
        for uid, (code, body) in sent.items():
            try:
                infos = archive.instances(sop_uid=uid)
            except NotFound:
                assert code not in (0x0000, 0xB000, 0xB007, 0xB006), f"{uid}: Success but absent"
                continue
            if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                refused_but_stored += 1
                continue
            assert dataset_bytes(archive.read_bytes(infos[0])) == body
            stored += 1
    finally:
        archive.close()
    assert refused_but_stored == 0
    check = srv.pacs("check", "--grace", "0", check=False)
    assert check.returncode == 0, check.stdout
    assert "Traceback" not in (tmp_path / "server.log").read_text(errors="replace")
    figures(mutated_c_stores=sum(statuses.values()), mutations=dict(kinds), statuses=dict(statuses),
            stored_as_sent=stored, refused=sum(statuses.values()) - stored, associations_aborted=aborted,
            seed=seed)


def _encoded(ds, ts: str) -> bytes:  # noqa: ANN001
    """The data set of ``ds`` encoded in ``ts`` (the bytes a C-STORE carries)."""
    ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian)
    return dataset_bytes(buf.getvalue())


def _stored_uid(path: Path, requested: str) -> str:
    """The SOP Instance UID the archive indexes: the data set's own, which a mutation may have
    changed from the one in the request (the archive stores the object under its data set's UID)."""
    from storage.errors import ArchiveError
    from storage.header import read_header

    try:
        with open(path, "rb") as fh:
            return str(read_header(fh).values["SOPInstanceUID"])
    except ArchiveError:
        return requested
