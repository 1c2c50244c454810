"""Which provider a DICOM association acts for (issue 19 part 1), decided once per association.

At EVT_REQUESTED (after the TLS handshake, before we answer the A-ASSOCIATE-RQ):

1. a client certificate listed under a provider (``[providers.NAME] certificates``: its SHA-256
   fingerprint, or ``CN=<common name>`` with ``dicom_tls_verify_client``) decides;
2. else a calling AE title in ``cross_tenant_aets`` sees every provider (and stores into default);
3. else a calling AE title listed under a provider (``[providers.NAME] calling_aets``);
4. else the provider ``default``.

A provider that is not registered (``pacs provider add``) or was removed rejects the association
(A-ASSOCIATE-RJ, calling AE title not recognised: PS3.8 7.1.1.9), audited as a ``login`` failure,
the same rejection an AE title outside ``allowed_calling_aets`` gets. The handlers ask
:meth:`Tenants.of` for the association's :class:`Tenant`; the fast C-STORE path, which has the
calling AE title and the peer's address, asks :meth:`Tenants.by_origin`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from pynetdicom import evt

from storage import metrics
from storage.archive import Archive, Scope
from storage.config import Settings
from storage.errors import NotFound
from storage.providers import get_provider
from storage.tenancy import DEFAULT, ProviderRef

from . import tls

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tenant:
    """What an association may see (``scope``: None = every provider) and where it stores."""

    scope: Scope | None
    provider: ProviderRef


CROSS_TENANT = Tenant(None, DEFAULT)
REFUSED_COMMENT = "calling AE title or certificate not allowed"


class Refused(Exception):
    """The association's credentials name a provider that is not (or no longer) registered."""


def calling_aet(assoc: Any) -> str:
    """The calling AE title; at EVT_REQUESTED pynetdicom has it only in the A-ASSOCIATE-RQ."""
    title = assoc.requestor.ae_title or getattr(assoc.requestor.primitive, "calling_ae_title", "")
    if isinstance(title, bytes):
        title = title.decode("ascii", "replace")
    return (title or "").strip()


def provider_name(assoc: Any, settings: Settings) -> str | None:
    """The provider name the association's credentials map to; None: cross-tenant."""
    cert = tls.peer_certificate(assoc)
    if cert is not None:
        fingerprint, cn = cert
        for key in (fingerprint, f"CN={cn}" if cn else ""):
            if key and key in settings.provider_certificates:
                return settings.provider_certificates[key]
    calling = calling_aet(assoc)
    if calling in settings.cross_tenant_aets:
        return None
    return settings.provider_aets.get(calling, DEFAULT.name)


class Tenants:
    """The tenant of each live association of this SCP process."""

    def __init__(self, archive: Archive, settings: Settings):
        self._archive, self._settings = archive, settings
        self._by_assoc: weakref.WeakKeyDictionary[Any, Tenant] = weakref.WeakKeyDictionary()
        self._by_origin: dict[str, Tenant] = {}
        self._lock = threading.Lock()

    def resolve(self, assoc: Any) -> Tenant:
        """The association's tenant from its credentials; Refused for an unregistered provider."""
        name = provider_name(assoc, self._settings)
        if name is None:
            return CROSS_TENANT
        try:
            info = get_provider(self._archive, name)
        except NotFound:
            raise Refused(name) from None
        ref = ProviderRef(info.id, info.name)
        return Tenant(Scope(provider_id=ref.id), ref)

    def of(self, assoc: Any) -> Tenant:
        with self._lock:
            known = self._by_assoc.get(assoc)
        return known if known is not None else self.resolve(assoc)

    def by_origin(self, actor: str, origin: str) -> Tenant:
        """The tenant of the association from ``origin`` (host:port) with calling AE ``actor``."""
        with self._lock:
            known = self._by_origin.get(origin)
        if known is None:  # not seen at EVT_REQUESTED: refuse rather than guess
            raise Refused(actor)
        return known

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: decide the tenant, or reject the association."""
        assoc = event.assoc
        requestor = assoc.requestor
        origin = f"{requestor.address}:{requestor.port}"
        try:
            tenant = self.resolve(assoc)
        except Refused:
            calling = calling_aet(assoc)
            self._archive.audit.record(
                "login", actor=calling[:16], source=origin, outcome="failure",
                detail="DICOM association rejected: its provider is not registered or was removed")
            _reject(assoc, 0x01, 0x03)  # permanent; calling AE title not recognised
            return
        except Exception:  # the index is unreachable: refuse for now, say nothing more
            log.exception("the provider of an association could not be decided")
            _reject(assoc, 0x02, 0x01)  # transient; no reason given
            return
        with self._lock:
            self._by_assoc[assoc] = tenant
            self._by_origin[origin] = tenant

    def on_ended(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        with self._lock:
            self._by_origin.pop(f"{requestor.address}:{requestor.port}", None)
            self._by_assoc.pop(event.assoc, None)

    def handlers(self) -> list[Any]:
        return [(evt.EVT_REQUESTED, self.on_requested), (evt.EVT_CONN_CLOSE, self.on_ended)]


def _reject(assoc: Any, result: int, diagnostic: int) -> None:
    """A-ASSOCIATE-RJ from the service user, then end the association as pynetdicom's own
    rejection does (``kill`` waits until the DUL has sent it: closing first would lose it)."""
    assoc.acse.send_reject(result, 0x01, diagnostic)
    metrics.association("rejected")
    assoc.kill()


_TENANTS: weakref.WeakKeyDictionary[Archive, Tenants] = weakref.WeakKeyDictionary()


def tenants(archive: Archive, settings: Settings) -> Tenants:
    """The one :class:`Tenants` of this archive in this process (handlers and fast path share it)."""
    found = _TENANTS.get(archive)
    if found is None:
        found = _TENANTS[archive] = Tenants(archive, settings)
    return found
