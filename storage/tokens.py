"""Provider API tokens (RFC 6750 bearer): only their SHA-256 is stored (``api_tokens``).

Scopes are ordered: ``read`` (QIDO-RS, WADO-RS, WADO-URI) < ``write`` (+ STOW-RS, uploads) <
``admin`` (+ DELETE). Used by ``pacs token`` and by ``dicomweb.auth``; no web code here.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from .archive import Archive
from .errors import BadInput, Conflict, NotFound
from .index.models import ApiToken

SCOPES = ("read", "write", "admin")
_PREFIX = "pacs_"


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_token(archive: Archive, name: str, scope: str) -> str:
    """Make a token; returns it (shown once, only its hash is kept)."""
    if scope not in SCOPES:
        raise BadInput(f"scope must be one of {', '.join(SCOPES)}")
    if not name or len(name) > 64:
        raise BadInput("a token name is 1 to 64 characters")
    token = _PREFIX + secrets.token_urlsafe(32)
    try:
        with archive.write_sessions.begin() as s:
            s.add(ApiToken(name=name, token_hash=_digest(token), scope=scope,
                           created_at=datetime.now(UTC).replace(tzinfo=None)))
    except IntegrityError:
        raise Conflict(f"a token named {name!r} exists already") from None
    archive.audit.record("token-create", actor="pacs token", detail=f"{name} ({scope})")
    return token


def list_tokens(archive: Archive) -> list[TokenInfo]:
    with archive.sessions() as s:
        rows = s.scalars(select(ApiToken).order_by(ApiToken.name)).all()
        return [TokenInfo(r.name, r.scope, r.created_at, r.revoked_at) for r in rows]


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
