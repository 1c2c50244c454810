"""Master key rotation (security.md "Keys"): rewrap data keys only, never a stored object.

:func:`rotate` adds a fresh master key version where the ring lives (its key file, or a new key
generated in the PKCS#11 token) and rewraps every
``PatientKey`` and ``SystemKey`` row under it, in one transaction per batch; blobs and sealed index
values are untouched because the data keys themselves do not change. :func:`retire` removes an old
version from the ring once no row is wrapped under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from . import cluster
from .errors import ArchiveError
from .index.models import PatientKey, SystemKey
from .keys import KeyRing, WrappedKey

if TYPE_CHECKING:
    from .archive import Archive

BATCH = 500


class RotationError(ArchiveError):
    """A rotation or retirement that would lose access to data (e.g. a version still in use)."""


@dataclass(frozen=True)
class Rotated:
    version: int
    patient_keys: int
    system_keys: int
    ring: KeyRing
    saved_to: str  # "" when the ring comes from the environment (print it instead)


def rewrap_all(archive: Archive, ring: KeyRing) -> tuple[int, int]:
    """Rewrap every wrapped key not yet under ``ring.current_version``; returns (patient, system)."""
    old = archive.vault.ring
    target = ring.current_version
    done_p = done_s = 0
    with archive.write_sessions.begin() as s:
        for row in s.scalars(select(SystemKey).where(SystemKey.kek_version != target)).all():
            key = old.unwrap(row.name, WrappedKey(row.kek_version, row.wrapped))
            w = ring.wrap(row.name, key)
            row.kek_version, row.wrapped = w.kek_version, w.blob
            done_s += 1
        cluster.bump(s.connection(), cluster.KEYRING)  # other nodes re-read the ring (saved already)
    while True:
        with archive.write_sessions.begin() as s:
            rows = s.scalars(select(PatientKey).where(PatientKey.kek_version != target)
                             .limit(BATCH)).all()
            for row in rows:
                key = old.unwrap(row.key_id, WrappedKey(row.kek_version, row.wrapped))
                w = ring.wrap(row.key_id, key)
                row.kek_version, row.wrapped = w.kek_version, w.blob
            done_p += len(rows)
        if len(rows) < BATCH:
            break
    return done_p, done_s


def rotate(archive: Archive) -> Rotated:
    """New master key version; the ring is saved before any key is rewrapped under it."""
    ring = archive.vault.ring.rotated()
    saved = ring.location
    p, s = rewrap_all(archive, ring)
    archive.vault.ring = ring
    archive.audit.record("key-rotate", actor="pacs keys", detail=f"version {ring.current_version}; "
                         f"{p} patient key(s), {s} system key(s) rewrapped")
    return Rotated(ring.current_version, p, s, ring, saved)


def versions_in_use(archive: Archive) -> dict[int, int]:
    """How many wrapped keys each master key version still wraps."""
    out: dict[int, int] = {}
    with archive.sessions() as s:
        for table in (PatientKey, SystemKey):
            for version, n in s.execute(select(table.kek_version, func.count())
                                        .group_by(table.kek_version)).all():
                out[version] = out.get(version, 0) + n
    return out


def retire(archive: Archive, version: int) -> KeyRing:
    """Remove ``version`` from the ring (saved to the key file, or destroyed in the token)."""
    ring = archive.vault.ring
    if not ring.has(version):
        raise RotationError(f"master key version {version} is not in the ring")
    if version == ring.current_version:
        raise RotationError("the current master key version cannot be retired; rotate first")
    used = versions_in_use(archive).get(version, 0)
    if used:
        raise RotationError(f"master key version {version} still wraps {used} key(s); rotate first")
    new = ring.retired(version)
    archive.vault.ring = new
    with archive.write_sessions.begin() as s:
        cluster.bump(s.connection(), cluster.KEYRING)
    archive.audit.record("key-retire", actor="pacs keys", detail=f"version {version}")
    return new
