"""DICOM over TLS (PS3.15 B.9, BCP 195) against ``pacs serve``, with dcmtk (``+tls``) and pynetdicom.

The server has the plain port and the TLS port, mutual TLS on, and a C-MOVE destination marked
``tls = true`` served by dcmtk ``storescp +tls``; storage commitment results go back over TLS to a
pynetdicom modality listening with an ``ssl.SSLContext``.
"""

from __future__ import annotations

import queue
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification

from pacs.commit import PUSH_MODEL_INSTANCE
from tests.conftest import Server, free_port, require, start_server, wait_for_port
from tests.dicomgen import make_study
from tests.tlscerts import Pki, make_pki

MODALITY = "TLSMOD"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def reports() -> queue.Queue:
    return queue.Queue()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, pki, reports) -> Iterator[Server]:
    """The archive (plain + TLS port, mutual TLS), a TLS C-MOVE destination and a TLS modality."""
    move_port, modality_port, tls_port = free_port(), free_port(), free_port()

    def on_report(event):  # noqa: ANN001 - pynetdicom's handler signature
        sock = event.assoc.dul.socket.socket
        reports.put((event.event_information, isinstance(sock, ssl.SSLSocket) and sock.version()))
        return 0x0000, None

    modality_ctx = _client_ctx(pki, pki.server_cert, pki.server_key, server_side=True)  # a node cert
    modality = AE(ae_title=MODALITY)
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener = modality.start_server(("127.0.0.1", modality_port), block=False, ssl_context=modality_ctx,
                                     evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    srv = start_server(
        tmp_path_factory.mktemp("dimse-tls"), PACS_DICOM_TLS="1", PACS_DICOM_TLS_PORT=str(tls_port),
        PACS_TLS_CERT_FILE=str(pki.server_cert), PACS_TLS_KEY_FILE=str(pki.server_key),
        PACS_TLS_CA_FILE=str(pki.ca), PACS_DICOM_TLS_VERIFY_CLIENT="1",
        PACS_DESTINATIONS=f"TLSDEST=127.0.0.1:{move_port}/tls,{MODALITY}=127.0.0.1:{modality_port}/tls")
    srv.extra.update(tls_port=tls_port, move_port=move_port)
    try:
        yield srv
    finally:
        listener.shutdown()
        srv.stop()


def _client_ctx(pki: Pki, cert: Path | None, key: Path | None, *, server_side: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca))
    if server_side:
        ctx.verify_mode = ssl.CERT_REQUIRED  # the archive must show its certificate to the modality
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _tls(pki: Pki, who: str = "client") -> list[str]:
    key, cert = (pki.client_key, pki.client_cert) if who == "client" else (pki.rogue_key, pki.rogue_cert)
    return ["+tls", str(key), str(cert), "+cf", str(pki.ca)]


def _run(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    require(cmd[0])
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env={"TCP_NODELAY": "1"})


def _echo(srv: Server, ctx: ssl.SSLContext | None, port: int | None = None) -> bool:
    ae = AE(ae_title="PYTLS")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port or srv.extra["tls_port"], ae_title=srv.ae_title,
                         tls_args=(ctx, "127.0.0.1") if ctx is not None else None)
    if not assoc.is_established:
        return False
    try:
        return assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def _qr_assoc(srv: Server, pki: Pki, *contexts: str, roles: list | None = None):  # noqa: ANN202
    ae = AE(ae_title="PYTLS")
    for cx in contexts:
        ae.add_requested_context(cx)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    return ae, ae.associate("127.0.0.1", srv.extra["tls_port"], ae_title=srv.ae_title, ext_neg=roles,
                            tls_args=(_client_ctx(pki, pki.client_cert, pki.client_key), "127.0.0.1"),
                            evt_handlers=[(evt.EVT_C_STORE, _keep)])


_RECEIVED: list[Dataset] = []


def _keep(event):  # noqa: ANN001, ANN202
    _RECEIVED.append(event.dataset)
    return 0x0000


def _study_query(study: str) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = study
    return q


