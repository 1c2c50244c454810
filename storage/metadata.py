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
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from sqlalchemy import select, update

from .archive import Archive, InstanceInfo, Scope
from .crypto import open_small, seal_small
from .errors import NotFound
from .index.models import Patient, Series, Study
from .keys import hkdf

BULK_THRESHOLD = 1024
BULK_KEY = '"BulkDataURI":"'
_INFO = b"pacs/series-metadata/v1"
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
           "1.2.840.10008.1.2.1.99"}


def _key(archive: Archive, key_id: str) -> bytes:
    return hkdf(archive.vault.dek(key_id), _INFO)


def _aad(series_uid: str) -> bytes:
    return f"SERIES-METADATA|{series_uid}".encode()


def series_metadata(archive: Archive, study_uid: str, series_uid: str,
                    scope: Scope | None = None) -> str:
    """JSON array text of the series' instances (relative BulkDataURIs); NotFound if not visible."""
    stmt = (select(Series.id, Series.metadata_cache, Series.updated_at, Series.num_instances,
                   Patient.key_id)
            .join(Study, Series.study_id == Study.id).join(Patient, Study.patient_id == Patient.id)
            .where(Series.series_uid == series_uid, Study.study_uid == study_uid))
    if scope is not None:
        stmt = stmt.where(Patient.id == scope.patient_ref)
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
    with archive.write_sessions.begin() as s:
        s.execute(update(Series).where(Series.id == row.id, Series.updated_at == row.updated_at,
                                       Series.num_instances == row.num_instances)
                  .values(metadata_cache=sealed))
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
    return json.dumps(header_dict(ds, info), separators=(",", ":"), ensure_ascii=False)


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
        vr = "OW" if ts in _NATIVE and isinstance(bits, int) and bits > 8 else "OB"
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
