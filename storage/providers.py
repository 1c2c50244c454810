"""Providers: the tenants of the archive (issue 19). Every patient belongs to exactly one.

A provider is a name and a row id. Patients carry ``provider_id``; credentials (DICOMweb tokens,
calling AE titles, client certificates) name the provider they act for, and a provider's
credentials see only its patients. The provider ``default`` (id 1) holds everything stored before
providers existed (migration 0011) and whatever arrives with credentials that name no provider.
Providers are never deleted from the index, only marked ``deleted_at``, so a patient never points
at a missing row and a removed provider's name is not reused by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .archive import Archive
from .errors import BadInput, Conflict, NotFound
from .index.models import Provider
from .tenancy import DEFAULT, ProviderRef

DEFAULT_PROVIDER_ID = DEFAULT.id  # 1 (storage/tenancy.py)
DEFAULT_PROVIDER_NAME = DEFAULT.name  # "default"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")


@dataclass(frozen=True)
class ProviderInfo:
    id: int
    name: str
    created_at: datetime
    deleted_at: datetime | None


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def check_name(name: str) -> str:
    """The name, or BadInput: 1 to 64 letters, digits, spaces, dots, dashes, underscores."""
    if not _NAME.fullmatch(name or ""):
        raise BadInput("a provider name is 1 to 64 letters, digits, spaces, '.', '_' or '-', "
                       "starting with a letter or digit")
    return name


def add_provider(archive: Archive, name: str) -> ProviderInfo:
    check_name(name)
    try:
        with archive.write_sessions.begin() as s:
            row = Provider(name=name, created_at=_now())
            s.add(row)
            s.flush()
            info = ProviderInfo(row.id, row.name, row.created_at, None)
    except IntegrityError:
        raise Conflict(f"a provider named {name!r} exists already") from None
    archive.audit.record("provider-add", actor="pacs provider", detail=name)
    return info


def list_providers(archive: Archive, *, include_deleted: bool = False) -> list[ProviderInfo]:
    with archive.sessions() as s:
        q = select(Provider).order_by(Provider.name)
        if not include_deleted:
            q = q.where(Provider.deleted_at.is_(None))
        return [ProviderInfo(r.id, r.name, r.created_at, r.deleted_at) for r in s.scalars(q)]


def get_provider(archive: Archive, name: str) -> ProviderInfo:
    """The active provider of that name, or NotFound."""
    with archive.sessions() as s:
        r = s.scalars(select(Provider).where(Provider.name == name,
                                             Provider.deleted_at.is_(None))).first()
    if r is None:
        raise NotFound(f"no provider named {name!r}")
    return ProviderInfo(r.id, r.name, r.created_at, r.deleted_at)


def provider_ref(archive: Archive, name: str | None) -> ProviderRef:
    """The active provider ``name`` as the archive's store and find take it (None: default)."""
    if name is None:
        return DEFAULT
    info = get_provider(archive, name)
    return ProviderRef(info.id, info.name)


def provider_names(archive: Archive) -> dict[int, str]:
    """Row id -> name of every provider, removed ones included (for labels on old records)."""
    with archive.sessions() as s:
        return {r.id: r.name for r in s.execute(select(Provider.id, Provider.name))}


def remove_provider(archive: Archive, name: str) -> None:
    """Mark the provider removed: its credentials stop working; its patients stay (shred them apart)."""
    if name == DEFAULT_PROVIDER_NAME:
        raise BadInput("the default provider cannot be removed")
    with archive.write_sessions.begin() as s:
        n = s.execute(update(Provider).where(Provider.name == name, Provider.deleted_at.is_(None))
                      .values(deleted_at=_now())).rowcount
    if not n:
        raise NotFound(f"no provider named {name!r}")
    archive.audit.record("provider-remove", actor="pacs provider", detail=name)
