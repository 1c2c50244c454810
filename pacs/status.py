"""DIMSE status codes (PS3.7 Annex C, PS3.4 B.2.3 / C.4) and the one mapping from archive errors."""

from __future__ import annotations

from pydicom.dataset import Dataset

from storage.errors import (
    BadInput,
    BlobStoreUnavailable,
    Conflict,
    Duplicate,
    KeyUnavailable,
    NotFound,
    StorageFull,
)

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # C-FIND pending, optional keys not supported
CANCEL = 0xFE00
WARNING_SUBOPS = 0xB000  # C-MOVE/C-GET: sub-operations complete, one or more failures
DUPLICATE_SOP = 0x0111
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5: refused, not authorized (no provider for this association)
SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5.x: refused, e.g. C-STORE SOP class != its context's
OUT_OF_RESOURCES = 0xA700
MOVE_OUT_OF_RESOURCES_SUBOPS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
DATASET_MISMATCH = 0xA900  # identifier does not match SOP class
CANNOT_UNDERSTAND = 0xC000
UNABLE_TO_PROCESS = 0xC001
MOVE_UNABLE = 0xC002


def status(code: int, comment: str = "") -> Dataset:
    """A status dataset; ErrorComment is LO (64 chars) and never carries PHI."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def status_for_error(exc: BaseException) -> Dataset:
    """The C-STORE failure status for an archive error."""
    if isinstance(exc, Duplicate):
        return status(DUPLICATE_SOP, str(exc))
    if isinstance(exc, BadInput):
        return status(CANNOT_UNDERSTAND, str(exc))
    if isinstance(exc, Conflict):
        return status(DATASET_MISMATCH, str(exc))
    if isinstance(exc, BlobStoreUnavailable):
        return status(OUT_OF_RESOURCES, "the object store cannot be reached; send it again later")
    if isinstance(exc, StorageFull):
        return status(OUT_OF_RESOURCES, "out of storage space")
    if isinstance(exc, (KeyUnavailable, NotFound)):
        return status(UNABLE_TO_PROCESS, "the patient's key is unavailable")
    return status(UNABLE_TO_PROCESS, "internal error; see the server log")
