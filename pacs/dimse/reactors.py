"""Patch: pynetdicom's two reactor loops wait for events instead of polling every millisecond.

What it changes:

- The DUL reactor (``DULServiceProvider.run_reactor``) idles with ``time.sleep(0.001)``. Here it
  ``select``\\ s on the peer socket plus a wake-up socketpair that is written whenever another thread
  queues a primitive for the DUL (``to_provider_queue``, ``event_queue``) or stops it
  (``kill_dul``, ``stop_dul``). Idle, it wakes every :data:`IDLE_WAIT` (50 ms) only.
- The association reactor (``Association._run_reactor``) sleeps ``time.sleep(0.001)`` per loop.
  Here it waits on a :class:`threading.Event` set when a DIMSE message (``dimse.msg_queue``) or an
  ACSE primitive (``dul.to_user_queue``) arrives, the reactor checkpoint is cleared (``send_*`` and
  ``release``), the association is killed, or the DUL thread ends. Bounded by 50 ms as well.
- Both modules' global ``time`` becomes a proxy whose ``sleep`` differs only when called from those
  two loops (identified by the calling thread, and for the association by the 1 ms argument);
  :func:`check` verifies that those exact sleep calls are still in the reactor sources.

Why: py-spy on a bare SCP put most samples in those sleeps; each message waited up to 1 ms per
hand-off, and an idle open association cost 8 % CPU. Figures (bench/README.md, "Transport alone"):
C-ECHO over one association 202-234 -> 335-347/s; idle association 8 % -> 0.7 % CPU.

- Back-pressure: pynetdicom's ``send_msg`` queues every P-DATA PDU of a message at once, so sending
  a 1 GB object put the whole object in memory. :class:`SendQueue` makes a thread other than the
  DUL's wait while :data:`MAX_QUEUED_PDATA` data PDUs are queued; control primitives never wait.
  Figure: C-GET of a 1 GiB object +4.1 GB -> +11 MB RSS (with :mod:`pacs.dimse.send`).

Upstream: yes in spirit (event-driven reactors and a bounded send queue are improvements pynetdicom
could take), but not as written: the ``time`` proxy is a patch-only device.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dimse as _dimse
from pynetdicom import dul as _dul
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from . import sockets
from .guard import require, source

# The two modules whose ``time`` (imported there, not exported) our clock proxies replace.
_dul_module: Any = _dul
_association_module: Any = _association

#: Longest a reactor sleeps without an event (bounds timer granularity).
IDLE_WAIT = 0.05
#: Data PDUs one association may have queued for sending (at most 64 x the peer's max PDU).
MAX_QUEUED_PDATA = 64


class WakingQueue(queue.Queue[Any]):
    """A queue that calls ``wake()`` after each ``put``."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class SendQueue(WakingQueue):
    """The DUL's outgoing queue, with back-pressure on data PDUs (see the module docstring)."""

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


class WakingEvent(threading.Event):
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
    """Wake the DUL reactor if called from another thread, unless a wake-up is already under way.

    ``_pacs_woken`` is set before the wake-up byte is written and cleared by the reactor before it
    looks at its queues (:func:`_dul_idle_wait`): while it is set, the reactor has yet to look, so
    what was just queued will be seen without another byte (a system call and a thread switch per
    queued PDU; a C-FIND answering 1,000 matches queued 1,000).
    """
    if threading.current_thread() is dul or dul._pacs_woken:
        return
    dul._pacs_woken = True
    wsock = dul._pacs_wake_w
    with contextlib.suppress(OSError):  # full (already woken) or closed
        wsock.send(b"\0")


def _dul_idle_wait(dul: Any) -> None:
    """Block the DUL reactor until data, a queued primitive, a stop, or IDLE_WAIT."""
    dul._pacs_woken = False  # before looking at the queues: a later put writes the wake-up byte
    if dul._kill_thread or dul.to_provider_queue.queue or dul.event_queue.queue:
        return
    rlist: list[Any] = [dul._pacs_wake_r]
    asock = dul.socket
    raw = asock.socket if asock is not None else None
    if raw is not None and asock._is_connected:
        if sockets.pending(asock) or (hasattr(raw, "pending") and raw.pending()):
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


def check() -> None:
    dul_src = source(_dul.DULServiceProvider.run_reactor)
    require("time.sleep(self._run_loop_delay)" in dul_src, "DUL reactor sleep changed")
    require("self._is_transport_event()" in dul_src, "DUL reactor loop changed")
    assoc_src = source(_association.Association._run_reactor)
    require("time.sleep(0.001)" in assoc_src, "association reactor sleep changed")
    require("self.dimse.get_msg(block=False)" in assoc_src, "association reactor changed")
    init_src = source(_dul.DULServiceProvider.__init__)
    for name in ("to_provider_queue", "event_queue", "to_user_queue", "_kill_thread"):
        require(f"self.{name}" in init_src, f"DUL has no {name}")
    require("self.msg_queue" in source(_dimse.DIMSEServiceProvider.__init__),
            "DIMSE provider has no msg_queue")
    assoc_init = source(_association.Association.__init__)
    require("_reactor_checkpoint" in assoc_init and "self._kill" in assoc_init,
            "Association has no _reactor_checkpoint or _kill")
    require("_is_connected" in source(AssociationSocket.__init__),
            "AssociationSocket has no _is_connected")
    require(_dul_module.time is time and _association_module.time is time,
            "reactor modules' time patched")


def install() -> None:
    _install_dul()
    _install_association()


def _install_dul() -> None:
    cls = _dul.DULServiceProvider
    orig_init, orig_run, orig_kill, orig_stop = (
        cls.__init__, cls.run_reactor, cls.kill_dul, cls.stop_dul
    )

    def __init__(self: Any, assoc: Any) -> None:
        orig_init(self, assoc)
        self._pacs_wake_r, self._pacs_wake_w = socket.socketpair()
        self._pacs_wake_r.setblocking(False)
        self._pacs_wake_w.setblocking(False)
        self._pacs_woken = False

        def wake() -> None:
            _wake_dul(self)

        def wake_assoc() -> None:
            ev = getattr(self.assoc, "_pacs_wake", None)
            if ev is not None:
                ev.set()

        self.to_provider_queue = SendQueue(wake, lambda: self)  # the DUL is its own thread
        self.event_queue = WakingQueue(wake)
        self.to_user_queue = WakingQueue(wake_assoc)

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
    _dul_module.time = _TimeProxy(_dul_sleep)


def _install_association() -> None:
    cls = _association.Association
    orig_init, orig_kill = cls.__init__, cls.kill

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        self._pacs_wake = threading.Event()
        checkpoint = WakingEvent(self._pacs_wake.set)
        checkpoint.set()
        self._reactor_checkpoint = checkpoint
        self.dimse.msg_queue = WakingQueue(self._pacs_wake.set)

    def kill(self: Any) -> None:
        self._pacs_wake.set()
        orig_kill(self)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.kill = kill  # type: ignore[method-assign]
    _association_module.time = _TimeProxy(_assoc_sleep)
