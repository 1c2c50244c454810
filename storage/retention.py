"""Retention and crypto-shredding (security.md "Retention" and "Keys", issues 6 and 13).

**The clock.** A patient's record is kept ``retention_years`` (a :class:`~storage.period.Period`)
after the later of two dates the index keeps apart: their latest study date
(``Patient.last_study_date``) and the last time the archive received anything for them
(``Patient.last_received_at``). A legacy study dated 2010 and received today is kept until today plus
the period. Sites whose law counts from the study date only set ``retention_clock = "study_date"``
(a patient with no study date then counts from receipt). A record is *due* from the day after its
period ends.

**Rails.** A run refuses, shreds nothing and writes an ``alarm`` to the audit trail when more patients
are due than ``retention_max_per_run`` allows (default 1 % of the patients, at least 10): a clock jump,
a restored old backup or a typo must not wipe the archive. A person goes past it with
``pacs retention apply --confirm``, which sets the limit of that one run to the number they confirmed.
Each patient is checked again, with their row locked, just before their key is destroyed: one who
received something since the run began is no longer due and is kept.

**Shredding** goes through :meth:`Archive.shred_patient` (the wrapped data key is deleted first, so
every blob is unreadable from that moment, then index rows and blobs go); then their letters and
sessions are deleted. ``pacs serve`` runs ``pacs retention apply --scheduled`` in a small process,
``retention_first_run_delay`` seconds after start and then daily (pacs/serve.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select

from .errors import ArchiveError
from .index.db import purge_deleted
from .index.models import Patient
from .period import Period, limit_for, parse_period

if TYPE_CHECKING:
    from .archive import Archive
    from .config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    """A patient past retention (no PHI: the index reference and dates only)."""

    patient_ref: int
    last_study_date: str  # YYYYMMDD, or "" when no study had a valid date
    last_received: date  # UTC
    due_since: date
    instances: int


class OverLimit(ArchiveError):
    """More patients are due than one run may shred without a person confirming it."""

    def __init__(self, due: int, limit: int, patients: int):
        super().__init__(
            f"{due} patient(s) are past retention, more than one run may shred "
            f"(retention_max_per_run allows {limit} of {patients} patient(s)); nothing was shredded. "
            "Check the clock and retention_years; `pacs retention apply --dry-run` lists them, "
            "`pacs retention apply --confirm` shreds them")
        self.due, self.limit, self.patients = due, limit, patients


class NoLongerDue(ArchiveError):
    """The patient received something (or their dates changed) since the run listed them."""


def today_utc() -> date:
    return datetime.now(UTC).date()


def study_date_of(values: Mapping[str, Any]) -> str:
    """A dataset's StudyDate as YYYYMMDD when it is a real date, else "" (the clock ignores it)."""
    text = str(values.get("StudyDate", "") or "").strip()[:8]
    if len(text) != 8 or not (text.isascii() and text.isdigit()):
        return ""
    try:
        date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return ""
    return text


def period(settings: Settings) -> Period:
    return parse_period(settings.retention_years)


def _date(yyyymmdd: str) -> date | None:
    try:
        return datetime.strptime(yyyymmdd, "%Y%m%d").date() if yyyymmdd else None
    except ValueError:
        return None


def clock_start(last_study_date: str, last_received: datetime | date | None, clock: str) -> date:
    """The day a patient's retention period starts from (see the module docstring)."""
    received = last_received.date() if isinstance(last_received, datetime) else last_received
    received = received or today_utc()  # never known: counts from today (the safe side)
    study = _date(last_study_date)
    if clock == "study_date":
        return study or received
    return max(received, study) if study else received


def due_date(last_study_date: str, last_received: datetime | date | None, settings: Settings) -> date:
    """The first day on which the patient is past retention."""
    start = clock_start(last_study_date, last_received, settings.retention_clock)
    return period(settings).after(start) + timedelta(days=1)


def cutoff(settings: Settings, today: date | None = None) -> date:
    """A record whose clock started before this day is past retention."""
    return period(settings).before(today or today_utc())


