"""``pacs check``: is the archive whole? Index against blobs, counts against rows, every tag, every key.

What is checked, on any archive (SQLite or PostgreSQL index, files or inline blobs):

* keys: every installation key and every patient data key unwraps under the loaded master key; no
  indexed patient has a destroyed (shredded) key;
* index -> blobs: every instance's blob exists with the recorded size, and every segment of it
  authenticates (AES-GCM tags, storage/crypto.py) under the patient's key, decrypting to the
  recorded plaintext size; the plaintext is dropped segment by segment, never kept;
* blobs -> index: no blob file older than ``grace_seconds`` and no inline blob row is unnamed by
  an instance (a younger file may belong to a store in flight: counted, not a fault);
* counts: instances per series, instances and series per study, instances, series and studies per
  patient equal the rows, and no series or study is left empty.

Findings name rows by index id and blobs by their random key: never a patient value (no PHI in the
report). Reads only: a finding is reported, never repaired here.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from .crypto import DecryptingReader
from .errors import ArchiveError
from .index.models import InlineBlob, Instance, Patient, PatientKey, Series, Study, SystemKey
from .keys import WrappedKey

if TYPE_CHECKING:
    from .archive import Archive

#: Findings listed in full in a report; beyond that they are counted per kind.
LISTED = 50


@dataclass
class Report:
    """What ``check`` saw: figures, and findings (kind, detail without PHI)."""

    instances: int = 0
    blobs_verified: int = 0
    bytes_verified: int = 0
    patient_keys: int = 0
    young_orphans: int = 0
    findings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, kind: str, detail: str) -> None:
        self.findings.append((kind, detail))

    def lines(self) -> list[str]:
        out = [f"checked {self.instances} instance(s), {self.blobs_verified} blob(s) authenticated "
               f"({self.bytes_verified} bytes), {self.patient_keys} patient key(s); "
               f"{self.young_orphans} recent unindexed blob(s) (stores in flight)"]
        kinds = Counter(kind for kind, _ in self.findings)
        for kind, n in sorted(kinds.items()):
            out.append(f"FAULT {kind}: {n}")
        for kind, detail in self.findings[:LISTED]:
            out.append(f"  {kind}: {detail}")
        if len(self.findings) > LISTED:
            out.append(f"  and {len(self.findings) - LISTED} more")
        out.append("archive is consistent" if self.ok else f"{len(self.findings)} fault(s) found")
        return out


def check(archive: Archive, *, grace_seconds: float = 3600, verify: bool = True) -> Report:
    """Check ``archive`` (see the module docstring); ``verify=False`` skips decrypting blobs."""
    report = Report()
    deks = _check_keys(archive, report)
    known = _check_instances(archive, report, deks, verify)
    _check_orphans(archive, report, known, grace_seconds)
    _check_counts(archive, report)
    return report


def _check_keys(archive: Archive, report: Report) -> dict[str, bytes | None]:
    """Unwrap every key; returns key id -> data key (None where it does not unwrap or is shredded)."""
    ring = archive.vault.ring
    deks: dict[str, bytes | None] = {}
    destroyed: set[str] = set()
    with archive.sessions() as s:
        for row in s.scalars(select(SystemKey)):
            try:
                ring.unwrap(row.name, WrappedKey(row.kek_version, row.wrapped))
            except ArchiveError:
                report.add("system key does not unwrap", row.name)
        for key in s.execute(select(PatientKey.key_id, PatientKey.kek_version, PatientKey.wrapped)):
            report.patient_keys += 1
            if not key.wrapped:
                deks[key.key_id] = None
                destroyed.add(key.key_id)
                continue
            try:
                deks[key.key_id] = ring.unwrap(key.key_id, WrappedKey(key.kek_version, key.wrapped))
            except ArchiveError:
                deks[key.key_id] = None
                report.add("patient key does not unwrap", f"key {key.key_id}")
        for pid, key_id in s.execute(select(Patient.id, Patient.key_id)):
            if key_id in destroyed:
                report.add("patient indexed under a destroyed key", f"patient {pid}")
            elif key_id not in deks:
                report.add("patient without a key row", f"patient {pid}")
    return deks


def _check_instances(archive: Archive, report: Report, deks: dict[str, bytes | None],
                     verify: bool) -> set[str]:
    """Every instance's blob is there, of its size, and authenticates; returns the blob keys named."""
    known: set[str] = set()
    stmt = (select(Instance.id, Instance.blob_key, Instance.blob_size, Instance.size, Patient.key_id)
            .join(Series, Instance.series_id == Series.id).join(Study, Series.study_id == Study.id)
            .join(Patient, Study.patient_id == Patient.id).order_by(Instance.id))
    with archive.engine.connect() as c:
        rows = c.execute(stmt).all()
        named = c.execute(select(func.count()).select_from(Instance)).scalar_one()
    if named != len(rows):
        report.add("instance outside any patient", f"{named - len(rows)} row(s)")
    for inst_id, blob_key, blob_size, size, key_id in rows:
        report.instances += 1
        known.add(blob_key)
        store = archive.sealed.store_of(blob_key)
        try:
            source = store.open(blob_key)
        except ArchiveError:
            report.add("indexed blob missing", f"instance {inst_id} blob {blob_key}")
            continue
        with source:
            actual = source.seek(0, 2)
            if actual != blob_size:
                report.add("blob size differs from the index", f"instance {inst_id} blob {blob_key}")
                continue
            if not verify:
                continue
            dek = deks.get(key_id)
            if dek is None:
                continue  # reported with the keys
            try:
                reader = DecryptingReader(source, dek, blob_key, blob_size)
                reader.verify()
            except ArchiveError:
                report.add("blob fails authentication", f"instance {inst_id} blob {blob_key}")
                continue
            if reader.size != size:
                report.add("plaintext size differs from the index", f"instance {inst_id}")
                continue
            report.blobs_verified += 1
            report.bytes_verified += blob_size
    return known


