"""pacs.dimse findrsp and sockets (TLS read-ahead): what a patched pynetdicom puts on and takes off
the wire is still what DICOM says.

- a pending C-FIND response travels as one P-DATA-TF holding its command and its identifier, and
  the peer (pynetdicom, dcmtk ``findscu``) gets every identifier as sent, then the final Success;
- a read over TLS takes every record already received, not one 16 KiB record per read, and still
  returns exactly the bytes asked for, in order.
"""

from __future__ import annotations

import fcntl
import shutil
import socket
import ssl
import struct
import subprocess
import termios
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

from pacs import dimse
from pacs.dimse import server, sockets
from tests.tlscerts import make_pki


def _matches(n: int) -> list[dict]:
    """What the archive would answer; one with a list value, which only pydicom encodes."""
    out = []
    for i in range(n):
        out.append({"StudyInstanceUID": generate_uid(), "PatientID": f"FR-{i:04d}",
                    "PatientName": f"SMITH^JOHN{i}" if i % 2 else f"Müller^Zoë{i}",
                    "StudyDate": "20100101"})
    out[3]["PatientID"] = ["FR-0003", "ALT-3"]
    return out


@pytest.fixture()
def find_scp() -> Iterator[tuple[int, list[dict], list]]:
    """A patched SCP answering C-FIND as pacs.find does (pacs.find.response per match)."""
    from pacs.find import response

    assert dimse.install()
    answers = _matches(7)
    sent: list = []

    def on_find(event: evt.Event):
        for match in answers:
            yield 0xFF00, response(match, event.identifier, "STUDY", "PACS")

    def on_pdu(event: evt.Event) -> None:
        sent.append(event.pdu)

    ae = AE(ae_title="PACS")
    ae.add_supported_context(FIND)
    srv = server.make_server(ae, "127.0.0.1", 0, evt_handlers=[(evt.EVT_C_FIND, on_find),
                                                              (evt.EVT_PDU_SENT, on_pdu)])
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    yield srv.server_address[1], answers, sent
    srv.shutdown()
    thread.join(5)
    server.stop_server(srv, drain_timeout=2)


def _query() -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "*"
    for kw in ("StudyInstanceUID", "PatientID", "StudyDate"):
        setattr(ds, kw, "")
    return ds


def test_pending_find_responses_are_one_pdu_each_and_arrive_whole(find_scp) -> None:
    port, answers, sent = find_scp
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    got, statuses = [], []
    for status, identifier in assoc.send_c_find(_query(), FIND):
        statuses.append(status.Status)
        if identifier is not None:
            got.append(identifier)
    assoc.release()
    assert statuses == [0xFF00] * len(answers) + [0x0000]
    def pid(value) -> str:
        return value if isinstance(value, str) else "\\".join(value)

    assert [(str(d.StudyInstanceUID), str(d.PatientName), pid(d.PatientID), d.QueryRetrieveLevel)
            for d in got] == [(m["StudyInstanceUID"], m["PatientName"], pid(m["PatientID"]), "STUDY")
                              for m in answers]
    assert all(d.SpecificCharacterSet == "ISO_IR 192" for d in got[::2])  # the non-ASCII names
    pdata = [p for p in sent if type(p).__name__ == "P_DATA_TF"]
    two_pdvs = [p for p in pdata if len(p.presentation_data_value_items) == 2]
    assert len(two_pdvs) == len(answers)  # command + identifier in one PDU per pending response
    for p in two_pdvs:
        command, data = p.presentation_data_value_items
        assert command.message_control_header_byte == "00000011"  # command, last (PS3.8 E.2)
        assert data.message_control_header_byte == "00000010"  # data set, last fragment


