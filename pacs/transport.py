"""Make pynetdicom's network path fast, under its public API.

Call :func:`tune` once before creating associations or servers (it is
idempotent and thread-safe). Then use pynetdicom as usual, or
:func:`serve_forever` / :func:`make_server` for an SCP.

What :func:`tune` changes (monkey-patches pynetdicom **3.0.x** internals; a
check fails loudly with :class:`TuningError` if the internals it relies on
are not there):

1. ``AssociationSocket.__init__``: TCP_NODELAY on every accepted and every
   requested socket (pynetdicom never sets it: Nagle + delayed ACK cost
   ~40 ms per small message).
2. ``AssociationSocket.recv`` / ``.ready``: reads with ``recv_into`` in
   256 KiB chunks (and straight into the PDU buffer for large PDUs) instead
   of 4 KiB ``recv`` calls; ``ready`` is true while buffered bytes remain.
   Each read sets TCP_QUICKACK (Linux): what was read is acknowledged at
   once. A peer with Nagle's algorithm on (dcmtk as installed, without
   ``TCP_NODELAY=1``) holds its next small segment until the previous one is
   acknowledged, and the kernel's delayed ACK made that ~40 ms per message:
   a stock ``storescu`` pushed 21 small objects/s (Orthanc: 11/s), now ~250/s;
   a stock ``getscu`` of 50 CT slices took 2.5 s, now 0.34 s.
3. The DUL reactor's idle ``time.sleep(0.001)`` becomes a ``select`` on the
   peer socket plus a wake-up socketpair that is written whenever another
   thread queues a primitive for the DUL (``to_provider_queue``,
   ``event_queue``) or stops it. Idle, it wakes every 50 ms only.
5. Process-wide: the GIL switch interval drops from 5 ms to 0.5 ms
   (:data:`SWITCH_INTERVAL`, env ``PACS_SWITCH_INTERVAL``; a reactor woken
   by another thread otherwise waits up to 5 ms for the GIL), and
   ``_config.LOG_HANDLER_LEVEL`` becomes ``"none"`` unless the
   ``pynetdicom`` logger is at DEBUG.
4. The association reactor's per-loop ``time.sleep(0.001)`` becomes a wait
   on a :class:`threading.Event` set when a DIMSE message or an ACSE
   primitive arrives, the reactor checkpoint is cleared (``send_*`` and
   ``release``), or the DUL thread ends. Bounded by 50 ms as well.

6. :func:`pacs.fastpath.install`: C-STOREs we receive are served in the DUL
   thread when the association's C-STORE handler registered a fast function
   (see that module).

7. ``set_uid`` (UID checks) in pynetdicom's PDU, primitive and presentation modules remembers
   its results (:func:`_memoized_set_uid`): an association proposing 120 SOP classes spent about
   half of its negotiation re-checking the same UIDs.

8. ``Association._serve_request`` hands a DIMSE *response* back to the message queue when a
   ``send_*()`` is waiting (the reactor checkpoint is cleared). pynetdicom pauses the reactor
   during a ``send_*()`` with a handshake that has a window: a ``send_*()`` that starts just as
   the reactor resumes from the previous one still sees it paused, and the reactor may then take
   the new response off the queue and drop it ("Received unexpected C-ECHO service message"),
   leaving the sender to wait out its DIMSE timeout (60 s by default). Measured: 4 of 4,500
   back-to-back C-ECHOs on a busy machine; the same happens to C-STOREs of a C-MOVE.

Items 3 and 4 replace the module-global ``time`` in ``pynetdicom.dul`` and
``pynetdicom.association`` with a proxy whose ``sleep`` only differs when
called from those two reactor loops (identified by the calling thread and,
for the association, the 1 ms argument). :func:`_check_internals` verifies
with :mod:`inspect` that those exact sleep calls are still in the reactor
sources.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom import _config
from pynetdicom import association as _association
from pynetdicom import dimse as _dimse
from pynetdicom import dul as _dul
from pynetdicom._globals import DEFAULT_MAX_LENGTH
from pynetdicom.ae import ApplicationEntity
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from . import fastpath

LOGGER = logging.getLogger(__name__)

#: pynetdicom versions whose internals these patches were written against.
SUPPORTED_VERSIONS = ("3.0.",)
#: Bytes read from the socket per ``recv_into`` call.
READ_CHUNK = 256 * 1024
#: Maximum PDU we receive when the fast C-STORE path serves (see :func:`make_server`).
FAST_MAX_PDU = int(os.environ.get("PACS_DIMSE_MAX_PDU", str(256 * 1024)))
#: Longest a reactor sleeps without an event (bounds timer granularity).
IDLE_WAIT = 0.05

#: GIL switch interval (CPython default 5 ms): a reactor woken by another
#: thread waits up to this long for the GIL; None leaves it alone.
SWITCH_INTERVAL: float | None = float(os.environ.get("PACS_SWITCH_INTERVAL", "0.0005")) or None

_lock = threading.Lock()
_tuned = False


class TuningError(RuntimeError):
    """pynetdicom's internals are not what :func:`tune` was written for."""


