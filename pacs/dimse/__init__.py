"""pynetdicom, fenced: every change this archive makes to pynetdicom's internals lives here.

pynetdicom is correct but, as an archive's SCP, slow: most of its time went to polling sleeps,
4 KiB reads, Nagle's delays and decoding every C-STORE through its DIMSE layer. The modules of this
package patch it at run time, one concern each; each module's docstring says what it changes, why,
the figure it bought (bench/README.md) and whether a pynetdicom release could take it:

==============  ==========================================================  ===========
module          what                                                        upstream?
==============  ==========================================================  ===========
``sockets``     TCP_NODELAY, 256 KiB ``recv_into`` reads, TCP_QUICKACK      yes
``reactors``    event-driven DUL and association reactors; send queue       in spirit
                with back-pressure
``handback``    a response taken by the reactor during a ``send_*()`` goes  yes (bug)
                back to its sender
``contexts``    presentation contexts copied without ``deepcopy``           yes
``uids``        UID checks remembered                                       possibly
``runtime``     no debug formatting of every PDU; GIL switch interval       yes / no
``fastpath``    C-STOREs read and answered in the DUL thread                no
``receive``     received data sets spooled encrypted, bounded memory        partly
``send``        stored objects streamed to C-GET/C-MOVE peers as stored     in spirit
``findrsp``     a pending C-FIND response is one PDU, command set encoded   in spirit
                once per query; identifiers sent pre-encoded
``pdusend``     P-DATA-TF PDUs queued back to back leave in one write       yes
``move``        an unreachable known C-MOVE destination is A702, not A801   yes (bug)
``idle``        a long C-STORE handler is not network idleness              yes (bug)
==============  ==========================================================  ===========

``server`` (serving, stopping, the shared listening socket) is no patch but reaches pynetdicom
internals too, so it is here as well. Nothing outside this package reads or writes a pynetdicom
private name (``tests/test_dimse_seam.py`` checks it).

One switch: :func:`install`, once per process before any association (``pacs serve`` calls it
before forking its DIMSE workers). It applies every patch only when pynetdicom is exactly
:data:`~pacs.dimse.guard.PYNETDICOM_VERSION` (pinned in ``pyproject.toml``) and every patch's
source check passes; otherwise, or when the ``dimse_patches`` setting is false, it logs one warning
and nothing is patched: the server runs on stock pynetdicom, slower and without the fast C-STORE
path, the encrypted receive spool (data sets are received in memory) or streamed sends (objects
are decoded and re-encoded by pynetdicom), and still correct.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pynetdicom

from . import (
    contexts,
    fastpath,
    findrsp,
    handback,
    idle,
    move,
    pdusend,
    reactors,
    receive,
    runtime,
    send,
    sockets,
    uids,
)
from .guard import PYNETDICOM_VERSION, Incompatible, check_version

__all__ = ["PYNETDICOM_VERSION", "active", "install"]

log = logging.getLogger(__name__)

#: Every patch, in the order applied. Each module has ``check()`` and ``install()``.
PATCHES = (sockets, reactors, handback, contexts, uids, fastpath, receive, send, move, findrsp, pdusend,
           idle)

_LOCK = threading.Lock()
_STATE: list[bool | None] = [None]  # decided once per process: patched or stock


def active() -> bool:
    """True if this process runs on the patched pynetdicom (:func:`install` applied the patches)."""
    return bool(_STATE[0])


def install(enabled: bool = True, *, spool_dir: Path | None = None,
            switch_interval: float | None = 0.0005) -> bool:
    """Apply every patch (once per process); True if applied, False if running on stock pynetdicom.

    ``enabled`` is the ``dimse_patches`` setting; ``spool_dir`` where large received data sets are
    spooled (encrypted); ``switch_interval`` the GIL switch interval while patched (None or 0: leave
    it). The first call decides for the process; later calls only set the spool directory.
    """
    with _LOCK:
        receive.configure(spool_dir)
        if _STATE[0] is not None:
            return _STATE[0]
        if not enabled:
            log.warning("dimse_patches is off: DICOM networking runs on stock pynetdicom %s (slower)",
                        pynetdicom.__version__)
            _STATE[0] = False
            return False
        try:
            check_version()
            runtime.check()
            for patch in PATCHES:
                patch.check()
        except Incompatible as exc:
            log.warning("%s; DICOM networking runs on stock pynetdicom, slower (pyproject.toml pins "
                        "pynetdicom==%s)", exc, PYNETDICOM_VERSION)
            _STATE[0] = False
            return False
        for patch in PATCHES:
            patch.install()
        runtime.install(switch_interval)
        _STATE[0] = True
        log.debug("pynetdicom %s patched (pacs.dimse)", pynetdicom.__version__)
        return True
