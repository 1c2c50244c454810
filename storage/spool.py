"""A temporary spool that never puts plaintext on disk.

Received objects (a STOW-RS part, an upload, a large C-STORE) must be held somewhere between the
socket and the archive. ``tempfile.SpooledTemporaryFile`` would write them to /tmp in clear once they
outgrow memory, which breaks "nothing that identifies a patient is readable on disk". This spool
keeps up to ``max_size`` bytes in memory and past that writes to an unlinked temporary file,
encrypted (storage.crypto segments) under a random key that exists only in this process's memory.

Use it like SpooledTemporaryFile: ``write()`` everything, then ``seek(0)`` and ``read()`` (or
:meth:`EncryptedSpool.open` for the content as a plain stream). The one spool of the code base: STOW-RS
parts (dicomweb.multipart) and received C-STOREs (pacs.dimse.receive, pacs.dimse.fastpath) use it.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import BinaryIO, cast

from .crypto import DecryptingReader, EncryptingWriter

_ID = "spool"


class EncryptedSpool(io.RawIOBase):
    def __init__(self, max_size: int = 1 << 20, dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self._max = max_size
        self._dir = dir
        self._mem: io.BytesIO | None = io.BytesIO()
        self._file: BinaryIO | None = None
        self._writer: EncryptingWriter | None = None
        self._key = b""
        self._reader: BinaryIO | None = None

    def as_file(self) -> BinaryIO:
        """This spool, typed as the binary file it is (typing's BinaryIO is a class of its own,
        which an io.RawIOBase does not derive from)."""
        return cast(BinaryIO, self)

    @property
    def rolled(self) -> bool:
        """True once the content went to (encrypted) disk."""
        return self._file is not None

    def writable(self) -> bool:
        return self._reader is None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    # Narrower than RawIOBase.write's buffer: every caller passes bytes, bytearray or memoryview.
    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._reader is not None:
            raise io.UnsupportedOperation("spool is being read; writes are over")
        if self._writer is not None:
            return self._writer.write(data)
        assert self._mem is not None
        n = self._mem.write(data)
        if self._mem.tell() > self._max:
            self._roll()
        return n

    def _roll(self) -> None:
        assert self._mem is not None
        self._key = os.urandom(32)
        self._file = tempfile.TemporaryFile(dir=self._dir)  # noqa: SIM115 - unlinked, closed by us
        self._writer = EncryptingWriter(self._file, self._key, _ID)
        self._writer.write(self._mem.getbuffer())
        self._mem = None

    def _start_reading(self) -> BinaryIO:
        if self._reader is None:
            if self._writer is not None:
                assert self._file is not None
                self._writer.close()
                self._file.flush()
                size = self._file.tell()
                self._reader = io.BufferedReader(
                    DecryptingReader(self._file, self._key, _ID, blob_size=size), 1 << 20)
            else:
                assert self._mem is not None
                self._mem.seek(0)
                self._reader = self._mem
        return self._reader

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._start_reading().seek(offset, whence)

    def tell(self) -> int:
        if self._reader is not None:
            return self._reader.tell()
        if self._writer is not None:
            return self._writer.plain_size
        assert self._mem is not None  # in memory until rolled to disk
        return self._mem.tell()

    def read(self, size: int = -1) -> bytes:
        return self._start_reading().read(size)

    # Narrower than RawIOBase.readinto's buffer: what BufferedReader and callers pass.
    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def open(self) -> BinaryIO:
        """The content from its start as a readable stream (writes are over): for content still in
        memory the ``BytesIO`` itself (no Python frame per read), else the decrypting reader. Closing
        it closes the spool."""
        reader = self._start_reading()
        reader.seek(0)
        return reader

    def discard(self) -> None:
        """Close and drop the content, even when the disk under it is failing (a full disk)."""
        with contextlib.suppress(OSError):
            self.close()
        self._mem = None

    def close(self) -> None:
        try:
            if not self.closed:
                self._key = b""
                if self._reader is not None:
                    self._reader.close()
                if self._file is not None:
                    self._file.close()  # closes the descriptor even when the last flush fails
        finally:
            super().close()
