"""Pre-fork supervisor: N worker processes serving one port.

Each worker is a fresh ``os.fork()`` of a parent that has started no threads
and created no pynetdicom objects; the worker calls ``serve()``, which must
build its own AE. ``pacs serve`` opens the listening socket before forking and
every worker accepts on it (:class:`pacs.dimse.server.SharedSocketServer`), so an
idle worker takes the next association. The parent forwards SIGTERM/SIGINT to
the workers, waits for them, and restarts a worker that dies, with a back-off
if workers keep dying quickly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from storage import metrics

LOGGER = logging.getLogger(__name__)

#: Seconds a worker gets to finish after SIGTERM before it is killed.
GRACE_SECONDS = 15.0
#: A worker that lived less than this is counted as a crash for back-off.
MIN_UPTIME = 5.0
#: Longest pause between restarts of a crashing worker.
MAX_BACKOFF = 30.0


def _spawn(serve: Callable[[], None]) -> int:
    """Fork one worker running ``serve``; return its pid."""
    pid = os.fork()
    if pid:
        return pid
    # Child: default signal dispositions, run, never return into the parent's code.
    code = 0
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        serve()
    except BaseException:  # report anything, then exit
        LOGGER.exception("worker %d failed", os.getpid())
        code = 1
    finally:
        os._exit(code)


def prefork(serve: Callable[[], None], workers: int, watch: Callable[[], None] | None = None) -> int:
    """Run ``workers`` copies of ``serve`` until SIGTERM/SIGINT; return an exit code.

    ``watch`` is called every 0.2 s while they run (``pacs serve`` restarts gunicorn from it).
    Must be called from the main thread of a process that has no other threads.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    started: dict[int, float] = {}
    backoff = 0.0
    try:
        for _ in range(workers):
            started[_spawn(serve)] = time.monotonic()
        while not stopping:
            time.sleep(0.2)
            if watch is not None:
                watch()
            for pid in list(started):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                uptime = time.monotonic() - started.pop(pid)
                LOGGER.warning("worker %d exited (status %d) after %.1f s", pid, status, uptime)
                metrics.process_exited(pid)
                backoff = min(MAX_BACKOFF, max(0.5, backoff * 2)) if uptime < MIN_UPTIME else 0.0
                deadline = time.monotonic() + backoff
                while not stopping and time.monotonic() < deadline:
                    time.sleep(0.1)
                if not stopping:
                    started[_spawn(serve)] = time.monotonic()
        return _stop_all(started)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _stop_all(children: dict[int, float]) -> int:
    """SIGTERM every worker, wait up to GRACE_SECONDS, SIGKILL the rest."""
    for pid in children:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    code = 0
    pending = set(children)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pending.discard(pid)
                code = code or (1 if os.waitstatus_to_exitcode(status) not in (0, -15) else 0)
        time.sleep(0.05)
    for pid in pending:
        _kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        code = 1
    return code


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
