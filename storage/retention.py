"""Retention and crypto-shredding (security.md "Keys", issue 6 part 6).

A patient is due when their last visit (``Patient.last_visit``, YYYYMMDD: the latest study date or
receipt) is more than ``retention_years`` ago. Applying retention shreds each due patient through
:meth:`Archive.shred_patient` (the wrapped data key is deleted first, so every blob is unreadable
from that moment, then index rows and blobs go) and deletes their letters and sessions.
:func:`start_scheduler` runs that once a day in a daemon thread of ``pacs serve``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from sqlalchemy import select

from .index.models import Patient

if TYPE_CHECKING:
    from .archive import Archive
    from .config import Settings

log = logging.getLogger(__name__)
DAY = 24 * 3600.0


@dataclass(frozen=True)
class Due:
    """A patient past retention (no PHI: the index reference and dates only)."""

    patient_ref: int
    last_visit: str
    instances: int


def cutoff(retention_years: int, today: date | None = None) -> str:
    """The YYYYMMDD before which a last visit is past retention."""
    today = today or date.today()
    try:
        edge = today.replace(year=today.year - retention_years)
    except ValueError:  # 29 February
        edge = today.replace(year=today.year - retention_years, day=28)
    return edge.strftime("%Y%m%d")


def due(archive: Archive, today: date | None = None) -> list[Due]:
    """Patients whose last visit is older than the retention period."""
    edge = cutoff(archive.settings.retention_years, today)
    with archive.sessions() as s:
        rows = s.execute(select(Patient.id, Patient.last_visit, Patient.num_instances)
                         .where(Patient.last_visit != "", Patient.last_visit < edge)
                         .order_by(Patient.id)).all()
    return [Due(r[0], r[1], r[2]) for r in rows]


def shred(archive: Archive, patient_ref: int, *, actor: str, origin: str, reason: str) -> int:
    """Shred one patient (key first) and delete their letters; returns objects removed."""
    from .letters import Letters

    n = archive.shred_patient(patient_ref, actor=actor, origin=origin, reason=reason)
    Letters(archive).forget_patient(patient_ref)
    return n


def apply(archive: Archive, *, dry_run: bool = False, today: date | None = None,
          actor: str = "retention", origin: str = "") -> list[Due]:
    """Shred every patient past retention (or only list them with ``dry_run``)."""
    patients = due(archive, today)
    if dry_run:
        return patients
    for p in patients:
        shred(archive, p.patient_ref, actor=actor, origin=origin,
              reason=f"retention: last visit {p.last_visit}")
    if patients:
        log.info("retention: shredded %d patient(s)", len(patients))
    return patients


def start_scheduler(settings: Settings, interval: float = DAY) -> threading.Event:
    """Apply retention now and then every ``interval`` seconds in a daemon thread.

    Returns an event; set it to stop the thread. Errors are logged, never raised.
    """
    stop = threading.Event()

    def run() -> None:
        from .archive import Archive

        while not stop.is_set():
            try:
                archive = Archive(settings)
                try:
                    apply(archive, actor="retention schedule")
                finally:
                    archive.close()
            except Exception:  # noqa: BLE001 - the schedule must survive a bad night
                log.exception("retention run failed")
            stop.wait(interval)

    threading.Thread(target=run, name="retention", daemon=True).start()
    return stop