def is_tuned() -> bool:
    """Return True once :func:`tune` has been applied in this process."""
    return _tuned


def tune() -> None:
    """Apply the transport patches described in the module docstring (once)."""
    global _tuned
    with _lock:
        if _tuned:
            return
        _check_internals()
        _patch_socket()
        _patch_dul()
        _patch_association()
        _patch_context_copy()
        _patch_set_uid()
        fastpath.install()
        if SWITCH_INTERVAL is not None:
            sys.setswitchinterval(SWITCH_INTERVAL)
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            # The "standard" handlers format a debug summary of every PDU and
            # DIMSE message (~2% CPU) even when nothing is logged.
            _config.LOG_HANDLER_LEVEL = "none"
        _tuned = True
        LOGGER.debug("pynetdicom %s transport tuned", pynetdicom.__version__)


# -- checks ------------------------------------------------------------------


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise TuningError(
            f"pynetdicom {pynetdicom.__version__}: {what}; pacs.transport.tune() was "
            f"written for pynetdicom {SUPPORTED_VERSIONS} and must be revisited"
        )


def _check_internals() -> None:
    """Fail loudly if the pynetdicom internals we patch have changed."""
    _require(pynetdicom.__version__.startswith(SUPPORTED_VERSIONS), "unsupported version")
    dul_src = inspect.getsource(_dul.DULServiceProvider.run_reactor)
    _require("time.sleep(self._run_loop_delay)" in dul_src, "DUL reactor sleep changed")
    _require("self._is_transport_event()" in dul_src, "DUL reactor loop changed")
    assoc_src = inspect.getsource(_association.Association._run_reactor)
    _require("time.sleep(0.001)" in assoc_src, "association reactor sleep changed")
    _require("self.dimse.get_msg(block=False)" in assoc_src, "association reactor changed")
    init_src = inspect.getsource(_dul.DULServiceProvider.__init__)
    for name in ("to_provider_queue", "event_queue", "to_user_queue"):
        _require(f"self.{name}" in init_src, f"DUL has no {name}")
    _require("self.msg_queue" in inspect.getsource(_dimse.DIMSEServiceProvider.__init__),
             "DIMSE provider has no msg_queue")
    _require("_reactor_checkpoint" in inspect.getsource(_association.Association.__init__),
             "Association has no _reactor_checkpoint")
    _require("if not msg.is_valid_request:" in inspect.getsource(_association.Association._serve_request),
             "Association._serve_request changed")
    sock_src = inspect.getsource(AssociationSocket.recv)
    _require("self.socket.recv(bufsize)" in sock_src, "AssociationSocket.recv changed")
    _require(_dul.time is time and _association.time is time, "reactor modules' time patched")


# -- sockets -------------------------------------------------------------------


def set_nodelay(sock: socket.socket | None) -> None:
    """Set TCP_NODELAY on a TCP socket (no-op for others or on error)."""
    if sock is None or sock.type != socket.SOCK_STREAM:
        return
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


def _ack_now(sock: socket.socket) -> None:
    """Acknowledge what was just read at once (TCP_QUICKACK, which Linux clears again by itself)."""
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


class _RxBuffer:
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
        with memoryview(out) as mv:
            while filled < nr_bytes:
                need = nr_bytes - filled
                if need >= READ_CHUNK:
                    got = sock.recv_into(mv[filled:], need)
                    if not got:
                        return out[:filled]
                    _ack_now(sock)
                    filled += got
                    continue
                got = sock.recv_into(self.view, READ_CHUNK)
                if not got:
                    return out[:filled]
                _ack_now(sock)
                take = min(need, got)
                mv[filled : filled + take] = self.view[:take]
                filled += take
                self.start, self.end = take, got
        return out


