"""pacs.dimse (sockets, reactors, handback, uids, server): a patched pynetdicom still speaks DICOM
correctly, and its sockets are set as the patches say."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from bench import gen
from pacs import dimse
from pacs.dimse import receive, server, sockets

needs_dcmtk = pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk missing")


class Received:
    """What the test SCP saw."""

    def __init__(self) -> None:
        self.datasets: dict[str, bytes] = {}
        self.nodelay: list[int] = []
        self.lock = threading.Lock()

    def on_store(self, event: evt.Event) -> int:
        raw = event.assoc.dul.socket.socket
        part10 = receive.received(event)  # our encrypted spool (patched) or pynetdicom's bytes
        if not isinstance(part10, bytes):
            with part10:
                part10 = part10.read()
        with self.lock:
            self.nodelay.append(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            self.datasets[event.request.AffectedSOPInstanceUID] = after_meta(part10)
        return 0x0000


def after_meta(part10: bytes) -> bytes:
    """The data set of a Part 10 object: what follows the File Meta group."""
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL value
    return part10[144 + group_length :]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    studies = gen.make_studies(2, 1)
    gen.write_small(root / "small", studies, 4)
    gen.write_ct(root / "ct", studies, 2)
    return root


@pytest.fixture(scope="module")
def scp() -> Iterator[tuple[int, Received, server.DimseServer]]:
    assert dimse.install()
    received = Received()
    ae = AE(ae_title="PACS")
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = 0  # unlimited: CT slices arrive as one PDU > READ_CHUNK
    srv = server.make_server(ae, "127.0.0.1", 0, evt_handlers=[(evt.EVT_C_STORE, received.on_store)])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    yield srv.server_address[1], received, srv
    srv.shutdown()
    thread.join(5)
    server.stop_server(srv, drain_timeout=2)


def dataset_bytes(path: Path) -> tuple[str, bytes]:
    """Return (SOP Instance UID, the bytes after the file meta) of a Part 10 file."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPInstanceUID), after_meta(path.read_bytes())


def client_ae() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    ae.add_requested_context(Verification)
    ae.maximum_pdu_size = 0
    return ae


def test_install_is_idempotent() -> None:
    assert dimse.install()
    assert dimse.install()
    assert dimse.active()


def test_a_response_the_reactor_takes_while_a_sender_waits_goes_back_to_the_sender() -> None:
    """The window in pynetdicom's reactor pause (pacs.dimse.handback): a response the reactor took off
    the queue during a send_*() is handed back, not dropped; with no send_*() running it is dropped,
    as pynetdicom does."""
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_ECHO

    assert dimse.install()
    assoc = Association(client_ae(), "requestor")
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0x0000
    assoc._reactor_checkpoint.clear()  # what send_c_echo() does while it waits
    assoc._serve_request(rsp, 1)
    assert assoc.dimse.msg_queue.get_nowait() == (1, rsp)
    assoc._reactor_checkpoint.set()  # nobody waiting: an unexpected response is dropped
    assoc._serve_request(rsp, 1)
    assert assoc.dimse.msg_queue.empty()


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_every_read_acknowledges_at_once() -> None:
    """pacs.dimse.sockets: each read sets TCP_QUICKACK, so a peer with Nagle's algorithm on (dcmtk
    without TCP_NODELAY=1) is not left waiting ~40 ms per message for our delayed ACK."""

    class Recording(socket.socket):
        calls: list[tuple[int, int, int]] = []

        def setsockopt(self, level, option, value):
            self.calls.append((level, option, value))
            return super().setsockopt(level, option, value)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        ours = Recording(fileno=accepted.detach())
        try:
            peer.sendall(b"x" * 10)
            rx = sockets.RxBuffer()
            assert bytes(rx.read(ours, 4)) == b"xxxx"
            assert (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1) in Recording.calls
            Recording.calls.clear()
            big = threading.Thread(target=peer.sendall, args=(b"y" * (sockets.READ_CHUNK + 10),))
            big.start()  # a large read goes straight into the PDU; the sender may block meanwhile
            assert bytes(rx.read(ours, 6 + sockets.READ_CHUNK + 10)).endswith(b"y" * 10)
            big.join(10)
            assert (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1) in Recording.calls
        finally:
            ours.close()
            peer.close()


def test_uid_checks_are_remembered_but_still_refuse_bad_uids() -> None:
    """The memoized set_uid answers as pynetdicom's does: same UIDs, same errors, every time."""
    from pynetdicom import pdu_items, utils
    from pynetdicom.pdu_items import TransferSyntaxSubItem

    assert dimse.install()
    assert pdu_items.set_uid is not utils.set_uid and pdu_items.set_uid.__wrapped__ is utils.set_uid
    for _ in range(2):
        item = TransferSyntaxSubItem()
        item.transfer_syntax_name = b"1.2.840.10008.1.2.1"
        assert item.transfer_syntax_name == "1.2.840.10008.1.2.1"
        assert pdu_items.set_uid("1.2.3", "x") == utils.set_uid("1.2.3", "x")
        with pytest.raises(ValueError):
            pdu_items.set_uid("1" * 65, "Transfer Syntax Name")
        with pytest.raises(ValueError):
            pdu_items.set_uid("", "Abstract Syntax Name", allow_empty=False)
        assert pdu_items.set_uid(None, "x") is None
        with pytest.raises(TypeError):
            pdu_items.set_uid(12, "x")


