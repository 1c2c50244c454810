"""Patch: pynetdicom's association socket sets TCP_NODELAY, reads in large chunks and ACKs at once.

What it changes (``pynetdicom.transport.AssociationSocket``):

- ``__init__`` / ``connect``: TCP_NODELAY on every accepted and every requested socket.
  Why: pynetdicom never sets it, and Nagle's algorithm with the peer's delayed ACK costs ~40 ms per
  small message. Figures: 22 -> 353 C-STOREs/s (design notes, interop.md); pynetdicom SCU -> SCP
  per small C-STORE 57 -> 13 ms median (bench/README.md, "Transport alone").
- ``recv`` / ``ready``: reads with ``recv_into`` in :data:`READ_CHUNK` (256 KiB) chunks, straight
  into the PDU buffer for large PDUs, instead of 4 KiB ``recv`` calls; ``ready`` is true while
  buffered bytes remain. Figure: server CPU per CT slice 9.2 -> 5.1 ms (no fsync), ct-1 44 -> 51/s.
- Over TLS, a read goes on reading the records that are already there (:func:`_more_records`):
  an ``SSLSocket`` read returns one record (16 KiB) at most. Figure (issue 17): see bench/README.md.
- Each read sets TCP_QUICKACK (Linux), once per ``recv`` call: what was read is acknowledged at once. A peer with Nagle's
  algorithm on (dcmtk as installed, without ``TCP_NODELAY=1``) holds its next small segment until
  the previous one is acknowledged. Figure: stock ``storescu`` 21 -> ~250 small objects/s (Orthanc:
  11/s); stock ``getscu`` of 50 CT slices 2.5 -> 0.34 s.

Upstream: yes, all three. TCP_NODELAY and immediate ACKs are what any request/response protocol
wants (dcmtk offers both); larger reads are a plain improvement.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from typing import Any, cast

from pynetdicom.transport import AssociationSocket

from .guard import require, source

#: Bytes read from the socket per ``recv_into`` call.
READ_CHUNK = 256 * 1024

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def set_nodelay(sock: socket.socket | None) -> None:
    """Set TCP_NODELAY on a TCP socket (no-op for others or on error)."""
    if sock is None or sock.type != socket.SOCK_STREAM:
        return
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _ack_now(sock: socket.socket) -> None:
    """Acknowledge what was just read at once (TCP_QUICKACK, which Linux clears again by itself)."""
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


class RxBuffer:
    """Read-ahead buffer for one association socket."""

    __slots__ = ("buf", "view", "start", "end")

    def __init__(self) -> None:
        self.buf = bytearray(READ_CHUNK)
        self.view = memoryview(self.buf)
        self.start = self.end = 0

    def pending(self) -> int:
        return self.end - self.start

    def read(self, sock: socket.socket, nr_bytes: int) -> bytearray:
        """Return ``nr_bytes`` (fewer only if the peer closed the connection)."""
        out = bytearray(nr_bytes)
        take = min(nr_bytes, self.end - self.start)
        if take:
            out[:take] = self.view[self.start : self.start + take]
            self.start += take
        filled = take
        if filled == nr_bytes:
            return out
        # The buffer is empty from here on.
        self.start = self.end = 0
        tls = isinstance(sock, ssl.SSLSocket)
        try:
            with memoryview(out) as mv:
                while filled < nr_bytes:
                    need = nr_bytes - filled
                    if need >= READ_CHUNK:
                        got = sock.recv_into(mv[filled:], need)
                        if not got:
                            return out[:filled]
                        filled += got
                        continue
                    got = sock.recv_into(self.view, READ_CHUNK)
                    if not got:
                        return out[:filled]
                    if tls and got < READ_CHUNK:
                        got = _more_records(cast(ssl.SSLSocket, sock), self.view, got)
                    take = min(need, got)
                    mv[filled : filled + take] = self.view[:take]
                    filled += take
                    self.start, self.end = take, got
        finally:
            _ack_now(sock)
        return out


#: Room a TLS read-ahead keeps reading into (a record holds at most 16 KiB of data).
_TLS_RECORD = 16 * 1024 + 256


def _more_records(sock: ssl.SSLSocket, view: memoryview, end: int) -> int:
    """Read TLS records that are already here into ``view[end:]``; returns the new end.

    An ``SSLSocket`` read returns at most one record (16 KiB), so without this a 16 KiB PDU cost
    a trip through the reactor (``select``, one read, one ACK) each, where a plain socket's one
    256 KiB read serves many. Reads on while bytes wait, decrypted (``pending``) or in the kernel
    (``select`` with no timeout), and the buffer has room for a record.
    """
    while len(view) - end >= _TLS_RECORD:
        if not sock.pending():
            try:
                ready, _, _ = select.select([sock], [], [], 0)
            except (OSError, ValueError):
                break
            if not ready:
                break
        try:
            got = sock.recv_into(view[end:], len(view) - end)
        except (ssl.SSLWantReadError, BlockingIOError, TimeoutError):
            break
        if not got:  # closed: what was read is returned, the next read sees the end
            break
        end += got
    return end


def pending(asock: Any) -> bool:
    """True if bytes read ahead from this association socket wait in its buffer."""
    rx = getattr(asock, "_pacs_rx", None)
    return rx is not None and rx.pending() > 0


def check() -> None:
    require("self.socket.recv(bufsize)" in source(AssociationSocket.recv), "AssociationSocket.recv changed")
    require(isinstance(getattr(AssociationSocket, "ready", None), property), "AssociationSocket.ready changed")


def install() -> None:
    orig_init = AssociationSocket.__init__
    ready_property: Any = AssociationSocket.ready  # a property (typeshed: the getter)
    orig_ready = ready_property.fget
    orig_connect = AssociationSocket.connect

    # ``self: Any``: the patched socket carries an attribute of ours (_pacs_rx).
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._pacs_rx = RxBuffer()
        orig_init(self, *args, **kwargs)
        set_nodelay(self.socket)

    def connect(self: AssociationSocket, primitive: Any) -> None:
        set_nodelay(self.socket)
        orig_connect(self, primitive)

    def ready(self: Any) -> bool:
        if self.socket is not None and self._pacs_rx.pending():
            return True
        return bool(orig_ready(self))

    def recv(self: Any, nr_bytes: int) -> bytearray:
        rx: RxBuffer = self._pacs_rx
        return rx.read(self.socket, nr_bytes)

    AssociationSocket.__init__ = __init__  # type: ignore[method-assign]
    AssociationSocket.connect = connect  # type: ignore[method-assign]
    AssociationSocket.ready = property(ready)  # type: ignore[assignment,method-assign]
    AssociationSocket.recv = recv  # type: ignore[method-assign]
