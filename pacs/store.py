"""C-STORE SCP (PS3.4 Annex B): hand the received bytes to ``archive.store`` as received."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from storage.archive import Archive
from storage.errors import ArchiveError

from . import receive
from .status import SUCCESS, status, status_for_error

log = logging.getLogger(__name__)


def handle_store(event: Event, archive: Archive) -> Dataset:
    """Store one object; answer Success only once it is durable and indexed."""
    actor = event.assoc.requestor.ae_title
    origin = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
    try:
        if receive.is_enabled():  # the data set arrived in an encrypted spool file
            with receive.open_received(event.dataset_path) as source:
                result = archive.store(source, actor=actor, origin=origin)
        else:
            result = archive.store(event.encoded_dataset(include_meta=True), actor=actor, origin=origin)
    except ArchiveError as exc:
        log.info("C-STORE from %s refused: %s", actor, exc)
        return status_for_error(exc)
    except Exception as exc:  # noqa: BLE001 - never let one object take the association down
        log.exception("C-STORE from %s failed", actor)
        return status_for_error(exc)
    if result.status == "duplicate":
        log.info("C-STORE from %s: instance already stored, kept the first copy", actor)
    return status(SUCCESS)
