"""The ``audit_repository`` setting: ``tls://host:6514`` (RFC 5425) or ``udp://host:514`` (RFC 5426)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("tls", "udp")


@dataclass(frozen=True)
class Repository:
    scheme: str
    host: str
    port: int

    @property
    def name(self) -> str:
        """How the delivery marker names it (``audit_delivery.repository``)."""
        return f"{self.scheme}://{self.host}:{self.port}"


def parse(value: str) -> Repository:
    """The repository named by ``value``; ValueError saying what is wrong."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError("expected tls://host:port or udp://host:port") from None
    if parts.scheme not in SCHEMES:
        raise ValueError("expected tls://host:port (RFC 5425) or udp://host:port (RFC 5426)")
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"{parts.scheme}:// needs a host and a port (e.g. {parts.scheme}://arr:"
                         f"{6514 if parts.scheme == 'tls' else 514})")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError("only scheme://host:port (no path, query or user)")
    return Repository(parts.scheme, parts.hostname, port)