def _patch_socket() -> None:
    orig_init = AssociationSocket.__init__
    orig_ready = AssociationSocket.ready.fget
    orig_connect = AssociationSocket.connect

    def __init__(self: AssociationSocket, *args: Any, **kwargs: Any) -> None:
        self._pacs_rx = _RxBuffer()
        orig_init(self, *args, **kwargs)
        set_nodelay(self.socket)

    def connect(self: AssociationSocket, primitive: Any) -> None:
        set_nodelay(self.socket)
        orig_connect(self, primitive)

    def ready(self: AssociationSocket) -> bool:
        if self.socket is not None and self._pacs_rx.pending():
            return True
        return bool(orig_ready(self))

    def recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
        return self._pacs_rx.read(self.socket, nr_bytes)

    AssociationSocket.__init__ = __init__  # type: ignore[method-assign]
    AssociationSocket.connect = connect  # type: ignore[method-assign]
    AssociationSocket.ready = property(ready)  # type: ignore[assignment,method-assign]
    AssociationSocket.recv = recv  # type: ignore[method-assign]


# -- wake-ups ------------------------------------------------------------------


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake()`` after each ``put``."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


#: Data PDUs one association may have queued for sending (at most 64 x the peer's max PDU).
MAX_QUEUED_PDATA = 64


class _SendQueue(_WakingQueue):
    """The DUL's outgoing queue, with back-pressure on data PDUs.

    pynetdicom's ``send_msg`` queues every P-DATA PDU of a message at once: sending a 1 GB object
    put the whole object in memory. Here a thread other than the DUL's own waits while
    ``MAX_QUEUED_PDATA`` data PDUs are already queued; control primitives never wait.
    """

    def __init__(self, wake: Callable[[], None], dul_thread: Callable[[], Any]) -> None:
        super().__init__(wake)
        self._dul_thread = dul_thread
        self._pdata = 0
        self._room = threading.Condition(self.mutex)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, P_DATA) and threading.current_thread() is not self._dul_thread():
            with self._room:
                while self._pdata >= MAX_QUEUED_PDATA:
                    self._room.wait(0.5)
                self._pdata += 1
        elif isinstance(item, P_DATA):
            with self.mutex:
                self._pdata += 1
        super().put(item, block, timeout)

    def _get(self) -> Any:  # called with self.mutex held
        item = super()._get()
        if isinstance(item, P_DATA):
            self._pdata -= 1
            self._room.notify()
        return item


