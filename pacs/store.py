"""C-STORE SCP (PS3.4 Annex B): hand the received bytes to ``archive.store`` as received."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from storage.archive import Archive
from storage.errors import ArchiveError

from .status import SUCCESS, status, status_for_error

log = logging.getLogger(__name__)


def handle_store(event: Event, archive: Archive) -> Dataset:
    """Store one object; answer Success only once it is durable and indexed."""
    actor = event.assoc.requestor.ae_title
    origin = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
    try:
        path = getattr(event, "dataset_path", None) if _chunked() else None
        source = path if path is not None else event.encoded_dataset(include_meta=True)
        result = archive.store(source, actor=actor, origin=origin)
    except ArchiveError as exc:
        log.info("C-STORE from %s refused: %s", actor, exc)
        return status_for_error(exc)
    except Exception as exc:  # noqa: BLE001 - never let one object take the association down
        log.exception("C-STORE from %s failed", actor)
        return status_for_error(exc)
    if result.status == "duplicate":
        log.info("C-STORE from %s: instance already stored, kept the first copy", actor)
    return status(SUCCESS)


def _chunked() -> bool:
    from pynetdicom import _config

    return bool(getattr(_config, "STORE_RECV_CHUNKED_DATASET", False))
