"""pacs.dimse.fastpath: C-STOREs served in the DUL thread behave exactly like pynetdicom's path.

Every test runs with the fast path on and off (the ``dimse_fast_store`` setting). In-process tests
use our real AE (pacs.scp) on a SQLite archive with counting wrappers around the C-STORE handler and
the fast store function (bound when the server is built), so they also check which path served
each object; server tests use a real ``pacs serve`` and real peers (dcmtk storescu, pynetdicom's
storescu app).
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from pacs import dimse, scp, store
from pacs.dimse import fastpath, receive, server
from storage.archive import Archive
from storage.config import load_settings
from storage.errors import NotFound
from tests.conftest import free_port, require, start_server
from tests.dicomgen import make_image, make_study, write
from tests.test_dimse_store import dataset_bytes, mixed_folder, same_elements, storescu_config

MODES = ["fast", "pynetdicom"]


# -- pure pieces -------------------------------------------------------------------------------------

def test_part10_header_is_what_pynetdicom_writes():
    buf = io.BytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid="1.2.3.4",
                                               transfer_syntax=ExplicitVRLittleEndian))
    assert fastpath.part10_header(CTImageStorage, "1.2.3.4", ExplicitVRLittleEndian) == buf.getvalue()


def test_command_codec_round_trips_with_pynetdicom():
    req = C_STORE()
    req.MessageID, req.Priority = 7, 0
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = CTImageStorage, "1.2.3.45"
    req.DataSet = io.BytesIO(b"x")
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    (pdata,) = [p for p in msg.encode_msg(1, 0) if p.presentation_data_value_list[0][1][0] & 1]
    cs = fastpath.decode_command(pdata.presentation_data_value_list[0][1][1:])
    assert (cs[0x0100], cs[0x0110], cs[0x0002], cs[0x1000]) == (1, 7, CTImageStorage, "1.2.3.45")
    assert cs[0x0800] != 0x0101
    rsp = fastpath.encode_store_rsp(7, CTImageStorage, "1.2.3.45", 0xC000, "bad")
    back = decode(io.BytesIO(rsp), True, True)
    assert (back.CommandField, back.MessageIDBeingRespondedTo, back.Status) == (0x8001, 7, 0xC000)
    assert back.ErrorComment == "bad" and back.AffectedSOPInstanceUID == "1.2.3.45"
    assert back.CommandGroupLength == len(rsp) - 12
    pdus = fastpath.pdata_pdus(1, rsp, 40)  # a tiny peer max PDU: fragmented, last bit on the last
    assert len(pdus) > len(rsp) + 12 and pdus[11] == 0x01


# -- in-process SCP: our AE, a SQLite archive, which path served what ----------------------------------

@dataclass
class Seen:
    spool_dir: Path
    fast: int = 0
    slow: int = 0
    spool_files: list[list[bytes]] = field(default_factory=list)

    def snapshot(self) -> None:
        """What this process holds open in the spool directory (the spool's files are unlinked)."""
        self.spool_files.append(open_files_in(self.spool_dir))


def open_files_in(directory: Path) -> list[bytes]:
    """The content of every file this process has open under ``directory`` (unlinked ones too)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            with open(f"/proc/self/fd/{fd}", "rb") as fh:
                out.append(fh.read())
    return out


def counting_handler(event: evt.Event, archive: Archive, seen: Seen) -> Any:
    seen.slow += 1
    receive.received(event)  # writes the spool's last segment; the handler reads it from the start
    seen.snapshot()
    return store.handle_store(event, archive)


def counting_fast(archive: Archive, seen: Seen, part10: Any, actor: str, origin: str) -> tuple[int, str]:
    seen.fast += 1
    seen.snapshot()
    return store.store(archive, part10, actor, origin)


def slow_handler(event: evt.Event, archive: Archive, seen: Seen) -> Any:
    time.sleep(1.5)
    return counting_handler(event, archive, seen)


def slow_fast(archive: Archive, seen: Seen, part10: Any, actor: str, origin: str) -> tuple[int, str]:
    time.sleep(1.5)
    return counting_fast(archive, seen, part10, actor, origin)


@dataclass
class Scp:
    port: int
    archive: Archive
    seen: Seen
    mode: str
    server: Any

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the server has no association left (its reader dropped whatever was half-read)."""
        deadline = time.monotonic() + timeout
        while self.server.active_associations:
            assert time.monotonic() < deadline, "the server kept the association"
            time.sleep(0.02)


@pytest.fixture(params=MODES)
def scp_server(request, tmp_path) -> Iterator[Scp]:
    spool = tmp_path / "spool"
    assert dimse.install(spool_dir=spool)
    if not receive.is_installed():  # e.g. a benchmark helper in this process went back to memory
        receive.install()
    settings = load_settings(env={}, data_dir=tmp_path / "data",
                             database_url=f"sqlite:///{tmp_path / 'index.sqlite'}",
                             dimse_fast_store=request.param == "fast")
    archive = Archive(settings, create_key=True)
    seen = Seen(spool)
    slow = "slow_store" in request.fixturenames
    handlers = [h for h in scp.handlers(archive, settings) if h[0] is not evt.EVT_C_STORE]
    handlers.append((evt.EVT_C_STORE, slow_handler if slow else counting_handler, [archive, seen]))
    fast = (slow_fast if slow else counting_fast, [archive, seen]) if request.param == "fast" else None
    port = free_port()
    ae = scp.make_ae(settings)
    if slow:
        ae.network_timeout = 0.5
    srv = server.make_server(ae, "127.0.0.1", port, evt_handlers=handlers, fast_store=fast)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Scp(port, archive, seen, request.param, srv)
    finally:
        srv.shutdown()
        server.stop_server(srv, 2)
        thread.join(5)
        archive.close()


def scu(*contexts: str) -> AE:
    ae = AE(ae_title="FASTSCU")
    for cx in contexts:
        ae.add_requested_context(cx, ExplicitVRLittleEndian)
    return ae


def assert_path(s: Scp, n: int) -> None:
    assert (s.seen.fast, s.seen.slow) == ((n, 0) if s.mode == "fast" else (0, n))


def test_one_association_mixes_echo_store_find_store(scp_server: Scp):
    a, b = make_image(patient_id="MIXED1"), make_image(patient_id="MIXED1", modality="MR")
    ae = scu(Verification, CTImageStorage, MRImageStorage, StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", scp_server.port, ae_title="PACS")
    assert assoc.is_established
    fast = scp_server.mode == "fast"
    assert assoc.acceptor.maximum_length == (load_settings(env={}).dimse_max_pdu if fast else 16382)
    try:
        assert assoc.send_c_echo().Status == 0
        assert assoc.send_c_store(a).Status == 0
        q = Dataset()
        q.QueryRetrieveLevel, q.PatientID, q.StudyInstanceUID = "STUDY", "MIXED1", ""
        found = [ds.StudyInstanceUID for st, ds in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)
                 if st.Status in (0xFF00, 0xFF01)]
        assert found == [a.StudyInstanceUID]
        assert assoc.send_c_store(b).Status == 0
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    assert_path(scp_server, 2)
    for ds in (a, b):
        (info,) = scp_server.archive.instances(sop_uid=ds.SOPInstanceUID)
        assert same_elements(scp_server.archive.dataset(info), ds)


def test_large_data_set_goes_through_the_encrypted_spool(scp_server: Scp, monkeypatch, tmp_path):
    monkeypatch.setattr(receive, "MEMORY_LIMIT", 64 << 10)
    ds = make_image(patient_id="SPOOL1", patient_name="SPOOL^MARKER", rows=512, columns=512)
    path = write(ds, tmp_path)
    ae = scu(CTImageStorage)
    ae.maximum_pdu_size = 16382
    assoc = ae.associate("127.0.0.1", scp_server.port, ae_title="PACS")
    assert assoc.send_c_store(path).Status == 0
    assoc.release()
    assert_path(scp_server, 1)
    (files,) = scp_server.seen.spool_files
    assert len(files) == 1 and len(files[0]) > 512 * 512 * 2  # the whole data set, in the spool
    assert b"SPOOL^MARKER" not in files[0] and ds.SOPInstanceUID.encode() not in files[0]
    assert list(scp_server.seen.spool_dir.iterdir()) == []  # unlinked from the start
    assert open_files_in(scp_server.seen.spool_dir) == []  # and closed once stored
    (info,) = scp_server.archive.instances(sop_uid=ds.SOPInstanceUID)
    assert dataset_bytes(scp_server.archive.read_bytes(info)) == dataset_bytes(path.read_bytes())


def raw_store_rq(sop_class: str, sop_uid: str, data: bytes, cx_id: int, max_pdu: int) -> list[bytes]:
    """Encoded P-DATA-TF PDUs of one C-STORE-RQ, as pynetdicom would send them."""
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = sop_class, sop_uid
    req.DataSet = io.BytesIO(data)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    out = []
    for p in msg.encode_msg(cx_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p)
        out.append(pdu.encode())
    return out


def encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    return raw[144 + struct.unpack("<I", raw[140:144])[0]:]


def send_raw(assoc: Any, req: C_STORE, cx_id: int) -> Any:
    """Send a hand-made C-STORE-RQ and wait for its response (as send_c_store does, minus its checks)."""
    assoc._reactor_checkpoint.clear()  # the SCU's reactor must not take the response
    try:
        assoc.dimse.send_msg(req, cx_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return rsp


def test_sop_class_not_matching_its_context_is_refused(scp_server: Scp):
    ds = make_image(patient_id="WRONG1")  # a CT, announced as MR on the CT context
    ae = scu(CTImageStorage, MRImageStorage)
    assoc = ae.associate("127.0.0.1", scp_server.port, ae_title="PACS")
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
    req = C_STORE()
    req.MessageID, req.Priority = 5, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = MRImageStorage, ds.SOPInstanceUID
    req.DataSet = io.BytesIO(encoded(ds))
    rsp = send_raw(assoc, req, cx.context_id)
    assert rsp.Status == 0x0122 and rsp.ErrorComment
    assert assoc.send_c_store(ds).Status == 0  # the same object, properly announced, is stored
    assoc.release()
    (info,) = scp_server.archive.instances(sop_uid=ds.SOPInstanceUID)
    assert info.sop_class_uid == CTImageStorage


def test_malformed_data_set_fails_and_association_lives_on(scp_server: Scp):
    good = make_image(patient_id="BAD2")
    ae = scu(CTImageStorage, Verification)
    assoc = ae.associate("127.0.0.1", scp_server.port, ae_title="PACS")
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
    uid = generate_uid()
    req = C_STORE()
    req.MessageID, req.Priority = 9, 2
    req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = CTImageStorage, uid
    req.DataSet = io.BytesIO(b"\x08\x00\x16\x00UI\xff\xffgarbage" * 8)
    rsp = send_raw(assoc, req, cx.context_id)
    assert rsp.Status == 0xC000 and rsp.ErrorComment  # Cannot Understand: the archive refused it
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(good).Status == 0
    assoc.release()
    with pytest.raises(NotFound):
        scp_server.archive.instances(sop_uid=uid)
    assert list(scp_server.seen.spool_dir.iterdir()) == []


@pytest.mark.parametrize("how", ["abort", "protocol-error"])
def test_association_ended_mid_data_set_stores_nothing(scp_server: Scp, how: str):
    ds = make_image(patient_id="ABORT1", rows=256, columns=256)
    ae = scu(CTImageStorage, Verification)
    assoc = ae.associate("127.0.0.1", scp_server.port, ae_title="PACS")
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == CTImageStorage)
    pdus = raw_store_rq(CTImageStorage, ds.SOPInstanceUID, encoded(ds), cx.context_id, 16382)
    assert len(pdus) > 3
    sock = assoc.dul.socket.socket
    sock.sendall(b"".join(pdus[:2]))  # the command and the first data fragment
    if how == "abort":
        assoc.abort()
    else:  # a new command where the rest of the data set was expected
        sock.sendall(raw_store_rq(CTImageStorage, generate_uid(), b"x" * 10, cx.context_id, 16382)[0])
        deadline = time.monotonic() + (10 if scp_server.mode == "fast" else 0.5)
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.02)
        if scp_server.mode == "fast":
            assert assoc.is_aborted  # A-ABORT from the SCP (PS3.8 9.3.8)
        else:  # pynetdicom appends it to the half-read message and waits: we give up
            assoc.abort()
    scp_server.wait_idle()
    with pytest.raises(NotFound):
        scp_server.archive.instances(sop_uid=ds.SOPInstanceUID)
    assert list(scp_server.seen.spool_dir.iterdir()) == []
    assert open_files_in(scp_server.seen.spool_dir) == []
    assert_path(scp_server, 0)
    again = ae.associate("127.0.0.1", scp_server.port, ae_title="PACS")
    assert again.is_established and again.send_c_store(ds).Status == 0
    again.release()


