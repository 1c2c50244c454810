"""The writable file-like interface shared by the streaming encryptors."""

from __future__ import annotations

from types import TracebackType
from typing import BinaryIO

from storage.export.errors import EncryptionStateError


class EncryptingWriter:
    """A write-only, non-seekable stream that encrypts into ``out`` as data arrives.

    Subclasses implement :meth:`_write` and :meth:`_finish`. Memory stays bounded by one chunk
    whatever the total size. :meth:`close` writes the trailer; ``out`` itself is not closed.
    Used as a context manager, an exception inside the block aborts the stream without a
    trailer, so a failed export never looks complete.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._closed = False
        self.bytes_in = 0

    # -- file-like surface (zipfile needs write and flush; tell is absent on purpose) --
    @property
    def closed(self) -> bool:
        return self._closed

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise EncryptionStateError("write to a closed encrypting writer")
        n = len(data)
        if n:
            self._write(data)
            self.bytes_in += n
        return n

    def flush(self) -> None:
        """Nothing to do: partial chunks must stay buffered until full (or until close)."""
        if hasattr(self._out, "flush"):
            self._out.flush()

    def close(self) -> None:
        """Encrypt what is buffered and write the trailer (idempotent)."""
        if self._closed:
            return
        self._finish()
        self._closed = True
        self.flush()

    def abort(self) -> None:
        """Stop without writing the trailer; the output stays truncated and will not decrypt."""
        self._closed = True

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- for subclasses --
    def _write(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError
