"""Series metadata for WADO-RS (PS3.18 10.4.1.1.2, DICOM JSON of Annex F), computed once per series.

The JSON array of every instance header of a series is built from the stored objects, compressed,
sealed under a key derived from the patient's data key (so crypto-shredding covers it) and kept in
``Series.metadata_cache``. The archive clears that column whenever the series changes; a cache
computed while the series changed is not written (the update is conditional on the row's
``updated_at`` and ``num_instances`` as read before computing).

Bulk data (binary values over :data:`BULK_THRESHOLD` bytes, and PixelData) is referenced by a
*relative* ``BulkDataURI``: ``studies/{s}/series/{r}/instances/{i}/bulkdata/{tag path}``, the tag
path being lowercase 8-hex tags joined by ``/`` with 0-based item numbers in between (``7fe00010``,
``00540016/0/00181074``). The web layer makes them absolute by one string replacement of
:data:`BULK_KEY`. No URLs and no Flask here.

Warming (:class:`MetadataWarmer`): building a 200-instance series costs ~2 s (every header is read
and decrypted), which the first viewer used to pay. Stores only clear the column (ingest stays as
fast as before); a background thread in each web process asks every ``interval`` seconds for series
whose cache is NULL and whose ``updated_at`` is older than ``settle`` seconds (the series has stopped
receiving: debounced, so a series arriving over a minute is built once, not 200 times), newest
first (what a viewer opens next), ``batch`` at a time, and builds them with :func:`series_metadata`. The question reads the
partial index ``ix_series_metadata_pending`` (only rows without a cache), so it costs well under a
millisecond however large the archive. One process warms at a time across the cluster (a
PostgreSQL advisory lock, or on SQLite an ``flock`` on ``data_dir/metadata-warmer.lock``:
storage/cluster.py; the others stay idle and take over if it dies). A series that
fails to build (e.g. an unreadable object) is skipped until it changes again. The thread holds
plaintext only in memory, like a request; what it writes is the sealed cache.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import select, update

from . import cluster
from .archive import Archive, InstanceInfo, Scope
from .crypto import open_small, seal_small
from .errors import NotFound, StorageFull, disk_full
from .index.models import Patient, Series, Study
from .keys import hkdf
from .tenancy import provider_is
from .transfer_syntaxes import is_native

log = logging.getLogger(__name__)
BULK_THRESHOLD = 1024
BULK_KEY = '"BulkDataURI":"'
_INFO = b"pacs/series-metadata/v1"


def _key(archive: Archive, key_id: str) -> bytes:
    return hkdf(archive.vault.dek(key_id), _INFO)


def _aad(series_uid: str) -> bytes:
    return f"SERIES-METADATA|{series_uid}".encode()


def series_metadata(archive: Archive, study_uid: str, series_uid: str,
                    scope: Scope | None = None, *, must_cache: bool = False) -> str:
    """JSON array text of the series' instances (relative BulkDataURIs); NotFound if not visible.

    A cache that cannot be kept for lack of space is logged and the answer returned, unless
    ``must_cache`` (the warmer), which then gets the error."""
    stmt = (select(Series.id, Series.metadata_cache, Series.updated_at, Series.num_instances,
                   Patient.key_id)
            .join(Study, Series.study_id == Study.id).join(Patient, Study.patient_id == Patient.id)
            .where(Series.series_uid == series_uid, Study.study_uid == study_uid))
    if scope is not None:
        if scope.patient_ref is not None:
            stmt = stmt.where(Patient.id == scope.patient_ref)
        if scope.provider_id is not None:
            stmt = stmt.where(provider_is(Patient.provider_id, scope.provider_id))
        if scope.study_uids is not None:
            stmt = stmt.where(Study.study_uid.in_(sorted(scope.study_uids)))
    with archive.engine.connect() as conn:  # Core, not an ORM session: this is the hot path
        row = conn.execute(stmt).first()
    if row is None:
        raise NotFound("no such series")
    if row.metadata_cache:
        plain = open_small(_key(archive, row.key_id), row.metadata_cache, _aad(series_uid))
        return zlib.decompress(plain).decode()
    infos = archive.instances(study_uid, series_uid, scope=scope)
    text = "[" + ",".join(instance_json(archive, info) for info in infos) + "]"
    sealed = seal_small(_key(archive, row.key_id), zlib.compress(text.encode(), 1), _aad(series_uid))
    try:
        with archive.write_sessions.begin() as s:
            s.execute(update(Series).where(Series.id == row.id, Series.updated_at == row.updated_at,
                                           Series.num_instances == row.num_instances)
                      .values(metadata_cache=sealed))
    except Exception as exc:  # a cache: the answer stands, it is built again next time
        if must_cache or not disk_full(exc):
            raise
        log.warning("series metadata not cached: no space left for the index")
    return text


def study_metadata(archive: Archive, study_uid: str, scope: Scope | None = None) -> Iterator[str]:
    """The JSON array text of a whole study, as chunks (one series' cache at a time)."""
    infos = archive.instances(study_uid, scope=scope)
    series = list(dict.fromkeys(i.series_uid for i in infos))
    yield "["
    first = True
    for uid in series:
        try:
            text = series_metadata(archive, study_uid, uid, scope)
        except NotFound:  # deleted meanwhile
            continue
        inner = text[1:-1]
        if not inner:
            continue
        yield inner if first else "," + inner
        first = False
    yield "]"


def instance_json(archive: Archive, info: InstanceInfo) -> str:
    """One instance's header as DICOM JSON text with relative BulkDataURIs."""
    ds = archive.header(info)
    try:
        values = header_dict(ds, info)
    except Exception:  # noqa: BLE001 - stored as received: an element pydicom cannot decode
        log.warning("metadata of an instance leaves out elements that cannot be decoded")
        values = header_dict(_decodable(ds), info)
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


def _decodable(ds: Dataset) -> Dataset:
    """``ds`` without the elements whose values cannot be decoded (a wrong length for the VR...),
    found by sending mutated C-STOREs: one such object made its whole series' metadata fail."""
    out = Dataset()
    for tag in list(ds.keys()):
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                elem.value = [_decodable(item) for item in elem.value or []]
            elem.to_json_dict(lambda _e: "", 1 << 30)
        except Exception:  # noqa: BLE001, S112 - left out, see above
            continue
        out.add(elem)
    return out


def header_dict(ds: Dataset, info: InstanceInfo) -> dict[str, Any]:
    """DICOM JSON object of a header read with ``stop_before_pixels`` (PixelData added by reference)."""
    base = f"studies/{info.study_uid}/series/{info.series_uid}/instances/{info.sop_uid}/bulkdata/"
    paths = _paths(ds)

    def bulk(elem: DataElement) -> str:
        return base + paths.get(id(elem), f"{elem.tag:08x}")

    out = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk,
                          suppress_invalid_tags=True)
    if info.rows and "7FE00010" not in out:
        ts = info.transfer_syntax
        bits = ds.get("BitsAllocated", 16)
        vr = "OW" if is_native(ts) and isinstance(bits, int) and bits > 8 else "OB"
        out["7FE00010"] = {"vr": vr, "BulkDataURI": base + "7fe00010"}
    return out


