"""Provider API tokens (RFC 6750 bearer): only their SHA-256 is stored (``api_tokens``).

Scopes are ordered: ``read`` (QIDO-RS, WADO-RS, WADO-URI) < ``write`` (+ STOW-RS, uploads) <
``admin`` (+ DELETE). Used by ``pacs token`` and by ``dicomweb.auth``; no web code here.

Tenancy (issue 19): a token acts for one provider (``--provider NAME``; none named: ``default``)
and sees only that provider's patients, whatever its scope, so a provider can delete its own
studies with an ``admin`` token and still see no other provider's. Seeing every provider is a
separate, explicit grant: ``--cross-tenant`` (the archive operator's tokens; dcm4chee's
"root" role, Orthanc's single-tenant default). A token of a removed provider stops working.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from .archive import Archive
from .errors import BadInput, Conflict, NotFound
from .index.models import ApiToken, Provider
from .tenancy import DEFAULT_ID, DEFAULT_NAME, ProviderRef

SCOPES = ("read", "write", "admin")
_PREFIX = "pacs_"


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None
    provider: str = DEFAULT_NAME
    cross_tenant: bool = False


@dataclass(frozen=True)
class TokenHolder:
    """Who presented a token: its name and scope, and the provider it acts for."""

    name: str
    scope: str
    provider: ProviderRef
    cross_tenant: bool
    provider_removed: bool = False  # its provider was removed: the token no longer works


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_token(archive: Archive, name: str, scope: str, *, provider: str | None = None,
                 cross_tenant: bool = False) -> str:
    """Make a token for ``provider`` (None: default) or, ``cross_tenant``, for every provider;
    returns it (shown once, only its hash is kept). An unknown provider is NotFound."""
    if scope not in SCOPES:
        raise BadInput(f"scope must be one of {', '.join(SCOPES)}")
    if not name or len(name) > 64:
        raise BadInput("a token name is 1 to 64 characters")
    if cross_tenant and provider is not None:
        raise BadInput("a cross-tenant token acts for every provider: give --provider or "
                       "--cross-tenant, not both")
    provider_id = None
    if provider is not None:
        from .providers import get_provider

        provider_id = get_provider(archive, provider).id
    token = _PREFIX + secrets.token_urlsafe(32)
    try:
        with archive.write_sessions.begin() as s:
            s.add(ApiToken(name=name, token_hash=_digest(token), scope=scope,
                           created_at=datetime.now(UTC).replace(tzinfo=None),
                           provider_id=provider_id, cross_tenant=cross_tenant))
    except IntegrityError:
        raise Conflict(f"a token named {name!r} exists already") from None
    whose = "cross-tenant" if cross_tenant else f"provider {provider or DEFAULT_NAME}"
    archive.audit.record("token-create", actor="pacs token", detail=f"{name} ({scope}, {whose})")
    return token


def list_tokens(archive: Archive) -> list[TokenInfo]:
    with archive.sessions() as s:
        names = {pid: pname for pid, pname in s.execute(select(Provider.id, Provider.name))}
        rows = s.scalars(select(ApiToken).order_by(ApiToken.name)).all()
        return [TokenInfo(r.name, r.scope, r.created_at, r.revoked_at,
                          names.get(r.provider_id or DEFAULT_ID, "?"), bool(r.cross_tenant))
                for r in rows]


def revoke_token(archive: Archive, name: str) -> None:
    with archive.write_sessions.begin() as s:
        n = s.execute(update(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                      .values(revoked_at=datetime.now(UTC).replace(tzinfo=None))).rowcount
    if not n:
        raise NotFound(f"no active token named {name!r}")
    archive.audit.record("token-revoke", actor="pacs token", detail=name)


def lookup_token(archive: Archive, token: str) -> tuple[str, str] | None:
    """(name, scope) of an active token, or None."""
    with archive.sessions() as s:
        row = s.execute(select(ApiToken.name, ApiToken.scope, ApiToken.revoked_at)
                        .where(ApiToken.token_hash == _digest(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    return row.name, row.scope


def token_holder(archive: Archive, token: str) -> TokenHolder | None:
    """Who holds an active token (with its provider), or None for an unknown or revoked one."""
    with archive.sessions() as s:
        row = s.execute(select(ApiToken.name, ApiToken.scope, ApiToken.revoked_at,
                               ApiToken.cross_tenant, Provider.id.label("pid"),
                               Provider.name.label("provider"), Provider.deleted_at)
                        .join(Provider, Provider.id == func.coalesce(ApiToken.provider_id, DEFAULT_ID))
                        .where(ApiToken.token_hash == _digest(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    return TokenHolder(row.name, row.scope, ProviderRef(row.pid, row.provider), bool(row.cross_tenant),
                       row.deleted_at is not None)
