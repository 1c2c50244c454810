"""C-STORE SCP (PS3.4 Annex B): hand the received bytes to ``archive.store`` as received.

One function, :func:`store`, serves both receive paths: pynetdicom's EVT_C_STORE handler
(:func:`handle_store`) and the fast path in the DUL thread (:mod:`pacs.dimse.fastpath`), both bound
to the archive when the server is built (``pacs.scp.handlers`` and ``pacs.scp.fast_store``).
"""

from __future__ import annotations

import logging
import time
from typing import BinaryIO

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from storage import metrics
from storage.archive import Archive
from storage.errors import ArchiveError
from storage.tenancy import ProviderRef

from . import tenancy
from .dimse import fastpath, idle, receive
from .status import NOT_AUTHORIZED, SOP_CLASS_NOT_SUPPORTED, SUCCESS, status, status_for_error

log = logging.getLogger(__name__)

def store(archive: Archive, part10: bytes | BinaryIO, actor: str, origin: str,
          provider: ProviderRef | None = None) -> tuple[int, str]:
    """Store one Part 10 object for ``provider`` (None: default); (Success, "") only once it is
    durable and indexed.

    ArchiveError -> its failure status (pacs.status); anything else -> a processing failure, logged
    without PHI. Never raises.
    """
    started = time.perf_counter()
    try:
        result = archive.store(part10, actor=actor, origin=origin, provider=provider)
    except ArchiveError as exc:
        log.info("C-STORE from %s refused: %s", actor, exc)
        return _refused(exc, started)
    except Exception as exc:  # never let one object take the association down
        log.exception("C-STORE from %s failed", actor)
        return _refused(exc, started)
    if result.status == "duplicate":
        log.info("C-STORE from %s: instance already stored, kept the first copy", actor)
    metrics.stored("dimse")
    metrics.dimse_request("C-STORE", "success", time.perf_counter() - started)
    return SUCCESS, ""


def store_as_tenant(archive: Archive, tenants: tenancy.Tenants, part10: bytes | BinaryIO, actor: str,
                    origin: str) -> tuple[int, str]:
    """:func:`store` for the provider of the association (the fast path's binding, pacs/scp.py)."""
    try:
        provider = tenants.by_origin(actor, origin).provider
    except tenancy.Refused:
        return _outcome(status(NOT_AUTHORIZED, tenancy.REFUSED_COMMENT))
    return store(archive, part10, actor, origin, provider)


def _refused(exc: BaseException, started: float) -> tuple[int, str]:
    metrics.refused("dimse", metrics.reason_of(exc))
    metrics.dimse_request("C-STORE", "failure", time.perf_counter() - started)
    return _outcome(status_for_error(exc))


def _outcome(ds: Dataset) -> tuple[int, str]:
    return int(ds.Status), str(ds.get("ErrorComment", ""))


def handle_store(event: Event, archive: Archive, tenants: tenancy.Tenants | None = None) -> Dataset:
    """EVT_C_STORE handler: store one object; answer Success only once it is durable and indexed."""
    actor = event.assoc.requestor.ae_title
    try:
        provider = tenants.of(event.assoc).provider if tenants is not None else None
    except tenancy.Refused:
        return status(NOT_AUTHORIZED, tenancy.REFUSED_COMMENT)
    origin = f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"
    if event.request.AffectedSOPClassUID != event.context.abstract_syntax:
        return status(SOP_CLASS_NOT_SUPPORTED, fastpath.WRONG_SOP_CLASS)
    try:
        source = receive.received(event)  # our encrypted spool, or pynetdicom's bytes
    except FileNotFoundError as exc:
        return status_for_error(exc)
    except OSError as exc:  # the spool could not be written (a full disk)
        return status(*receive.refusal(exc, actor))
    if isinstance(source, bytes):
        code, comment = store(archive, source, actor, origin, provider)
    else:
        with source:
            code, comment = store(archive, source, actor, origin, provider)
    idle.restart(event.assoc)  # the time spent storing was not network idleness
    return status(code, comment)