def _get_over_tls(srv: Server, pki: Pki, study: str) -> list[Dataset]:
    from pynetdicom import build_role
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

    _RECEIVED.clear()
    _ae, assoc = _qr_assoc(srv, pki, StudyRootQueryRetrieveInformationModelGet, CTImageStorage,
                           roles=[build_role(CTImageStorage, scp_role=True)])
    assert assoc.is_established
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(_study_query(study),
                                                          StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000, statuses
    return list(_RECEIVED)


def _move_over_tls(srv: Server, pki: Pki, study: str, dest: str) -> tuple[int, int]:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    _ae, assoc = _qr_assoc(srv, pki, StudyRootQueryRetrieveInformationModelMove)
    assert assoc.is_established
    try:
        answers = [s for s, _ in assoc.send_c_move(_study_query(study), dest,
                                                   StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()
    last = answers[-1]
    return last.Status, int(last.get("NumberOfCompletedSuboperations", 0))


def test_dcmtk_and_pynetdicom_echo_store_find_get_move_over_tls(tls_server, pki, tmp_path):
    srv, port = tls_server, str(tls_server.extra["tls_port"])
    pid, name = f"TLS-{uuid.uuid4().hex[:8]}", f"Crypt^Ada{uuid.uuid4().hex[:4]}"
    paths = make_study(tmp_path / "in", n_series=1, per_series=3, patient_id=pid, patient_name=name)
    study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    tls = _tls(pki)

    assert _run("echoscu", "-aec", srv.ae_title, *tls, "127.0.0.1", port).returncode == 0
    store = _run("storescu", "-aec", srv.ae_title, *tls, "127.0.0.1", port, *map(str, paths))
    assert store.returncode == 0, store.stderr
    find = _run("findscu", "-aec", srv.ae_title, *tls, "-S", "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"PatientID={pid}", "-k", "PatientName", "-k", "StudyInstanceUID",
                "127.0.0.1", port)
    assert find.returncode == 0 and name in find.stderr and study in find.stderr, find.stderr

    # dcmtk 3.6.7's getscu and movescu have no TLS options: C-GET and C-MOVE come from pynetdicom
    got = _get_over_tls(srv, pki, study)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in paths)

    # C-MOVE to a destination with tls = true: storescp +tls, checking our certificate against the CA
    moved = tmp_path / "moved"
    moved.mkdir()
    scp = subprocess.Popen([require("storescp"), "-aet", "TLSDEST", "+tls", str(pki.server_key),
                            str(pki.server_cert), "+cf", str(pki.ca), "-od", str(moved),
                            str(srv.extra["move_port"])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(srv.extra["move_port"])
        assert _move_over_tls(srv, pki, study, "TLSDEST") == (0x0000, 3)
        assert len([p for p in moved.iterdir() if p.is_file()]) == 3
    finally:
        scp.terminate()
        scp.wait(timeout=10)

    archive = srv.archive()  # the peer certificate's subject is in the audit record
    try:
        logins = [e for e in archive.audit.events(action="login") if e.outcome == "success"]
    finally:
        archive.close()
    assert any(pki.client_subject in e.detail
               and "TLSv1." in e.detail for e in logins)


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(tls_server, pki):
    srv, port = tls_server, str(tls_server.extra["tls_port"])
    assert _run("echoscu", "-aec", srv.ae_title, "+tla", "+cf", str(pki.ca), "127.0.0.1", port).returncode != 0
    assert _run("echoscu", "-aec", srv.ae_title, *_tls(pki, "rogue"), "127.0.0.1", port).returncode != 0
    assert not _echo(srv, _client_ctx(pki, None, None))  # pynetdicom, no client certificate
    assert not _echo(srv, _client_ctx(pki, pki.rogue_cert, pki.rogue_key))  # from another CA
    assert _echo(srv, _client_ctx(pki, pki.client_cert, pki.client_key))
    archive = srv.archive()
    try:
        refused = [e.detail for e in archive.audit.events(action="login") if e.outcome == "failure"]
    finally:
        archive.close()
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in d for d in refused)
    assert any("CERTIFICATE_VERIFY_FAILED" in d for d in refused)


def test_plaintext_and_silent_clients_on_the_tls_port_do_not_hurt_the_server(tls_server, pki):
    srv, port = tls_server, tls_server.extra["tls_port"]
    good = _client_ctx(pki, pki.client_cert, pki.client_key)
    assert not _echo(srv, None, port)  # plain DICOM on the TLS port
    r = _run("echoscu", "-aec", srv.ae_title, "127.0.0.1", str(port))
    assert r.returncode != 0
    with socket.create_connection(("127.0.0.1", port)) as silent:  # connects, says nothing
        silent.sendall(b"")
        assert _echo(srv, good)  # the accept loop is not held by it (one DIMSE worker)
        assert _echo(srv, None, srv.dicom_port)  # the plain port works as before
    with socket.create_connection(("127.0.0.1", port)) as junk:
        junk.sendall(b"\x16\x03\x01\x00\x05hello" + bytes(200))  # a broken TLS record
        assert _echo(srv, good)
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        with pytest.warns(DeprecationWarning):
            old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            old.maximum_version = version
        old.set_ciphers("ALL:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="127.0.0.1")
    assert _echo(srv, good)
    assert "Traceback" not in (srv.data_dir.parent / "server.log").read_text()


def test_storage_commitment_result_goes_back_over_tls(tls_server, pki, reports, tmp_path):
    srv = tls_server
    paths = make_study(tmp_path / "in", n_series=1, per_series=1, patient_id="TLS-COMMIT")
    store = _run("storescu", "-aec", srv.ae_title, *_tls(pki), "127.0.0.1", str(srv.extra["tls_port"]),
                 str(paths[0]))
    assert store.returncode == 0, store.stderr
    ds = pydicom.dcmread(paths[0])
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", srv.extra["tls_port"], ae_title=srv.ae_title,
                         tls_args=(_client_ctx(pki, pki.client_cert, pki.client_key), "127.0.0.1"))
    assert assoc.is_established
    info = Dataset()
    info.TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    info.ReferencedSOPSequence = [item]
    try:
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE)
    finally:
        assoc.release()
    assert status.Status == 0x0000
    report, version = reports.get(timeout=30)
    assert report.TransactionUID == info.TransactionUID and version and version.startswith("TLSv1.")


def test_tls_only_closes_the_plain_port(tmp_path, pki):
    tls_port = free_port()
    (tmp_path / "srv").mkdir()
    srv = start_server(tmp_path / "srv", PACS_DICOM_TLS="1", PACS_DICOM_PLAIN="0",
                       PACS_DICOM_TLS_PORT=str(tls_port), PACS_TLS_CERT_FILE=str(pki.server_cert),
                       PACS_TLS_KEY_FILE=str(pki.server_key), PACS_TLS_CA_FILE=str(pki.ca))
    srv.extra["tls_port"] = tls_port
    try:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.dicom_port), timeout=2).close()
        assert _echo(srv, _client_ctx(pki, None, None))  # no mutual TLS: a client certificate is optional
        assert _echo(srv, _client_ctx(pki, pki.client_cert, pki.client_key))
        assert not _echo(srv, _client_ctx(pki, pki.rogue_cert, pki.rogue_key))  # shown, but untrusted
    finally:
        srv.stop()