@pytest.fixture
def slow_store() -> None:
    """Marks a test whose SCP stores slowly (1.5 s) with a 0.5 s network timeout."""


def test_store_longer_than_the_network_timeout_is_not_idleness(slow_store, scp_server: Scp):
    ds = make_image(patient_id="SLOW1")
    assoc = scu(CTImageStorage, Verification).associate("127.0.0.1", scp_server.port, ae_title="PACS")
    assert assoc.send_c_store(ds).Status == 0
    assert assoc.send_c_echo().Status == 0  # the association outlived the long store
    assert assoc.is_established and not assoc.is_aborted
    assoc.release()
    assert assoc.is_released
    assert_path(scp_server, 1)
    assert scp_server.archive.instances(sop_uid=ds.SOPInstanceUID)


# -- a real pacs serve, real peers ---------------------------------------------------------------------

@pytest.fixture(scope="module", params=MODES)
def served(request, tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("fast"),
                       PACS_DIMSE_FAST_STORE="1" if request.param == "fast" else "0")
    yield srv
    srv.stop()


def stored_data_sets(server, uids) -> dict[str, bytes]:
    archive = server.archive()
    try:
        return {u: dataset_bytes(archive.read_bytes(archive.instances(sop_uid=u)[0])) for u in uids}
    finally:
        archive.close()


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})


