"""Patch (bug fix, no monkey-patch): time spent in a C-STORE handler is not network idleness.

What it does: :func:`restart` restarts the association's DUL idle timer (``dul._idle_timer``, the
network timeout) after our EVT_C_STORE handler stored an object; the fast path holds the same
timer while it stores (:mod:`pacs.dimse.fastpath`).

Why: pynetdicom's idle timer keeps running while a handler works, so a store longer than the
network timeout aborted the association right after answering it. No speed figure: a behaviour fix
(tests/test_fastpath.py, ``test_store_longer_than_the_network_timeout_is_not_idleness``).

Upstream: yes, a bug fix pynetdicom could take (stop the timer while a handler runs).
"""

from __future__ import annotations

from typing import Any

from pynetdicom import dul as _dul

from .guard import require, source

_ACTIVE: list[bool] = [False]


def check() -> None:
    require("self._idle_timer = Timer(" in source(_dul.DULServiceProvider.__init__), "DUL has no idle timer")


def install() -> None:
    _ACTIVE[0] = True


def restart(assoc: Any) -> None:
    """Restart the network-timeout clock of ``assoc`` (patches off: nothing, as stock pynetdicom)."""
    if _ACTIVE[0]:
        assoc.dul._idle_timer.restart()
