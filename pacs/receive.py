"""Large C-STOREs spooled to disk in bounded memory, encrypted: never plaintext on disk.

pynetdicom can write a received data set to a temporary file as it arrives
(``_config.STORE_RECV_CHUNKED_DATASET``), so a 1 GB object never sits in memory. Its file is a
plain ``NamedTemporaryFile``: PHI in clear on disk. :func:`enable` replaces that file (pynetdicom
3.0's ``dimse_messages.NamedTemporaryFile``, the only thing it opens) with one that encrypts what
is written (storage.crypto segments) under a random key held only in this process's memory. The
C-STORE handler opens the spool with :func:`open_received`; pynetdicom closes and unlinks it after
the handler returns, as before.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom import _config, dimse_messages

from storage.crypto import DecryptingReader, EncryptingWriter
from storage.errors import disk_full

from .status import OUT_OF_RESOURCES, UNABLE_TO_PROCESS

log = logging.getLogger(__name__)

_SPOOLS: dict[str, _EncryptedTempFile] = {}
_LOCK = threading.Lock()
_DIR: list[Path | None] = [None]
_COUNTER = itertools.count()
#: Received data sets up to this size stay in memory; larger ones spool to an encrypted file.
MEMORY_LIMIT = 8 << 20


class _EncryptedTempFile:
    """The part of ``NamedTemporaryFile`` pynetdicom uses: ``name``, ``write``, ``file.flush``, ``close``.

    Up to ``MEMORY_LIMIT`` bytes stay in memory (most objects: no file, no extra pass of AES);
    past that the content moves to an encrypted file named ``name``, created only then.
    """

    def __init__(self, directory: Path | None):
        self.name = os.path.join(directory or tempfile.gettempdir(),
                                 f"pacs-recv-{os.getpid()}-{next(_COUNTER)}.spool")
        self._mem: io.BytesIO | None = io.BytesIO()
        self._raw: BinaryIO | None = None
        self._key = b""
        self._writer: EncryptingWriter | None = None
        self.file = self  # pynetdicom calls ``.file.flush()``
        with _LOCK:
            _SPOOLS[self.name] = self

    def write(self, data: bytes) -> int:
        if self._writer is not None:
            return self._writer.write(data)
        assert self._mem is not None
        n = self._mem.write(data)
        if self._mem.tell() > MEMORY_LIMIT:
            self._roll()
        return n

    def _roll(self) -> None:
        assert self._mem is not None
        fd = os.open(self.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._raw = os.fdopen(fd, "wb", buffering=1 << 20)
        self._key = os.urandom(32)
        self._writer = EncryptingWriter(self._raw, self._key, "recv")
        self._writer.write(self._mem.getbuffer())
        self._mem = None

    def flush(self) -> None:
        """Nothing to do: whole segments are written as they fill."""

    def finish(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            assert self._raw is not None
            try:
                writer.close()
            finally:
                self._raw.close()  # closes the file even when the flush fails (a full disk)

    def open(self) -> BinaryIO:
        if self._mem is not None:
            return io.BytesIO(self._mem.getbuffer())
        self.finish()
        return io.BufferedReader(DecryptingReader(open(self.name, "rb"), self._key, "recv"), 1 << 20)

    def close(self) -> None:
        try:
            self.finish()
        finally:
            self._mem = None
            with _LOCK:
                _SPOOLS.pop(self.name, None)

    def discard(self) -> None:
        """Close, and remove the file if the content had rolled over to one."""
        self._forget()
        self.close()

    def _forget(self) -> None:
        """Drop what was received, and the file if the content had rolled over to one."""
        rolled = self._raw is not None
        with contextlib.suppress(OSError):  # e.g. the disk filled up while it was being written
            self.finish()
        self._mem = None
        if rolled:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.name)


class _PynetdicomSpool(_EncryptedTempFile):
    """The spool pynetdicom writes into itself: a failed write (a full disk) is kept, not raised.

    pynetdicom aborts the association when its spool cannot be written. Keeping the error instead
    lets the rest of the data set arrive and be dropped; :func:`open_received` then raises it, and the
    C-STORE handler answers that one object Out of Resources while the association goes on.
    """

    error: OSError | None = None

    def write(self, data: bytes) -> int:
        if self.error is None:
            try:
                return super().write(data)
            except OSError as exc:  # kept without its frames: they view pynetdicom's PDU buffer
                self.error = exc.with_traceback(None)
                self._forget()  # still registered: open_received() finds it and raises the error
        return len(data)

    def open(self) -> BinaryIO:
        if self.error is not None:
            raise self.error
        return super().open()


def _factory(*_args: Any, **_kwargs: Any) -> _EncryptedTempFile:
    return _PynetdicomSpool(_DIR[0])


def new_spool() -> _EncryptedTempFile:
    """A spool for one received data set (pacs.fastpath): ``write``, then ``open`` and ``close``."""
    return _EncryptedTempFile(_DIR[0])


def enable(directory: Path | None = None) -> None:
    """Receive every C-STORE data set into an encrypted spool file in ``directory``."""
    if not hasattr(dimse_messages, "NamedTemporaryFile"):
        raise RuntimeError("pynetdicom's chunked receive changed: pacs.receive needs updating")
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    _DIR[0] = directory
    dimse_messages.NamedTemporaryFile = _factory  # type: ignore[attr-defined]
    _config.STORE_RECV_CHUNKED_DATASET = True


def is_enabled() -> bool:
    return dimse_messages.NamedTemporaryFile is _factory  # type: ignore[attr-defined]


def refusal(exc: OSError, actor: str) -> tuple[int, str]:
    """The C-STORE status and comment for a data set whose spool could not be written (both paths)."""
    if disk_full(exc):
        log.warning("a C-STORE from %s was refused: no space left to receive it", actor)
        return OUT_OF_RESOURCES, "no space left to receive this object"
    log.warning("a C-STORE from %s could not be spooled: %s", actor, exc.strerror or exc)
    return UNABLE_TO_PROCESS, "the object could not be received; see the server log"


def open_received(path: str | os.PathLike) -> BinaryIO:
    """The plaintext of a received spool file (preamble, file meta and data set).

    Raises FileNotFoundError for an unknown spool, or the OSError that stopped it being written."""
    with _LOCK:
        spool = _SPOOLS.get(str(path))
    if spool is None:
        raise FileNotFoundError("no encrypted spool for this C-STORE")
    return spool.open()