def test_dcmtk_storescu_mixed_folder(served, tmp_path):
    require("storescu")
    files = mixed_folder(tmp_path / "in")
    cfg = storescu_config(list(files.values()), tmp_path / "mixed.cfg")
    r = run(["storescu", "-aec", "PACS", "-xf", str(cfg), "Mixed", "+sd",
             "127.0.0.1", str(served.dicom_port), str(tmp_path / "in")])
    assert r.returncode == 0, r.stderr + r.stdout
    study = make_study(tmp_path / "plain", n_series=2, per_series=3, patient_id="DEFPROF")
    r = run(["storescu", "-aec", "PACS", "-xf", "/etc/dcmtk/storescu.cfg", "Default", "+sd",
             "127.0.0.1", str(served.dicom_port), str(tmp_path / "plain")])
    assert r.returncode == 0, r.stderr + r.stdout
    held = stored_data_sets(served, [*files, *(str(pydicom.dcmread(p).SOPInstanceUID) for p in study)])
    re_encoded = set()
    archive = served.archive()
    try:
        for uid, path in files.items():
            (info,) = archive.instances(sop_uid=uid)
            assert same_elements(archive.dataset(info), pydicom.dcmread(path)), path.name
            if held[uid] != dataset_bytes(path.read_bytes()):
                re_encoded.add(uid)
    finally:
        archive.close()
    # dcmtk re-encodes exactly the files with undefined-length sequences or items; the rest as they are
    assert re_encoded == {uid for uid, path in files.items() if undefined_lengths(path)}
    for p in study:
        assert held[str(pydicom.dcmread(p).SOPInstanceUID)] == dataset_bytes(p.read_bytes())