class _WakingEvent(threading.Event):
    """An event that calls ``wake()`` when cleared (the reactor checkpoint)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake()


class _TimeProxy:
    """Stands in for :mod:`time` in a pynetdicom module; only ``sleep`` differs."""

    def __init__(self, sleep: Callable[[float], None]) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _wake_dul(dul: Any) -> None:
    """Wake the DUL reactor if called from another thread."""
    if threading.current_thread() is dul:
        return
    wsock = dul._pacs_wake_w
    with contextlib.suppress(OSError):  # full (already woken) or closed
        wsock.send(b"\0")


def _dul_idle_wait(dul: Any) -> None:
    """Block the DUL reactor until data, a queued primitive, a stop, or IDLE_WAIT."""
    if dul._kill_thread or dul.to_provider_queue.queue or dul.event_queue.queue:
        return
    rlist: list[Any] = [dul._pacs_wake_r]
    asock = dul.socket
    raw = asock.socket if asock is not None else None
    if raw is not None and asock._is_connected:
        if asock._pacs_rx.pending() or (hasattr(raw, "pending") and raw.pending()):
            return
        rlist.append(raw)
    try:
        select.select(rlist, [], [], IDLE_WAIT)
    except (OSError, ValueError):
        time.sleep(0.001)  # socket closed under us: let the reactor notice
    try:
        while dul._pacs_wake_r.recv(4096):
            pass
    except OSError:
        pass


def _dul_sleep(secs: float) -> None:
    thread = threading.current_thread()
    if isinstance(thread, _dul.DULServiceProvider) and hasattr(thread, "_pacs_wake_r"):
        _dul_idle_wait(thread)
    else:
        time.sleep(secs)


def _patch_dul() -> None:
    cls = _dul.DULServiceProvider
    orig_init, orig_run, orig_kill, orig_stop = (
        cls.__init__, cls.run_reactor, cls.kill_dul, cls.stop_dul
    )

    def __init__(self: Any, assoc: Any) -> None:
        orig_init(self, assoc)
        self._pacs_wake_r, self._pacs_wake_w = socket.socketpair()
        self._pacs_wake_r.setblocking(False)
        self._pacs_wake_w.setblocking(False)

        def wake() -> None:
            _wake_dul(self)

        def wake_assoc() -> None:
            ev = getattr(self.assoc, "_pacs_wake", None)
            if ev is not None:
                ev.set()

        self.to_provider_queue = _SendQueue(wake, lambda: self)  # the DUL is its own thread
        self.event_queue = _WakingQueue(wake)
        self.to_user_queue = _WakingQueue(wake_assoc)

    def run_reactor(self: Any) -> None:
        try:
            orig_run(self)
        finally:
            ev = getattr(self.assoc, "_pacs_wake", None)
            if ev is not None:
                ev.set()
            self._pacs_wake_r.close()
            self._pacs_wake_w.close()

    def kill_dul(self: Any) -> None:
        orig_kill(self)
        _wake_dul(self)

    def stop_dul(self: Any) -> bool:
        if self.state_machine.current_state == "Sta1":
            _wake_dul(self)
        return bool(orig_stop(self))

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.run_reactor = run_reactor  # type: ignore[method-assign]
    cls.kill_dul = kill_dul  # type: ignore[method-assign]
    cls.stop_dul = stop_dul  # type: ignore[method-assign]
    _dul.time = _TimeProxy(_dul_sleep)  # type: ignore[assignment]


def _assoc_idle_wait(assoc: Any) -> None:
    """Block the association reactor until something for it happens, or IDLE_WAIT."""
    ev: threading.Event = assoc._pacs_wake
    ev.clear()
    if (
        assoc._kill
        or assoc.dimse.msg_queue.queue
        or assoc.dul.to_user_queue.queue
        or not assoc._reactor_checkpoint.is_set()
        or not assoc.dul.is_alive()
    ):
        return
    ev.wait(IDLE_WAIT)


def _assoc_sleep(secs: float) -> None:
    thread = threading.current_thread()
    if secs == 0.001 and isinstance(thread, _association.Association):
        _assoc_idle_wait(thread)
    else:
        time.sleep(secs)


def _patch_association() -> None:
    cls = _association.Association
    orig_init, orig_kill = cls.__init__, cls.kill

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        self._pacs_wake = threading.Event()
        checkpoint = _WakingEvent(self._pacs_wake.set)
        checkpoint.set()
        self._reactor_checkpoint = checkpoint
        self.dimse.msg_queue = _WakingQueue(self._pacs_wake.set)

    def kill(self: Any) -> None:
        self._pacs_wake.set()
        orig_kill(self)

    orig_serve = cls._serve_request

    def _serve_request(self: Any, msg: Any, context_id: int) -> None:
        # A response taken off the queue while a send_*() waits for it is that sender's: hand it
        # back instead of dropping it (item 8 of the module docstring).
        if not msg.is_valid_request and not self._reactor_checkpoint.is_set():
            self.dimse.msg_queue.put((context_id, msg))
            return
        orig_serve(self, msg, context_id)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.kill = kill  # type: ignore[method-assign]
    cls._serve_request = _serve_request  # type: ignore[method-assign]
    _association.time = _TimeProxy(_assoc_sleep)  # type: ignore[assignment]


# -- presentation contexts -----------------------------------------------------


def _copy_context(self: PresentationContext, memo: dict[int, Any]) -> PresentationContext:
    """``deepcopy`` of a presentation context: its attributes are immutable but one list."""
    new = PresentationContext.__new__(PresentationContext)
    new.__dict__.update(self.__dict__)
    new._transfer_syntax = list(self._transfer_syntax)
    return new


def _patch_context_copy() -> None:
    """Every accepted association deep-copies the server's ~160 supported contexts.

    pynetdicom (``RequestHandler._create_association``) copies them so that negotiation cannot
    alter the server's list. The generic ``deepcopy`` of 160 contexts x 35 transfer syntax UIDs
    held the GIL ~70 ms per association (py-spy, 4 parallel storescu: 30 % of the DIMSE worker's
    GIL time). A context holds immutable values (str-based UIDs, ints, bools) and one list, so a
    copy with a new list is as independent.
    """
    _require(set(vars(PresentationContext())) == {
        "_context_id", "_abstract_syntax", "_transfer_syntax", "result", "_scu_role", "_scp_role",
        "_as_scp", "_as_scu"}, "PresentationContext attributes changed")
    PresentationContext.__deepcopy__ = _copy_context  # type: ignore[attr-defined]


# -- UID checks ----------------------------------------------------------------

_UID_MEMO_LIMIT = 10_000  # distinct values remembered (a peer may send any number of new UIDs)


def _memoized_set_uid(original: Callable[..., Any]) -> Callable[..., Any]:
    """``pynetdicom.utils.set_uid`` remembering its result per value and arguments.

    An association proposing 120 SOP classes (dcmtk ``storescu``'s default) checks each abstract
    and transfer syntax UID several times over (decoding the request, negotiating, building the
    answer) at ~9 µs a check, and the same few hundred UIDs come back on every association.
    Measured: negotiating storescu's request 14.2 -> 6.1 ms (in-process); server CPU for 100
    storescu associations of one small object each 1.95-2.18 -> 1.72 s. A value that fails is not
    remembered (it raises again, with pynetdicom's message); the conformance setting is part of the key.
    """
    memo: dict[tuple[Any, ...], Any] = {}

    def set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True,
                validate: bool = True) -> Any:
        if not isinstance(value, str | bytes):
            return original(value, name, allow_empty, allow_none, validate)
        key = (type(value), value, name, allow_empty, allow_none, validate,
               _config.ENFORCE_UID_CONFORMANCE)
        try:
            return memo[key]
        except KeyError:
            result = original(value, name, allow_empty, allow_none, validate)
            if len(memo) < _UID_MEMO_LIMIT:
                memo[key] = result
            return result

    set_uid.__wrapped__ = original  # type: ignore[attr-defined]
    return set_uid


def _patch_set_uid() -> None:
    """Every pynetdicom module that imported ``set_uid`` gets the memoized one."""
    from pynetdicom import ae, dimse_primitives, pdu_items, pdu_primitives, presentation, utils

    memoized = _memoized_set_uid(utils.set_uid)
    for module in (ae, dimse_primitives, pdu_items, pdu_primitives, presentation):
        _require(getattr(module, "set_uid", None) is utils.set_uid, f"{module.__name__}.set_uid changed")
        module.set_uid = memoized  # type: ignore[attr-defined]


# -- serving -------------------------------------------------------------------


class TunedAssociationServer(ThreadedAssociationServer):
    """Threaded association server; optionally binds with SO_REUSEPORT."""

    reuse_port = False

    def server_bind(self) -> None:
        """Set SO_REUSEPORT when asked, then bind as pynetdicom does."""
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _ReusePortServer(TunedAssociationServer):
    reuse_port = True


class SharedSocketServer(TunedAssociationServer):
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
        self.socket.close()
        self.socket = self.listen_socket
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """The parent listens already."""

    def server_close(self) -> None:
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
    ssl_context: Any = None,
    listen_socket: socket.socket | None = None,
) -> TunedAssociationServer:
    """Tune pynetdicom and return a bound, listening (not yet serving) server.

    With ``listen_socket`` (from :func:`listen`, inherited across a fork) the server accepts on
    it instead of binding ``address``/``port`` itself (:class:`SharedSocketServer`).

    Maximum PDU we receive: when C-STOREs go through :mod:`pacs.fastpath` and
    ``ae.maximum_pdu_size`` is pynetdicom's default, it becomes
    :data:`FAST_MAX_PDU` (env ``PACS_DIMSE_MAX_PDU``): the fast path parses PDV
    items straight out of each PDU, so fewer, larger PDUs cost less (ct-1 with
    dcmtk, no fsync: 454 vs 240 CT slices/s, 0.95 vs 1.95 ms CPU each).
    Otherwise it is left as set: for pynetdicom's own path 16 KiB PDUs cost
    less server CPU per CT slice than 1 MiB ones (4.0 vs 4.9 ms), as its DUL
    copies each PDU several times.
    """
    tune()
    if (fastpath.is_enabled() and fastpath.serves(evt_handlers or [])
            and ae.maximum_pdu_size == DEFAULT_MAX_LENGTH):
        ae.maximum_pdu_size = FAST_MAX_PDU
    server_class: type[TunedAssociationServer] = (
        _ReusePortServer if reuse_port else TunedAssociationServer)
    if listen_socket is not None:
        server_class = type("SharedSocketServer", (SharedSocketServer,), {"listen_socket": listen_socket})
    server = ae.make_server(
        (address, port),
        evt_handlers=evt_handlers or [],
        ssl_context=ssl_context,
        server_class=server_class,
    )
    ae._servers.append(server)
    return server


def serve_forever(
    ae: ApplicationEntity,
    address: str,
    port: int,
    *,
    reuse_port: bool = False,
    evt_handlers: list[Any] | None = None,
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
        ae, address, port, reuse_port=reuse_port, evt_handlers=evt_handlers,
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


def stop_server(server: TunedAssociationServer, drain_timeout: float = 10.0) -> None:
    """Close the listening socket, wait for associations, abort stragglers."""
    server.server_close()
    deadline = time.monotonic() + drain_timeout
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    for assoc in server.active_associations:
        assoc.abort()
    if server in server.ae._servers:
        server.ae._servers.remove(server)