@pytest.mark.skipif(shutil.which("findscu") is None, reason="dcmtk missing")
def test_dcmtk_findscu_reads_the_packed_responses(find_scp, tmp_path: Path) -> None:
    port, answers, _ = find_scp
    out = subprocess.run(["findscu", "-S", "-aec", "PACS", "-k", "QueryRetrieveLevel=STUDY",
                          "-k", "PatientName=*", "-k", "StudyInstanceUID", "-k", "PatientID",
                          "-X", "-od", str(tmp_path), "127.0.0.1", str(port)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    import pydicom

    files = sorted(tmp_path.glob("rsp*.dcm"))
    assert len(files) == len(answers)
    names = sorted(str(pydicom.dcmread(f).PatientName) for f in files)
    assert names == sorted(m["PatientName"] for m in answers)


def _queued(sock: socket.socket) -> int:
    """Bytes waiting in the kernel's receive queue of ``sock`` (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_tls_read_takes_every_record_already_there(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca))
    payload = bytes(range(256)) * 64 * 5  # 80 KiB: five 16 KiB records at least
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        result: list[ssl.SSLSocket] = []
        shake = threading.Thread(target=lambda: result.append(
            server_ctx.wrap_socket(accepted, server_side=True)))
        shake.start()
        peer = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        shake.join(10)
        ours = result[0]
        try:
            peer.sendall(payload + b"END")
            deadline = time.monotonic() + 10
            while _queued(ours) < len(payload) and time.monotonic() < deadline:  # all in the kernel
                time.sleep(0.01)
            assert _queued(ours) >= len(payload)
            rx = sockets.RxBuffer()
            assert bytes(rx.read(ours, 6)) == payload[:6]
            assert rx.pending() == len(payload) + 3 - 6  # every record there, not just the first
            assert bytes(rx.read(ours, len(payload) - 6)) == payload[6:]
            assert bytes(rx.read(ours, 3)) == b"END"
        finally:
            ours.close()
            peer.close()


def test_identifiers_encoded_here_are_the_bytes_pydicom_writes() -> None:
    """pacs.find_encoding writes a response identifier byte for byte as pydicom does, in both VR
    forms; what it cannot write (a DS value, a list) it leaves to pydicom."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    from pacs.find import response_elements, response_identifier
    from pacs.find_encoding import encode_identifier

    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    for kw in ("PatientName", "PatientID", "StudyDate", "StudyTime", "StudyDescription",
               "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries",
               "AccessionNumber", "ReferringPhysicianName", "PatientBirthDate", "PatientSex"):
        setattr(ident, kw, "")
    ident.InstanceAvailability = ""
    ident.ProcedureCodeSequence = []
    matches = [
        {"StudyInstanceUID": "1.2.3.4", "PatientName": "SMITH^JOHN^A", "PatientID": "ID1",
         "StudyDate": "20100101", "StudyTime": "101010.5", "StudyDescription": "MR Brain",
         "ModalitiesInStudy": "MR\\SR", "NumberOfStudyRelatedInstances": 12,
         "NumberOfStudyRelatedSeries": "3", "AccessionNumber": "", "PatientSex": "M"},
        {"StudyInstanceUID": "1.2.3.45", "PatientName": "Müller^Zoë", "PatientID": "ÄB7",
         "StudyDescription": "Genou gauche – IRM", "ReferringPhysicianName": "Ødegaard^Å"},
        {"StudyInstanceUID": "1.2.840.99", "PatientName": None, "PatientBirthDate": "19700101"},
    ]
    for match in matches:
        elements, utf8 = response_elements(match, ident, "STUDY", "PACS")
        ds = response_identifier(match, ident, "STUDY", "PACS")
        assert sorted(elements) == sorted(int(e.tag) for e in ds)
        for implicit in (True, False):
            ours = encode_identifier(elements, implicit=implicit, utf8=utf8)
            assert ours is not None
            assert ours == encode(ds, implicit, True, False)
    assert encode_identifier({0x00081030: ("LO", ["A", "B"])}, implicit=True, utf8=False) is None
    assert encode_identifier({0x00101020: ("DS", 1.5)}, implicit=True, utf8=False) is None
    assert encode_identifier({0x00100010: ("PN", "Zoë")}, implicit=True, utf8=False) is None


def test_queued_pdata_pdus_leave_in_one_write_in_order() -> None:
    """pacs.dimse.pdusend: DT-1 writes the P-DATA-TF PDUs queued back to back at once, each encoded
    as pynetdicom encodes it, and leaves what follows them (here an A-RELEASE) in the queue."""
    import queue as queue_

    from pynetdicom import fsm
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import A_RELEASE, P_DATA

    assert dimse.install()
    from pacs.dimse import pdusend

    assert fsm.ACTIONS["DT-1"][1] is pdusend._dt_1

    class Socket:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def send(self, data: bytes) -> None:
            self.writes.append(data)

    class Dul:
        def __init__(self) -> None:
            self.to_provider_queue: queue_.Queue = queue_.Queue()
            self.socket = Socket()
            self.assoc = types.SimpleNamespace(get_handlers=lambda event: [])  # nothing bound

    dul = Dul()
    primitives = []
    for i in range(3):
        p = P_DATA()
        p.presentation_data_value_list = [[1, b"\x03" + bytes([i]) * 10]]
        primitives.append(p)
        dul.to_provider_queue.put(p)
    release = A_RELEASE()
    dul.to_provider_queue.put(release)
    assert pdusend._dt_1(dul) == "Sta6"
    assert dul.socket.writes == [b"".join(P_DATA_TF(p).encode() for p in primitives)]
    assert dul.to_provider_queue.get_nowait() is release