def undefined_lengths(path: Path) -> bool:
    """Does this file hold a sequence or an item of undefined length (which dcmtk sends defined)?"""
    found = False

    def visit(ds: Dataset) -> None:
        nonlocal found
        found = found or bool(getattr(ds, "is_undefined_length_sequence_item", False))
        for elem in ds:
            if elem.VR == "SQ":
                found = found or elem.is_undefined_length
                for item in elem.value:
                    visit(item)

    visit(pydicom.dcmread(path, stop_before_pixels=True))
    return found


def test_pynetdicom_storescu_app_folder(served, tmp_path):
    folder = tmp_path / "in"
    for path in mixed_folder(tmp_path / "samples").values():  # new UIDs: dcmtk's test stored these
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        write(ds, folder)
    write(make_image(patient_id="PYAPP2", modality="MR", rows=300, columns=300), folder)
    files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in folder.iterdir()}
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in files.values()}
    assert len(files) >= 8 and len(syntaxes) >= 4
    r = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "-aec", "PACS", "-r", "-cx",
                        "127.0.0.1", str(served.dicom_port), str(folder)],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    held = stored_data_sets(served, files)
    for uid, p in files.items():  # pynetdicom sends each file's data set as it is
        assert held[uid] == dataset_bytes(p.read_bytes()), p.name
    spool = served.data_dir / "tmp"
    assert not spool.exists() or list(spool.iterdir()) == []
