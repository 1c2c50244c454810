"""Patch: pynetdicom receives C-STORE data sets into the encrypted spool, in bounded memory.

What it changes: pynetdicom can write a received data set to a temporary file as it arrives
(``_config.STORE_RECV_CHUNKED_DATASET``), so a 1 GB object never sits in memory, but its file is a
plain ``NamedTemporaryFile``: PHI in clear on disk. :func:`install` turns the chunked receive on
and replaces that file (``dimse_messages.NamedTemporaryFile``, the only thing it opens there) with
:class:`PynetdicomSpool`, a ``storage.spool.EncryptedSpool`` (memory up to :data:`MEMORY_LIMIT`,
then an unlinked file encrypted under a key held only in this process) with the few members
pynetdicom uses (``name``, ``write``, ``file.flush``, ``close``). The C-STORE handler reads it with
:func:`received`; pynetdicom closes it after the handler returns. The fast path
(:mod:`pacs.dimse.fastpath`) uses the same spool (:func:`new_spool`).

Why: bounded memory without plaintext on disk. Figures (bench/README.md): a 1 GiB object stored
with +12-17 MB of RSS instead of +1 GB; keeping data sets up to 8 MiB in memory (no file, no
second pass of AES) took small-1 server CPU from 16.9 to 11.7 ms per object at the time.

A write that fails (a full disk) is kept, not raised: pynetdicom would abort the association. The
rest of the data set arrives and is dropped, and :func:`received` raises the error so the handler
answers that one object Out of Resources while the association goes on (:func:`refusal`).

Upstream: partly. A hook for the temporary file (a factory in ``_config``) would be a small
change pynetdicom could take; keeping the association alive on a failed spool write is a bug fix.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom import _config, dimse_messages
from pynetdicom.events import Event

from storage.errors import disk_full
from storage.spool import EncryptedSpool

from ..status import OUT_OF_RESOURCES, UNABLE_TO_PROCESS
from .guard import require, source

log = logging.getLogger(__name__)

#: Received data sets up to this size stay in memory; larger ones spool to an encrypted file.
MEMORY_LIMIT = 8 << 20

_SPOOLS: dict[str, PynetdicomSpool] = {}
_LOCK = threading.Lock()
_DIR: list[Path | None] = [None]
_COUNTER = itertools.count()
_INSTALLED: list[bool] = [False]
# The module we patch, untyped: its NamedTemporaryFile (tempfile's) is replaced by our factory.
_messages: Any = dimse_messages
_PYNETDICOMS_OWN = _messages.NamedTemporaryFile


def new_spool() -> EncryptedSpool:
    """A spool for one received data set (pacs.dimse.fastpath): ``write``, then ``open``, ``discard``."""
    return EncryptedSpool(max_size=MEMORY_LIMIT, dir=_DIR[0])


class PynetdicomSpool:
    """The part of ``NamedTemporaryFile`` pynetdicom uses, over an :class:`EncryptedSpool`.

    ``name`` is only a key for :func:`received` (nothing is created under it: the spool's file,
    if any, is unlinked from the start); pynetdicom's ``os.unlink(name)`` after the handler finds
    nothing and lets it be.
    """

    def __init__(self) -> None:
        self.name = os.path.join(_DIR[0] or tempfile.gettempdir(),
                                 f"pacs-recv-{os.getpid()}-{next(_COUNTER)}.spool")
        self.spool: EncryptedSpool | None = new_spool()
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls ``.file.flush()``
        with _LOCK:
            _SPOOLS[self.name] = self

    def write(self, data: bytes) -> int:
        if self.spool is not None:
            try:
                self.spool.write(data)
            except OSError as exc:  # kept without its frames: they view pynetdicom's PDU buffer
                self.error = exc.with_traceback(None)
                self.spool.discard()
                self.spool = None  # still registered: received() finds it and raises the error
        return len(data)

    def flush(self) -> None:
        """Nothing to do: the spool writes whole segments as they fill."""

    def open(self) -> BinaryIO:
        if self.error is not None:
            raise self.error
        if self.spool is None:
            raise FileNotFoundError("this C-STORE's spool is closed")
        return self.spool.open()

    def close(self) -> None:
        with _LOCK:
            _SPOOLS.pop(self.name, None)
        if self.spool is not None:
            self.spool.discard()
            self.spool = None


def _factory(*_args: Any, **_kwargs: Any) -> PynetdicomSpool:
    return PynetdicomSpool()


def configure(directory: Path | None) -> None:
    """Spool files go to ``directory`` (made if missing); None: the system's temporary directory."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    _DIR[0] = directory


def check() -> None:
    require(hasattr(dimse_messages, "NamedTemporaryFile"), "dimse_messages has no NamedTemporaryFile")
    require("NamedTemporaryFile(delete=False" in source(dimse_messages),
            "pynetdicom's chunked receive changed")
    require(hasattr(_config, "STORE_RECV_CHUNKED_DATASET"), "no _config.STORE_RECV_CHUNKED_DATASET")


def install() -> None:
    _messages.NamedTemporaryFile = _factory
    _config.STORE_RECV_CHUNKED_DATASET = True
    _INSTALLED[0] = True


def uninstall() -> None:
    """Back to pynetdicom's receive in memory (benchmarks and tests that measure or need that)."""
    _messages.NamedTemporaryFile = _PYNETDICOMS_OWN
    _config.STORE_RECV_CHUNKED_DATASET = False
    _INSTALLED[0] = False


def is_installed() -> bool:
    """True once pynetdicom writes received data sets into our spool (this process)."""
    return _INSTALLED[0] and _messages.NamedTemporaryFile is _factory


def received(event: Event) -> BinaryIO | bytes:
    """The received object of an EVT_C_STORE as Part 10 (preamble, File Meta, data set as received).

    Patched: a stream over our spool (raises FileNotFoundError for an unknown spool, or the OSError
    that stopped it being written). Stock pynetdicom: ``event.encoded_dataset(include_meta=True)``.
    """
    if not is_installed():
        return event.encoded_dataset(include_meta=True)
    with _LOCK:
        spool = _SPOOLS.get(str(event.dataset_path))
    if spool is None:
        raise FileNotFoundError("no encrypted spool for this C-STORE")
    return spool.open()


def refusal(exc: OSError, actor: str) -> tuple[int, str]:
    """The C-STORE status and comment for a data set whose spool could not be written (both paths)."""
    if disk_full(exc):
        log.warning("a C-STORE from %s was refused: no space left to receive it", actor)
        return OUT_OF_RESOURCES, "no space left to receive this object"
    log.warning("a C-STORE from %s could not be spooled: %s", actor, exc.strerror or exc)
    return UNABLE_TO_PROCESS, "the object could not be received; see the server log"
