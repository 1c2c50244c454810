"""What the archive counts for Prometheus (``/metrics``): stores, refusals, latencies, queue depths.

One registry of metric names for both doors, in prometheus_client's multiprocess mode: ``pacs serve``
runs several DIMSE and gunicorn worker processes, each writing its own counters to memory-mapped files
under ``PROMETHEUS_MULTIPROC_DIR`` (set by :func:`prepare` in the parent before any child starts),
and ``/metrics`` adds them up. Labels are closed sets chosen here (a door, a service, a reason, a
status class): never a UID, a name, an address or anything else from a request, so nothing about a
patient reaches the metrics or the files behind them.

prometheus_client is imported lazily: it picks multiprocess mode when it is first imported, so the
environment variable must be set before that, and processes that never count (``pacs import`` and
the other admin commands) never load it. Counting never fails a request: any error is swallowed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Closed label values (anything else is counted as "other").
DOORS = ("dimse", "stow", "upload")
REASONS = ("out_of_resources", "duplicate", "study_mismatch", "bad_input", "processing_failure")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def run_dir(pid: int) -> Path:
    """Where the ``pacs serve`` of process ``pid`` keeps its metric files: in memory (``/dev/shm``)
    where there is one, so a full data disk cannot fault a worker writing a counter (prometheus_client
    writes through mmap: a page it cannot back is SIGBUS, not an error)."""
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() else Path(tempfile.gettempdir())) / f"pacs-metrics-{pid}"


def prepare() -> Path:
    """Empty metric files for this ``pacs serve`` (its children inherit the environment variable)."""
    path = run_dir(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    os.environ[ENV] = str(path)
    return path


def remove(path: Path) -> None:
    """Drop the metric files when ``pacs serve`` stops."""
    shutil.rmtree(path, ignore_errors=True)


def enabled() -> bool:
    return bool(os.environ.get(ENV))


@cache
def _metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "stored": Counter("pacs_stored_instances", "Instances stored, by door", ["door"]),
        "refused": Counter("pacs_store_refusals", "Instances refused, by door and reason",
                           ["door", "reason"]),
        "http": Counter("pacs_http_requests", "HTTP requests, by service and status class",
                        ["service", "status"]),
        "http_seconds": Histogram("pacs_http_request_seconds", "HTTP request latency, by service",
                                  ["service"], buckets=LATENCY_BUCKETS),
        "dimse": Counter("pacs_dimse_requests", "DIMSE requests, by service and outcome",
                         ["service", "outcome"]),
        "dimse_seconds": Histogram("pacs_dimse_request_seconds", "DIMSE request latency, by service",
                                   ["service"], buckets=LATENCY_BUCKETS),
        "associations": Counter("pacs_dimse_associations", "DIMSE associations, by outcome",
                                ["outcome"]),
        "active": Gauge("pacs_dimse_associations_active", "DIMSE associations open now",
                        multiprocess_mode="livesum"),
        "commit_queue": Gauge("pacs_ingest_commit_queue", "Stores waiting for the next group commit",
                              multiprocess_mode="livesum"),
    }


def _closed(value: str, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else "other"


def _update(name: str, method: str, value: float, **labels: str) -> None:
    """``metric[labels].method(value)``, or nothing when metrics are off or anything goes wrong."""
    if not enabled():
        return
    with contextlib.suppress(Exception):  # counting never fails a request
        metric = _metrics()[name]
        getattr(metric.labels(**labels) if labels else metric, method)(value)


def stored(door: str, n: int = 1) -> None:
    if n:
        _update("stored", "inc", n, door=_closed(door, DOORS))


def refused(door: str, reason: str) -> None:
    _update("refused", "inc", 1, door=_closed(door, DOORS), reason=_closed(reason, REASONS))


def reason_of(exc: BaseException) -> str:
    """The refusal reason label of an error raised while storing one object."""
    from .errors import BadInput, Duplicate, StorageFull, StudyMismatch

    for cls, reason in ((StorageFull, "out_of_resources"), (Duplicate, "duplicate"),
                        (StudyMismatch, "study_mismatch"), (BadInput, "bad_input")):
        if isinstance(exc, cls):
            return reason
    return "processing_failure"


def http_request(service: str, status_class: str, seconds: float) -> None:
    """One answered HTTP request; ``service`` is a blueprint name (a closed set of our own),
    ``status_class`` one of :data:`STATUS_CLASSES` (the front door classifies its status)."""
    _update("http", "inc", 1, service=service, status=_closed(status_class, STATUS_CLASSES))
    _update("http_seconds", "observe", seconds, service=service)


def dimse_request(service: str, outcome: str, seconds: float) -> None:
    """One answered DIMSE request: ``service`` like ``C-FIND``, ``outcome`` success|warning|failure."""
    _update("dimse", "inc", 1, service=service, outcome=outcome)
    _update("dimse_seconds", "observe", seconds, service=service)


def association(outcome: str) -> None:
    """``accepted`` or ``rejected``; an accepted one counts as active until :func:`association_ended`."""
    _update("associations", "inc", 1, outcome=outcome)
    if outcome == "accepted":
        _update("active", "inc", 1)


def association_ended() -> None:
    _update("active", "dec", 1)


def commit_queue(depth: int) -> None:
    _update("commit_queue", "set", depth)


def exposition(blob_status: dict[str, Any] | None = None,
               audit_backlog: dict[str, float] | None = None) -> tuple[bytes, str]:
    """Every process's metrics added up, in the Prometheus text format, and its content type.

    ``blob_status``: what a blob store over several locations reports at this moment (the dispersal
    store's ``status()``): locations up, corrupt shares seen, objects below full redundancy.
    ``audit_backlog``: audit events waiting for the audit record repository (storage/atna/queue.py).
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if enabled():
        MultiProcessCollector(registry)
    if blob_status is not None:
        registry.register(_BlobStatus(blob_status))
    if audit_backlog is not None:
        registry.register(_AuditBacklog(audit_backlog))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _AuditBacklog:
    """Gauges of the delivery to the audit record repository (IHE ATNA), read at scrape time."""

    def __init__(self, backlog: dict[str, float]) -> None:
        self.backlog = backlog

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("pacs_audit_events_waiting",
                                "Audit events recorded and not yet taken by the audit record repository",
                                value=self.backlog["waiting"])
        yield GaugeMetricFamily("pacs_audit_seconds_since_delivery",
                                "Seconds since audit events last went to the repository (-1: never)",
                                value=self.backlog["since_delivery"])


class _BlobStatus:
    """Gauges read from a blob store's status at scrape time (locations labelled by position)."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("pacs_blob_location_up", "A blob location answers (1) or not (0)",
                               labels=["location"])
        corrupt = GaugeMetricFamily("pacs_blob_location_corrupt_shares_seen",
                                    "Corrupt shares this process has read from a location",
                                    labels=["location"])
        for i, loc in enumerate(self.status.get("locations", [])):
            up.add_metric([str(i)], 1.0 if loc.get("up") else 0.0)
            corrupt.add_metric([str(i)], float(loc.get("corrupt_shares_seen", 0)))
        below = GaugeMetricFamily("pacs_blob_objects_below_full_redundancy",
                                  "Objects with shares missing, waiting for pacs blobs repair")
        below.add_metric([], float(self.status.get("objects_below_full_redundancy", 0)))
        yield from (up, corrupt, below)


def process_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters stay counted)."""
    if not enabled():
        return
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
