"""Storage Commitment Push Model (PS3.4 Annex J) against ``pacs serve``, with a pynetdicom modality.

The modality stores with dcmtk ``storescu``, asks for commitment with an N-ACTION, releases, and
receives the result as an N-EVENT-REPORT on an association the archive opens back to it.
"""

from __future__ import annotations

import queue
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from pacs.commit import PUSH_MODEL_INSTANCE
from tests.conftest import free_port, require, start_server
from tests.dicomgen import make_image, write

MODALITY = "MODALITY1"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The archive, with MODALITY1 configured as a destination, and the modality's listening side."""
    reports: queue.Queue = queue.Queue()

    def on_report(event):  # pynetdicom's handler signature
        reports.put((event.event_type, event.event_information, event.assoc.requestor.ae_title))
        return 0x0000, None

    port = free_port()
    modality = AE(ae_title=MODALITY)
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener = modality.start_server(("127.0.0.1", port), block=False,
                                     evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    srv = start_server(tmp_path_factory.mktemp("commit"), PACS_DESTINATIONS=f"{MODALITY}=127.0.0.1:{port}")
    try:
        yield srv, reports
    finally:
        listener.shutdown()
        srv.stop()


def _store(srv, folder: Path, count: int) -> list[Dataset]:
    require("storescu")
    study, series = generate_uid(), generate_uid()
    images = [make_image(patient_id="COMMIT1", study_uid=study, series_uid=series, modality="MR",
                         instance_number=i + 1) for i in range(count)]
    paths = [write(ds, folder) for ds in images]
    r = subprocess.run(["storescu", "-aec", srv.ae_title, "127.0.0.1", str(srv.dicom_port), *map(str, paths)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return images


def _request(srv, refs: list[tuple[str, str]], *, calling: str = MODALITY,
             transaction: str | None = None) -> Dataset:
    """One N-ACTION on its own association, released at once; the N-ACTION-RSP status dataset."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", srv.dicom_port, ae_title=srv.ae_title)
    assert assoc.is_established
    info = Dataset()
    if transaction is not None:
        info.TransactionUID = transaction
    items = []
    for sop_class, sop_uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        items.append(item)
    info.ReferencedSOPSequence = items
    try:
        status, _reply = assoc.send_n_action(info, 1, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE)
    finally:
        assoc.release()
    return status


def _drain(reports: queue.Queue) -> None:
    """Forget reports left by an earlier test of this module (each test expects only its own)."""
    while not reports.empty():
        reports.get_nowait()


def _reports_sent(srv) -> int:
    """How many results the archive has delivered: its report thread logs this, then ends."""
    log = (srv.data_dir.parent / "server.log").read_text(errors="replace")
    return log.count(f"storage commitment result sent to {MODALITY}")


def _wait_reports_sent(srv, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _reports_sent(srv) < count:
        assert time.monotonic() < deadline, f"fewer than {count} results delivered"
        time.sleep(0.05)


def test_commitment_reports_held_and_missing_instances_on_a_new_association(site, tmp_path):
    srv, reports = site
    _drain(reports)
    sent_before = _reports_sent(srv)
    held = _store(srv, tmp_path / "in", 2)
    unknown = generate_uid()
    refs = [(MRImageStorage, str(ds.SOPInstanceUID)) for ds in held]
    refs += [(MRImageStorage, unknown), ("1.2.840.10008.5.1.4.1.1.2", str(held[0].SOPInstanceUID))]
    transaction = generate_uid()
    status = _request(srv, refs, transaction=transaction)
    assert status.Status == 0x0000

    event_type, info, caller = reports.get(timeout=30)
    assert caller.strip() == srv.ae_title
    assert event_type == 2  # failures exist
    assert info.TransactionUID == transaction
    assert info.RetrieveAETitle == srv.ae_title
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence] == refs[:2]
    failed = {(i.ReferencedSOPInstanceUID, i.ReferencedSOPClassUID): i.FailureReason for i in info.FailedSOPSequence}
    assert failed == {(unknown, MRImageStorage): 0x0112,  # no such object instance
                      (str(held[0].SOPInstanceUID), "1.2.840.10008.5.1.4.1.1.2"): 0x0119}  # class conflict

    second = generate_uid()
    all_held = _request(srv, refs[:2], transaction=second)
    assert all_held.Status == 0x0000
    event_type, info, _ = reports.get(timeout=30)
    assert info.TransactionUID == second  # not the first one again
    assert event_type == 1 and len(info.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in info

    # a report answered once is not sent again: both report threads logged their delivery (their
    # last act before they end), and nothing more arrived
    _wait_reports_sent(srv, sent_before + 2)
    assert reports.empty()


def test_requests_the_archive_cannot_answer_are_refused_with_a_reason(site):
    srv, reports = site
    _drain(reports)
    sent_before = _reports_sent(srv)
    stranger = _request(srv, [(MRImageStorage, generate_uid())], calling="STRANGER", transaction=generate_uid())
    assert stranger.Status == 0x0110
    assert "destinations" in stranger.ErrorComment  # the setting that would let us call it back
    no_transaction = _request(srv, [(MRImageStorage, generate_uid())])
    assert no_transaction.Status == 0x0115
    assert "Transaction UID" in no_transaction.ErrorComment
    # No report for either: a request accepted after them is the first and only one reported
    after = generate_uid()
    assert _request(srv, [(MRImageStorage, generate_uid())], transaction=after).Status == 0x0000
    assert reports.get(timeout=30)[1].TransactionUID == after
    _wait_reports_sent(srv, sent_before + 1)
    assert _reports_sent(srv) == sent_before + 1 and reports.empty()
    assert "Traceback" not in (srv.data_dir.parent / "server.log").read_text()