def _due_where(settings: Settings, today: date | None) -> Any:
    edge = cutoff(settings, today)
    edge_text, edge_time = edge.strftime("%Y%m%d"), datetime(edge.year, edge.month, edge.day)
    received_before = Patient.last_received_at < edge_time  # NULL (never known) is never due
    if settings.retention_clock == "study_date":
        return or_(and_(Patient.last_study_date != "", Patient.last_study_date < edge_text),
                   and_(Patient.last_study_date == "", received_before))
    return and_(Patient.last_study_date < edge_text, received_before)  # "" < any date


def count_due(archive: Archive, today: date | None = None) -> int:
    with archive.sessions() as s:
        return s.scalar(select(func.count(Patient.id)).where(_due_where(archive.settings, today))) or 0


def due(archive: Archive, today: date | None = None) -> list[Due]:
    """Patients past retention, oldest reference first."""
    settings = archive.settings
    with archive.sessions() as s:
        rows = s.execute(select(Patient.id, Patient.last_study_date, Patient.last_received_at,
                                Patient.num_instances)
                         .where(_due_where(settings, today)).order_by(Patient.id)).all()
    return [Due(r[0], r[1], r[2].date(), due_date(r[1], r[2], settings), r[3]) for r in rows]


def max_per_run(archive: Archive) -> tuple[int, int]:
    """(most patients one unconfirmed run may shred, patients in the archive)."""
    with archive.sessions() as s:
        patients = s.scalar(select(func.count(Patient.id))) or 0
    return limit_for(archive.settings.retention_max_per_run, patients), patients


def shred(archive: Archive, patient_ref: int, *, actor: str, origin: str, reason: str,
          today: date | None = None) -> int:
    """Shred one patient (key first) and delete their letters; returns objects removed.

    With ``today`` (a retention run), the patient's row is checked again, locked, just before the
    key goes: :class:`NoLongerDue` if they are not past retention any more.
    """
    from .letters import Letters

    check = None
    if today is not None:
        settings = archive.settings

        def check(p: Patient) -> None:
            if due_date(p.last_study_date, p.last_received_at, settings) > today:
                raise NoLongerDue("the patient received something since the run began")

    n = archive.shred_patient(patient_ref, actor=actor, origin=origin, reason=reason, check=check)
    Letters(archive).forget_patient(patient_ref)
    return n


def apply(archive: Archive, *, dry_run: bool = False, today: date | None = None,
          limit: int | None = None, actor: str = "retention", origin: str = "") -> list[Due]:
    """Shred every patient past retention (or only list them with ``dry_run``); returns them.

    Refuses with :class:`OverLimit` (and an audit ``alarm``) when more are due than ``limit``,
    by default ``retention_max_per_run``; a person who confirmed N patients passes ``limit=N``.
    """
    today = today or today_utc()
    if dry_run:
        return due(archive, today)
    allowed, patients = max_per_run(archive)
    if limit is not None:
        allowed = limit
    n = count_due(archive, today)
    if n > allowed:
        exc = OverLimit(n, allowed, patients)
        archive.audit.record("alarm", actor=actor, source=origin, outcome="alarm",
                             detail=f"retention run refused: {n} patient(s) due, limit {allowed} "
                                    f"of {patients}; nothing shredded")
        archive.audit.record("retention", actor=actor, source=origin, outcome="refused",
                             detail=f"{n} due, limit {allowed}, 0 shredded")
        raise exc
    shredded: list[Due] = []
    for p in due(archive, today)[:allowed]:
        try:
            shred(archive, p.patient_ref, actor=actor, origin=origin, today=today,
                  reason=f"retention: last study {p.last_study_date or '-'}, "
                         f"last receipt {p.last_received:%Y%m%d}, due since {p.due_since:%Y%m%d}")
        except NoLongerDue:
            log.info("retention: patient %d received new data during the run; kept", p.patient_ref)
            continue
        except ArchiveError as exc:  # e.g. shredded meanwhile by hand
            log.info("retention: patient %d not shredded: %s", p.patient_ref, exc)
            continue
        shredded.append(p)
    archive.audit.record("retention", actor=actor, source=origin,
                         detail=f"{n} due, limit {allowed}, {len(shredded)} shredded")
    if shredded:
        purge_deleted(archive.write_engine)  # each shred waited briefly for readers; now wait them out
        log.info("retention: shredded %d patient(s)", len(shredded))
    return shredded