@needs_dcmtk
def test_dcmtk_storescu_byte_identical(scp, data: Path) -> None:
    port, received, _ = scp
    files = sorted((data / "small").glob("*.dcm")) + sorted((data / "ct").glob("*.dcm"))
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = ["storescu", "-aec", "PACS", "127.0.0.1", str(port), *map(str, files)]
    subprocess.run(cmd, env=env, check=True, timeout=30, capture_output=True)
    for f in files:
        uid, expected = dataset_bytes(f)
        assert received.datasets[uid] == expected
    assert received.nodelay and all(received.nodelay)


def test_pynetdicom_scu_byte_identical_and_nodelay(scp, data: Path) -> None:
    port, received, _ = scp
    assoc = client_ae().associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    client_sock = assoc.dul.socket.socket
    assert client_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    files = sorted((data / "ct").glob("*.dcm")) + sorted((data / "small").glob("*.dcm"))[:2]
    for f in files:
        status = assoc.send_c_store(f)  # sends the file's dataset bytes as they are
        assert status.Status == 0x0000
        uid, expected = dataset_bytes(f)
        assert received.datasets[uid] == expected
    assoc.release()
    assert assoc.is_released


def test_c_echo_pynetdicom_and_dcmtk(scp) -> None:
    """Back-to-back C-ECHOs over one association, both ends with TCP_NODELAY (stock pynetdicom sets
    none: ~40 ms per echo; the rate is bench/README.md's, not this test's)."""
    port, _, _ = scp
    assoc = client_ae().associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    for _ in range(20):
        assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    if shutil.which("echoscu"):
        subprocess.run(["echoscu", "-aec", "PACS", "127.0.0.1", str(port)], check=True, timeout=10)


def wait_no_associations(srv: server.DimseServer, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not srv.active_associations:
            return True
        time.sleep(0.02)
    return False


def test_release_and_abort(scp) -> None:
    port, _, srv = scp
    assert wait_no_associations(srv)
    assoc = client_ae().associate("127.0.0.1", port, ae_title="PACS")
    assoc.release()
    assert assoc.is_released
    assert wait_no_associations(srv)

    assoc = client_ae().associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    assoc.abort()
    assert assoc.is_aborted
    assert wait_no_associations(srv)


def test_idle_reactors_wait_instead_of_polling(scp, monkeypatch) -> None:
    """pacs.dimse.reactors: an open, idle association's two reactors (server and client side) each
    wake at most once per IDLE_WAIT, where pynetdicom's polling loops wake every millisecond."""
    from pacs.dimse import reactors

    wakes = {"dul": 0, "assoc": 0}

    def counting(kind: str, original):
        def wait(thread) -> None:
            wakes[kind] += 1
            original(thread)
        return wait

    port, _, _ = scp
    assoc = client_ae().associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    monkeypatch.setattr(reactors, "_dul_idle_wait", counting("dul", reactors._dul_idle_wait))
    monkeypatch.setattr(reactors, "_assoc_idle_wait", counting("assoc", reactors._assoc_idle_wait))
    t0 = time.monotonic()
    deadline = t0 + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    monkeypatch.undo()
    assoc.release()
    bound = 2 * (elapsed / reactors.IDLE_WAIT + 2)  # two associations' reactors of each kind
    assert 0 < wakes["dul"] <= bound and 0 < wakes["assoc"] <= bound, wakes


@needs_dcmtk
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_forever_stops_on_sigterm(tmp_path: Path, data: Path, workers: int) -> None:
    """bench.bare_scp runs pacs.dimse.server.serve_forever (and pacs.workers.prefork for 2)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    cmd = ["python", "-m", "bench.bare_scp", "--port", str(port), "--dir", str(tmp_path / "d"),
           "--workers", str(workers), "--no-fsync"]
    proc = subprocess.Popen([sys.executable, *cmd[1:]],
                            cwd=root)
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(["echoscu", "-aec", "PACS", "127.0.0.1", str(port)],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        files = [str(f) for f in sorted((data / "small").glob("*.dcm"))]
        subprocess.run(["storescu", "-aec", "PACS", "127.0.0.1", str(port), *files],
                       check=True, timeout=30, capture_output=True)
        assert len(list((tmp_path / "d").iterdir())) == len(files)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0  # stopped cleanly on SIGTERM (drain: bench.bare_scp's default)
