"""TLS for both doors: DICOM over TLS (PS3.15 B.9, the BCP 195 profile) and HTTPS.

* :func:`server_context` / :func:`client_context`: TLS 1.2 or later only, and in TLS 1.2 only the
  cipher suites BCP 195 recommends (RFC 9325 section 4.2; RFC 7525 before it): ephemeral (EC)DHE key
  exchange with an AEAD cipher (AES-GCM, ChaCha20-Poly1305). TLS 1.3 suites are all AEAD already.
  PS3.15 B.9 (BCP 195 TLS Secure Transport Connection Profile) asks for exactly that.
* The DICOM TLS port is a second pynetdicom server in each SCP worker, beside the plain one (or
  alone with ``dicom_plain = false``), given the context through pynetdicom's public ``ssl_context``.
  pynetdicom wraps the accepted socket in the accepting thread; :class:`DeferredHandshakeContext`
  wraps it with ``do_handshake_on_connect=False``, and the handshake is done by our EVT_CONN_OPEN
  handler (:func:`handle_conn_open`), which pynetdicom runs in the connection's own thread, under
  ``connect_timeout``: a peer that connects and says nothing, or speaks plain DICOM to the TLS port,
  holds its own thread only, never the accept loop. A failed handshake is a ``login`` failure in
  the audit trail and the connection is closed; pynetdicom then sees a closed transport (Evt17).
* Mutual TLS (``dicom_tls_verify_client``): a peer without a certificate from ``tls_ca_file`` fails
  the handshake. The peer certificate's subject goes into the audit record of the association
  (:func:`handle_accepted`).
* C-MOVE and storage commitment to a destination with ``tls = true`` open their association with
  pynetdicom's ``tls_args`` (:func:`associate_args`, :func:`move_over_tls`), checking the
  destination's certificate against ``tls_ca_file`` and presenting ours.
* HTTPS: gunicorn's own TLS (``--certfile``/``--keyfile``, :func:`gunicorn_args`) with the same
  context (``ssl_context`` hook in :mod:`pacs.gunicorn_hooks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association

from storage.config import Destination, Settings

if TYPE_CHECKING:
    from storage.archive import Archive

    from .dimse.fastpath import FastStoreBinding
    from .dimse.server import DimseServer

log = logging.getLogger(__name__)

#: TLS 1.2 suites of BCP 195 (RFC 9325 4.2), in OpenSSL names: forward secret, AEAD only.
BCP195_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
))


def _bcp195(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


class DeferredHandshakeContext(ssl.SSLContext):
    """An SSLContext whose server sockets shake hands on first use, not inside ``wrap_socket``."""

    # The override: keywords we pass on as **kwargs are named one by one in typeshed.
    def wrap_socket(self, sock: socket.socket, server_side: bool = False,  # type: ignore[override]
                    do_handshake_on_connect: bool = True, **kwargs: Any) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side=server_side,
                                   do_handshake_on_connect=do_handshake_on_connect and not server_side,
                                   **kwargs)


def server_context(settings: Settings, *, verify_client: bool = False,
                   deferred: bool = False) -> ssl.SSLContext:
    """This server's context (certificate, key; client certificates from ``tls_ca_file`` if asked)."""
    ctx = (DeferredHandshakeContext if deferred else ssl.SSLContext)(ssl.PROTOCOL_TLS_SERVER)
    _bcp195(ctx)
    ctx.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    if settings.tls_ca_file is not None:  # a client certificate is asked for (and checked, and
        ctx.load_verify_locations(cafile=str(settings.tls_ca_file))  # its subject audited) ...
        ctx.verify_mode = ssl.CERT_OPTIONAL
    if verify_client:  # ... and with mutual TLS, required
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(settings: Settings) -> ssl.SSLContext:
    """For our associations to peers: their certificate checked against ``tls_ca_file``, ours shown."""
    ctx = _bcp195(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.load_verify_locations(cafile=str(settings.tls_ca_file))
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        ctx.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    return ctx


class CannotUseTLS(Exception):
    """A certificate, key or CA file that does not load; the message names the setting."""


def check(settings: Settings) -> None:
    """Load every context the settings ask for once, at start, so a bad file is one clear line."""
    try:
        if settings.http_tls or settings.dicom_tls:
            server_context(settings, verify_client=settings.dicom_tls_verify_client)
        if any(d.tls for d in settings.destinations.values()):
            client_context(settings)
    except ssl.SSLError as exc:
        raise CannotUseTLS(f"tls_cert_file / tls_key_file / tls_ca_file do not load: "
                           f"{exc.reason or exc}") from None
    except OSError as exc:
        raise CannotUseTLS(f"tls_cert_file / tls_key_file / tls_ca_file: {exc.strerror or exc}") from None


# -- outgoing associations ------------------------------------------------------------------------

def associate_args(settings: Settings, destination: Destination) -> dict[str, Any]:
    """Keyword arguments for ``AE.associate`` to ``destination``: ``tls_args`` when it wants TLS."""
    if not destination.tls:
        return {}
    return {"tls_args": (client_context(settings), destination.host)}


# An EVT_C_MOVE handler: (host, port[, kwargs]) first, then (status, data set) per sub-operation.
_MoveHandler = Callable[..., Iterator[Any]]  # (event, archive, settings, *bound extras)


def move_over_tls(handler: _MoveHandler) -> _MoveHandler:
    """Wrap an EVT_C_MOVE handler: its (host, port, kwargs) gets ``tls_args`` for a TLS destination."""

    def handle(event: evt.Event, archive: Archive, settings: Settings, *args: Any) -> Iterator[Any]:
        dest = settings.destinations.get((event.move_destination or "").strip())
        gen = handler(event, archive, settings, *args)
        first = next(gen, None)
        if dest is not None and dest.tls and isinstance(first, tuple) and len(first) >= 2 \
                and first[0] is not None:
            kwargs = dict(first[2]) if len(first) > 2 and first[2] else {}
            kwargs.update(associate_args(settings, dest))
            first = (first[0], first[1], kwargs)
        yield first
        yield from gen

    handle.__name__ = getattr(handler, "__name__", "handle_move")
    handle.__doc__ = handler.__doc__
    return handle


# -- the audit record -----------------------------------------------------------------------------

def peer_subject(assoc: Association) -> str | None:
    """The peer certificate's subject (RFC 4514 order reversed as OpenSSL prints it), or None."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):
        return None
    if not cert:
        return ""
    # A tuple of RDNs, each of (name, value) pairs (ssl getpeercert); typeshed allows any field shape.
    subject = cast("tuple[tuple[tuple[str, str], ...], ...]", cert.get("subject", ()))
    return ",".join(f"{k}={v}" for rdn in subject for k, v in rdn)


def handle_conn_open(event: evt.Event, archive: Archive, settings: Settings) -> None:
    """EVT_CONN_OPEN on the TLS port: the TLS handshake, in the connection's own thread."""
    assoc_socket = event.assoc.dul.socket
    assert assoc_socket is not None  # the connection that just opened
    sock = assoc_socket.socket
    if not isinstance(sock, ssl.SSLSocket):
        return
    address = event.address  # type: ignore[attr-defined]  # pynetdicom sets event attributes at run time
    host, port = address[0], address[1]
    before = sock.gettimeout()
    try:
        sock.settimeout(settings.connect_timeout)  # opening the connection includes the handshake
        sock.do_handshake()
        sock.settimeout(before)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        log.info("TLS handshake with %s:%s failed: %s", host, port, reason)
        archive.audit.record("login", actor="", source=f"{host}:{port}", outcome="failure",
                             detail=f"DICOM TLS handshake failed: {reason}"[:500])
        # socket.socket.shutdown, not SSLSocket.shutdown: that one drops the TLS object, and the
        # association's reader would then read the peer's remaining bytes as plain DICOM. This way
        # every later read is a TLS error or the end of the stream (Evt17).
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        # No A-ASSOCIATE-RQ can come now: the acceptor must not wait acse_timeout (30 s) for one,
        # holding one of max_associations (pynetdicom counts running association threads).
        event.assoc.acse_timeout = 0.01


def handle_accepted(event: evt.Event, archive: Archive, settings: Settings) -> None:
    """EVT_ACCEPTED on the TLS port: a ``login`` success naming the TLS version and peer subject."""
    assoc = event.assoc
    subject = peer_subject(assoc)
    assoc_socket = assoc.dul.socket
    assert assoc_socket is not None  # the association just accepted is connected
    sock = assoc_socket.socket
    version = sock.version() if isinstance(sock, ssl.SSLSocket) else "?"
    requestor = assoc.requestor
    detail = f"DICOM association over {version}"
    detail += f"; peer certificate subject: {subject}" if subject else "; no peer certificate"
    archive.audit.record("login", actor=(requestor.ae_title or "").strip()[:16],
                         source=f"{requestor.address}:{requestor.port}", outcome="success",
                         detail=detail[:500])


def tls_handlers(handlers: list[evt.EventHandlerType], archive: Archive, settings: Settings
                 ) -> list[evt.EventHandlerType]:
    """The SCP handlers for the TLS port: the same ones, plus the audit of the peer certificate."""
    return [*handlers, (evt.EVT_CONN_OPEN, handle_conn_open, [archive, settings]),
            (evt.EVT_ACCEPTED, handle_accepted, [archive, settings])]


# -- the TLS port in an SCP worker ----------------------------------------------------------------

def start_tls_server(ae: ApplicationEntity, settings: Settings, listen_socket: socket.socket,
                     handlers: list[evt.EventHandlerType], fast_store: FastStoreBinding | None = None
                     ) -> tuple[DimseServer, threading.Thread]:
    """A second server of ``ae`` on the inherited TLS ``listen_socket``, serving in a thread."""
    from .dimse.server import make_server

    ctx = server_context(settings, verify_client=settings.dicom_tls_verify_client, deferred=True)
    server = make_server(ae, settings.dicom_host, settings.dicom_tls_port, evt_handlers=handlers,
                         fast_store=fast_store, ssl_context=ctx, listen_socket=listen_socket)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="dicom-tls-accept", daemon=True)
    thread.start()
    return server, thread


