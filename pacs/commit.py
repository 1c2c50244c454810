"""Storage Commitment Push Model SCP (PS3.4 Annex J): a modality asks whether we hold what it sent.

A modality (the SCU) sends an N-ACTION (Action Type 1) on the well-known SOP Instance
1.2.840.10008.1.20.1.1, naming a Transaction UID and the SOP Instances it wants us to keep
(Referenced SOP Sequence). We answer the N-ACTION at once, then report the result in an
N-EVENT-REPORT (J.3.3): Event Type 1 when we hold every instance, 2 when some are missing, with the
held ones in the Referenced SOP Sequence and the others in the Failed SOP Sequence, each with its
Failure Reason (0112 no such object instance, 0119 class/instance conflict).

What "held" means: indexed, so its blob was fsynced first (``Archive.store``), under the SOP class
the modality names; kept until the patient's retention runs out.

The report goes on a new association we open to the modality (J.3.3.1.2: an SCP shall be able to;
J.3.3.1.3: an SCU shall accept it, with us proposing the SCP role), found by its AE title among the
configured ``destinations`` (the C-MOVE table), as Orthanc does with its DicomModalities. A modality
we cannot call back is refused at the N-ACTION with a comment naming the setting, rather than left
waiting for a report that never comes. The report is sent from a thread of its own, tried three
times when the modality cannot be reached or does not answer; a server stopped meanwhile loses it,
and the modality asks again (J.3.2.1.2).
"""

from __future__ import annotations

import logging
import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]  # pynetdicom makes its SOP classes at import time

from storage.archive import Archive, Scope
from storage.config import Destination, Settings
from storage.errors import NotFound

from .status import SUCCESS, status
from .tenancy import REFUSED_COMMENT, Refused, Tenants
from .tls import associate_args

log = logging.getLogger(__name__)

#: The well-known SOP Instance of the Push Model (PS3.4 J.3.5).
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # Action Type ID (J.3.2.1)
ALL_HELD, SOME_FAILED = 1, 2  # Event Type IDs (J.3.3.1)
NO_SUCH_INSTANCE, CLASS_INSTANCE_CONFLICT = 0x0112, 0x0119  # Failure Reason (PS3.4 Annex J)
PROCESSING_FAILURE, INVALID_ARGUMENT, NO_SUCH_ACTION = 0x0110, 0x0115, 0x0123
ATTEMPTS, RETRY_SECONDS = 3, 2.0


def handle_action(event: Event, archive: Archive, settings: Settings,
                  tenants: Tenants | None = None) -> tuple[Dataset, None]:
    """EVT_N_ACTION: check the request, answer it, and report the result from a thread.
    Instances of another provider than the association's are reported as not held (unknown)."""
    calling = event.assoc.requestor.ae_title.strip()
    try:
        scope = tenants.of(event.assoc).scope if tenants is not None else None
    except Refused:
        return _status(PROCESSING_FAILURE, REFUSED_COMMENT)
    if event.action_type != REQUEST_COMMITMENT:
        return _status(NO_SUCH_ACTION, "only Action Type 1 (request storage commitment) is supported")
    try:
        info = event.action_information
        transaction = str(info.TransactionUID)
        refs = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                for i in info.ReferencedSOPSequence]
    except Exception:  # any missing or undecodable attribute: the request is invalid
        return _status(INVALID_ARGUMENT, "needs a Transaction UID and Referenced SOP Sequence items")
    if not transaction or not refs:
        return _status(INVALID_ARGUMENT, "needs a Transaction UID and at least one referenced instance")
    destination = settings.destinations.get(calling)
    if destination is None:
        log.warning("storage commitment from %s refused: it is not among the configured destinations", calling)
        return _status(PROCESSING_FAILURE, f"{calling} is not in destinations (results go back there)")
    threading.Thread(target=_report, args=(archive, settings, calling, destination, transaction, refs,
                                           scope),
                     name="storage-commitment", daemon=True).start()
    return _status(SUCCESS)


def _status(code: int, comment: str = "") -> tuple[Dataset, None]:
    """An N-ACTION answer: the status, and no Action Reply."""
    return status(code, comment), None


def result(archive: Archive, transaction: str, refs: list[tuple[str, str]], ae_title: str,
           scope: Scope | None = None) -> tuple[int, Dataset]:
    """(Event Type ID, Event Information) for the referenced instances, as we hold them now."""
    held, failed = [], []
    for sop_class, sop_uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        try:
            stored = archive.instances(sop_uid=sop_uid, scope=scope)
        except NotFound:
            stored = []
        if stored and stored[0].sop_class_uid == sop_class:
            held.append(item)
            continue
        item.FailureReason = CLASS_INSTANCE_CONFLICT if stored else NO_SUCH_INSTANCE
        failed.append(item)
    ds = Dataset()
    ds.TransactionUID = transaction
    ds.RetrieveAETitle = ae_title
    ds.ReferencedSOPSequence = held
    if failed:
        ds.FailedSOPSequence = failed
    return (SOME_FAILED if failed else ALL_HELD), ds


def _report(archive: Archive, settings: Settings, calling: str, destination: Destination,
            transaction: str, refs: list[tuple[str, str]], scope: Scope | None = None) -> None:
    """Work out the result and send it to the modality on a new association (up to three tries)."""
    try:
        event_type, info = result(archive, transaction, refs, settings.ae_title, scope)
    except Exception:  # a thread of its own: log, never crash the worker
        log.exception("storage commitment for %s could not be worked out", calling)
        return
    ae = AE(ae_title=settings.ae_title)
    ae.connection_timeout = settings.connect_timeout
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.network_timeout
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scp_role=True)  # we are the SCP (J.3.3.1.3)
    for attempt in range(1, ATTEMPTS + 1):
        assoc = ae.associate(destination.host, destination.port, ae_title=calling, ext_neg=[role],
                             **associate_args(settings, destination))  # TLS if tls = true
        if assoc.is_established:
            try:
                status, _reply = assoc.send_n_event_report(info, event_type, StorageCommitmentPushModel,
                                                           PUSH_MODEL_INSTANCE)
            finally:
                assoc.release()
            code = getattr(status, "Status", None)
            if code == SUCCESS:
                log.info("storage commitment result sent to %s (%d held, %d failed)", calling,
                         len(info.ReferencedSOPSequence), len(info.get("FailedSOPSequence", [])))
                return
            if code is not None:  # an answer, if not a thanks: sending it again would not change it
                log.warning("%s answered the storage commitment result with status 0x%04X", calling, code)
                return
            log.warning("storage commitment: %s gave no answer to the result (try %d of %d)", calling,
                        attempt, ATTEMPTS)
        else:
            log.warning("storage commitment: cannot reach %s at %s:%d (try %d of %d)", calling,
                        destination.host, destination.port, attempt, ATTEMPTS)
        if attempt < ATTEMPTS:
            time.sleep(RETRY_SECONDS)
    log.error("storage commitment result for %s not delivered after %d tries", calling, ATTEMPTS)