def _check_orphans(archive: Archive, report: Report, known: set[str], grace_seconds: float) -> None:
    cutoff = time.time() - grace_seconds
    old = set(archive.blobs.keys(older_than=cutoff))
    for key in sorted(old - known):
        report.add("orphan blob", f"blob {key}")
    report.young_orphans = len(set(archive.blobs.keys()) - known - old)
    with archive.engine.connect() as c:
        inline = set(c.execute(select(InlineBlob.key)).scalars())
    for key in sorted(inline - known):  # written in the indexing transaction: never in flight
        report.add("orphan inline blob", f"blob {key}")


def _check_counts(archive: Archive, report: Report) -> None:
    """The counters kept on series, studies and patients equal the rows under them."""
    with archive.engine.connect() as c:
        per_series = dict(c.execute(select(Instance.series_id, func.count()).group_by(Instance.series_id)).all())
        series = c.execute(select(Series.id, Series.study_id, Series.num_instances)).all()
        studies = c.execute(select(Study.id, Study.patient_id, Study.num_series, Study.num_instances)).all()
        patients = c.execute(select(Patient.id, Patient.num_studies, Patient.num_series,
                                    Patient.num_instances)).all()
    study_series: Counter[int] = Counter()
    study_instances: Counter[int] = Counter()
    for sid, study_id, n in series:
        real = per_series.get(sid, 0)
        if real == 0:
            report.add("empty series", f"series {sid}")
        if n != real:
            report.add("series instance count wrong", f"series {sid}: {n} recorded, {real} rows")
        study_series[study_id] += 1
        study_instances[study_id] += real
    patient_studies: Counter[int] = Counter()
    patient_series: Counter[int] = Counter()
    patient_instances: Counter[int] = Counter()
    for stid, patient_id, n_series, n_inst in studies:
        if study_series[stid] == 0:
            report.add("empty study", f"study {stid}")
        if (n_series, n_inst) != (study_series[stid], study_instances[stid]):
            report.add("study counts wrong", f"study {stid}: {n_series}/{n_inst} recorded, "
                       f"{study_series[stid]}/{study_instances[stid]} rows")
        patient_studies[patient_id] += 1
        patient_series[patient_id] += study_series[stid]
        patient_instances[patient_id] += study_instances[stid]
    for pid, n_studies, n_series, n_inst in patients:
        counted = (patient_studies[pid], patient_series[pid], patient_instances[pid])
        if (n_studies, n_series, n_inst) != counted:
            report.add("patient counts wrong", f"patient {pid}: {n_studies}/{n_series}/{n_inst} "
                       f"recorded, {counted[0]}/{counted[1]}/{counted[2]} rows")