def stop_tls_server(server: DimseServer, thread: threading.Thread, drain_timeout: float) -> None:
    from .dimse.server import stop_server

    server.shutdown()  # ends serve_forever in its thread
    thread.join(timeout=5)
    stop_server(server, drain_timeout)


# -- HTTPS ------------------------------------------------------------------------------------------

def gunicorn_args(settings: Settings) -> list[str]:
    """gunicorn's own TLS options when ``http_tls`` is on (the context is made in the hook)."""
    if not settings.http_tls:
        return []
    return ["--certfile", str(settings.tls_cert_file), "--keyfile", str(settings.tls_key_file),
            "--ciphers", BCP195_CIPHERS]


def peer_certificate(assoc: Any) -> tuple[str, str] | None:
    """(SHA-256 fingerprint in lowercase hex, subject common name) of the peer's TLS certificate,
    or None (no TLS, no certificate). Maps a certificate to its provider (pacs/tenancy.py)."""
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        der = sock.getpeercert(binary_form=True)
        cert = sock.getpeercert() or {}
    except (ValueError, OSError):
        return None
    if not der:
        return None
    subject: Any = cert.get("subject", ())  # ((("commonName", "x"),), ...) as ssl gives it
    cn = next((str(v) for rdn in subject for k, v in rdn if k == "commonName"), "")
    return hashlib.sha256(der).hexdigest(), cn
