"""What the archive core hands out and keeps in flight: results, instance records, scopes.

No behaviour here beyond the dataclasses; every other module of the core imports these.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ..errors import (
    ArchiveError,
)
from ..newpatient import NewPatient

log = logging.getLogger(__name__)


CHUNK = 1 << 20


@dataclass(frozen=True)
class StoreResult:
    """What happened to one stored object."""

    status: Literal["stored", "duplicate", "replaced"]
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_ref: int
    transfer_syntax: str


@dataclass
class _Pending:
    """An object whose blob is written and fsynced, waiting to be indexed."""

    values: dict[str, Any]  # every indexed attribute of ds, decoded once
    patient_ref: int
    key_id: str
    blob_key: str
    blob_size: int
    size: int
    content_type: str
    replaced: int | None
    outcome: StoreResult | ArchiveError
    inline: bytes | None = None  # the encrypted object, when it is kept in the index database
    frame_index: bytes | None = None  # JSON FrameIndex of a native object, known at ingest
    failed: bool = False
    actor: str = ""
    origin: str = ""
    new_patient: NewPatient | None = None  # created by the transaction that indexes this object
    # blind-index tokens of a study and series this object probably creates, computed before the
    # write lock is taken (not under it); None: computed in the transaction if it creates them
    study_tokens: frozenset[bytes] | None = None
    series_tokens: frozenset[bytes] | None = None

    def fail(self, exc: ArchiveError) -> None:
        if isinstance(self.outcome, StoreResult):
            exc.sop_class_uid = self.outcome.sop_class_uid
            exc.sop_instance_uid = self.outcome.sop_instance_uid
        self.outcome, self.failed = exc, True


@dataclass(frozen=True)
class InstanceInfo:
    """Where an instance is and what a front door needs to serve it (no PHI)."""

    id: int
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    series_uid: str
    study_uid: str
    patient_ref: int
    key_id: str
    blob_key: str
    blob_size: int
    size: int
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    instance_number: int | None
    content_type: str


@dataclass(frozen=True)
class Scope:
    """What a caller may see: everything (None), one patient (a letter), optionally only some
    studies, or one provider's patients (``provider_id``: a provider's token or AE, issue 19)."""

    patient_ref: int | None = None
    study_uids: frozenset[str] | None = None
    provider_id: int | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
