"""Outgoing C-STORE sub-operations for C-MOVE and C-GET (PS3.4 C.4.2.3, C.4.3.3).

Pure helpers shared by ``retrieve.py``: which presentation contexts to propose for a set of
instances, and how to make each stored instance fit the contexts the peer accepted (as stored, or
decompressed to Explicit VR Little Endian when the peer takes only uncompressed syntaxes).
pynetdicom's Q/R service class runs the association and counts the sub-operations.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from storage.archive import Archive, InstanceInfo

from .dimse import send
from .dimse.sockets import set_nodelay

log = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context ids 1..255


def proposed_contexts(infos: Iterable[InstanceInfo]) -> list[PresentationContext]:
    """One context per (SOP class, stored transfer syntax) proposing only that syntax, so the peer
    gets the object as stored when it can take it (PS3.8 9.3.2.2: the acceptor picks one syntax per
    context), plus one uncompressed context per SOP class to fall back on (decompression).
    Past 128 contexts, only the uncompressed ones."""
    pairs = list(dict.fromkeys((i.sop_class_uid, i.transfer_syntax) for i in infos))
    classes = list(dict.fromkeys(sop for sop, _ in pairs))
    fallback = [build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for sop in classes]
    if len(pairs) + len(classes) > MAX_CONTEXTS:
        return fallback[:MAX_CONTEXTS]
    return [*(build_context(sop, ts) for sop, ts in pairs), *fallback]


class AssociationHolder:
    """Captures the C-MOVE sub-association pynetdicom opens, via its EVT_ESTABLISHED handler,
    so the retrieve generator can see which contexts the destination accepted."""

    def __init__(self) -> None:
        self.assoc: Association | None = None

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_ESTABLISHED, self._on_established)]

    def _on_established(self, event: evt.Event) -> None:
        self.assoc = event.assoc
        _nodelay(event.assoc)


def _nodelay(assoc: Association) -> None:
    """TCP_NODELAY on the outgoing socket (the patched pynetdicom does it too, pacs.dimse.sockets)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    set_nodelay(sock)


def accepted_syntaxes(assoc: Association | None, sop_class: str, *, as_scu_on_get: bool = False) -> set[str]:
    """Transfer syntaxes the peer accepted for ``sop_class`` on which we may send C-STORE."""
    if assoc is None:
        return set()
    out = set()
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax != sop_class or not cx.transfer_syntax:
            continue
        if as_scu_on_get and not cx.as_scu:
            continue  # C-GET: the requestor must have taken the SCP role (PS3.7 D.3.3.4)
        out.add(str(cx.transfer_syntax[0]))
    return out


def dataset_for_peer(archive: Archive, info: InstanceInfo, accepted: set[str]) -> Dataset:
    """The stored instance, as stored if the peer accepted its syntax, else decompressed.

    On failure (unreadable object, no usable context, no decoder) returns a dataset that
    pynetdicom's ``send_c_store`` refuses, so the sub-operation counts as failed and the
    instance's UID lands in FailedSOPInstanceUIDList. Memory: one instance at a time."""
    ts = UID(info.transfer_syntax)
    if ts in accepted and send.is_installed():  # as stored, streamed from the encrypted blob
        return send.StoredObject(lambda: io.BufferedReader(archive.open(info), 1 << 20),
                                 info.sop_class_uid, info.sop_uid)
    try:
        ds = archive.dataset(info)
    except Exception:  # e.g. shredded key: a failed sub-operation, not a crash
        log.warning("C-STORE sub-operation: instance %s cannot be read", info.sop_uid)
        return _unsendable(info)
    if ts in accepted:  # stock pynetdicom: the decoded object, which it encodes again
        return ds
    uncompressed = accepted & {str(t) for t in UNCOMPRESSED}
    if not ts.is_compressed and uncompressed:
        return ds  # pynetdicom converts between uncompressed syntaxes itself
    if ts.is_compressed and uncompressed:  # to Explicit VR LE; pynetdicom re-encodes if need be
        try:
            ds.decompress(generate_instance_uid=False)  # same instance, another encoding
            return ds
        except Exception as exc:  # no decoder for this syntax
            log.warning("cannot decompress %s (%s): %s", info.sop_uid, ts.name, type(exc).__name__)
    return _unsendable(info)


def _unsendable(info: InstanceInfo) -> Dataset:
    """Has the UIDs but no File Meta: send_c_store raises, the sub-operation is counted failed."""
    ds = Dataset()
    ds.SOPClassUID = info.sop_class_uid
    ds.SOPInstanceUID = info.sop_uid
    ds.file_meta = FileMetaDataset()
    return ds
