"""Serving associations: pynetdicom's threaded server, bound or on an inherited socket, stopped cleanly.

Not a patch, but it lives in the seam because it reaches two pynetdicom internals: the AE's list of
servers (so ``ae.shutdown()`` stops ours too) and, through :class:`DimseServer`, the fast C-STORE
binding the patched DUL reader looks up (``fast_store``). With the patches off it serves on stock
pynetdicom exactly the same way.
"""

from __future__ import annotations

import logging
import signal
import socket
import time
from typing import Any

from pynetdicom.ae import ApplicationEntity
from pynetdicom.transport import ThreadedAssociationServer

from . import fastpath

LOGGER = logging.getLogger(__name__)


class DimseServer(ThreadedAssociationServer):
    """Threaded association server; optionally binds with SO_REUSEPORT.

    ``fast_store``: the fast C-STORE path's store function and its arguments, bound when the server
    is built (:func:`make_server`), or None (every C-STORE through pynetdicom's handler).
    """

    reuse_port = False
    fast_store: fastpath.FastStoreBinding | None = None

    def server_bind(self) -> None:
        """Set SO_REUSEPORT when asked, then bind as pynetdicom does."""
        if self.reuse_port:
            assert self.socket is not None  # socketserver made it in __init__
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _ReusePortServer(DimseServer):
    reuse_port = True


class SharedSocketServer(DimseServer):
    """Accepts on a listening socket made by the parent process (pacs.serve, before pacs.workers forks).

    Every worker waits on the same socket and the first to call ``accept`` gets the association,
    so a worker busy storing (holding its GIL) leaves new associations to an idle one. With
    SO_REUSEPORT the kernel hashes each connection to a worker instead: four associations from one
    modality all landed on one of two workers in about one run in eight, and 3:1 in half of them.
    The socket is non-blocking (a worker that loses the race goes back to waiting) and is never
    shut down here, only closed, so the other workers keep accepting.
    """

    listen_socket: socket.socket

    def server_bind(self) -> None:
        assert self.socket is not None  # socketserver made it in __init__
        self.socket.close()
        self.socket = self.listen_socket
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """The parent listens already."""

    def server_close(self) -> None:
        assert self.socket is not None  # listen_socket, set in server_bind
        self.socket.close()


def listen(address: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket for :class:`SharedSocketServer` workers to inherit."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.create_server((address, port), family=family, backlog=backlog)
    sock.setblocking(False)
    return sock


def make_server(
    ae: ApplicationEntity,
    address: str,
    port: int,
    *,
    reuse_port: bool = False,
    evt_handlers: list[Any] | None = None,
    fast_store: fastpath.FastStoreBinding | None = None,
    ssl_context: Any = None,
    listen_socket: socket.socket | None = None,
) -> DimseServer:
    """A bound, listening (not yet serving) server.

    With ``listen_socket`` (from :func:`listen`, inherited across a fork) the server accepts on
    it instead of binding ``address``/``port`` itself (:class:`SharedSocketServer`).

    ``fast_store``: ``(function, [args])`` the fast C-STORE path calls as
    ``function(*args, part10, actor, origin) -> (status, comment)`` (:mod:`pacs.dimse.fastpath`),
    bound here as pynetdicom binds a handler's arguments. It is used only where the patches are
    on (:func:`pacs.dimse.install`); the EVT_C_STORE handler in ``evt_handlers`` serves otherwise.
    The maximum PDU is the AE's (``pacs.scp.make_ae`` raises it for the fast path).
    """
    server_class: type[DimseServer] = _ReusePortServer if reuse_port else DimseServer
    if listen_socket is not None:
        server_class = type("SharedSocketServer", (SharedSocketServer,), {"listen_socket": listen_socket})
    server = ae.make_server(
        (address, port),
        evt_handlers=evt_handlers or [],
        ssl_context=ssl_context,
        server_class=server_class,
    )
    assert isinstance(server, DimseServer)  # pynetdicom built it of server_class
    server.fast_store = fast_store if fastpath.is_installed() else None
    servers = getattr(ae, "_servers", None)
    if isinstance(servers, list):  # so that ae.shutdown() stops it too
        servers.append(server)
    return server


def serve_forever(
    ae: ApplicationEntity,
    address: str,
    port: int,
    *,
    reuse_port: bool = False,
    evt_handlers: list[Any] | None = None,
    fast_store: fastpath.FastStoreBinding | None = None,
    ssl_context: Any = None,
    drain_timeout: float = 10.0,
    listen_socket: socket.socket | None = None,
) -> None:
    """Serve associations until SIGTERM/SIGINT, then stop cleanly.

    On a signal: stop accepting, let running associations finish for up to
    ``drain_timeout`` seconds, abort the rest, close the listening socket.
    Must be called from the main thread (it installs signal handlers).
    """
    server = make_server(
        ae, address, port, reuse_port=reuse_port, evt_handlers=evt_handlers, fast_store=fast_store,
        ssl_context=ssl_context, listen_socket=listen_socket,
    )

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        stop_server(server, drain_timeout)


def stop_server(server: DimseServer, drain_timeout: float = 10.0) -> None:
    """Close the listening socket, wait for associations, abort stragglers."""
    server.server_close()
    deadline = time.monotonic() + drain_timeout
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    for assoc in server.active_associations:
        assoc.abort()
    servers = getattr(server.ae, "_servers", None)
    if isinstance(servers, list) and server in servers:
        servers.remove(server)