def _paths(ds: Dataset, prefix: str = "") -> dict[int, str]:
    """id(element) -> tag path, for binary elements (the handler gets no path of its own)."""
    out: dict[int, str] = {}
    for elem in ds:
        path = f"{prefix}{elem.tag:08x}"
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value or []):
                out.update(_paths(item, f"{path}/{n}/"))
        elif elem.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "OB or OW"):
            out[id(elem)] = path
    return out


class MetadataWarmer:
    """Builds missing series metadata caches in the background (see the module docstring)."""

    def __init__(self, archive: Archive, *, interval: float = 2.0, settle: float = 2.0,
                 batch: int = 8) -> None:
        self._archive = weakref.ref(archive)  # the thread ends when the archive is gone
        self.interval, self.settle, self.batch = interval, settle, batch
        self._stop = threading.Event()
        self._failed: dict[int, datetime] = {}  # series id -> updated_at when building failed
        # one warmer across the cluster: an advisory lock on PostgreSQL, a flock on SQLite
        self._leadership = cluster.Leadership(archive.engine, "metadata-warmer",
                                              archive.settings.data_dir / "metadata-warmer.lock")
        self._thread: threading.Thread | None = None

    def start(self) -> MetadataWarmer:
        self._thread = threading.Thread(target=self._loop, name="pacs-metadata-warmer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._leadership.release()

    def _loop(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            archive = self._archive()
            if archive is None:
                return
            try:
                built = self.run_once(archive) if self._leader() else 0
                wait = 0.05 if built >= self.batch else self.interval  # a backlog: keep going
            except Exception:  # e.g. the database restarting: retry later
                log.warning("metadata warmer: pass failed; retrying in 30 s", exc_info=True)
                wait = 30
            del archive

    def _leader(self) -> bool:
        """Is this process the one that warms? (storage/cluster.py: kept once taken)"""
        return self._leadership.held()

    def pending(self, archive: Archive) -> list[tuple[int, str, str, datetime]]:
        """(series id, study UID, series UID, updated_at) of settled series without a cache."""
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=self.settle)
        stmt = (select(Series.id, Study.study_uid, Series.series_uid, Series.updated_at)
                .join(Study, Series.study_id == Study.id)
                .where(Series.metadata_cache.is_(None), Series.updated_at < cutoff)
                .order_by(Series.updated_at.desc()).limit(self.batch + len(self._failed)))
        with archive.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [(r[0], r[1], r[2], r[3]) for r in rows
                if self._failed.get(r[0]) != r[3]][: self.batch]

    def run_once(self, archive: Archive) -> int:
        """Build the caches of one batch of pending series; returns how many were built."""
        built = 0
        for series_id, study_uid, series_uid, updated_at in self.pending(archive):
            if self._stop.is_set():
                break
            try:
                series_metadata(archive, study_uid, series_uid, must_cache=True)
                built += 1
            except NotFound:
                pass  # deleted meanwhile
            except Exception as exc:  # one bad series must not stop the others
                log.warning("metadata warmer: series %d could not be built", series_id,
                            exc_info=not disk_full(exc) and not isinstance(exc, StorageFull))
                if len(self._failed) > 10_000:
                    self._failed.clear()
                self._failed[series_id] = updated_at
        return built


_WARMERS: dict[int, MetadataWarmer] = {}
_WARMERS_LOCK = threading.Lock()


def ensure_warmer(archive: Archive, **options: Any) -> MetadataWarmer:
    """The one running warmer of this archive in this process (started on first call, after forks)."""
    with _WARMERS_LOCK:
        warmer = _WARMERS.get(id(archive))
        if warmer is None or warmer._thread is None or not warmer._thread.is_alive() \
                or warmer._archive() is not archive:
            warmer = MetadataWarmer(archive, **options).start()
            _WARMERS[id(archive)] = warmer
        return warmer
