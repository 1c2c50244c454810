"""Encryption of stored objects: AES-256-GCM in segments, bound to the object id.

Format of a blob (all integers big-endian)::

    magic "PACSENC1" | segment_size u32 | salt 16 bytes | nonce_prefix 7 bytes      (35-byte header)
    segment 0 ciphertext+tag | segment 1 ... | last segment (possibly short) ciphertext+tag

* object key = HKDF(DEK, salt, "pacs/object/v1|" + object_id): a fresh key per object, so nonces can
  never repeat across objects; a blob copied onto another object's id derives another key and fails.
* nonce = nonce_prefix (7) | segment counter (4) | last-segment flag (1): truncation, reordering and
  appending are all detected (the STREAM construction of Hoang, Reyhanitabar, Rogaway, Vizár).
* associated data = the header, so the segment size and salt cannot be altered.

Segments make large objects stream in bounded memory and let a frame be read without decrypting the
whole file. ``PACSRAW1`` marks a blob written with encryption off (benchmarks only).
The framing is hand-written because no maintained library offers seekable segmented AEAD files;
the primitives are the ``cryptography`` package's.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import KeyUnavailable
from .keys import hkdf

MAGIC = b"PACSENC1"
RAW_MAGIC = b"PACSRAW1"
SEGMENT_SIZE = 1 << 20
TAG = 16
_HEADER = struct.Struct(">8sI16s7s")
HEADER_SIZE = _HEADER.size


class DecryptionFailed(KeyUnavailable):
    """A segment did not authenticate: wrong key, wrong object id, or tampered ciphertext."""


def _object_key(dek: bytes, salt: bytes, object_id: str) -> AESGCM:
    return AESGCM(hkdf(dek, b"pacs/object/v1|" + object_id.encode(), salt=salt))


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


class EncryptingWriter(io.RawIOBase):
    """A write-only stream that encrypts into ``sink``. ``close()`` writes the last segment.

    ``sink.write`` gets a view of a reused buffer: it must copy what it keeps (files and BytesIO do).
    """

    def __init__(self, sink: BinaryIO, dek: bytes | None, object_id: str,
                 segment_size: int = SEGMENT_SIZE):
        super().__init__()
        self._sink = sink
        self._seg = segment_size
        self._buf = bytearray()
        self._counter = 0
        self.plain_size = 0
        if dek is None:
            self._aead = None
            sink.write(RAW_MAGIC)
            return
        salt, prefix = os.urandom(16), os.urandom(7)
        self._header = _HEADER.pack(MAGIC, segment_size, salt, prefix)
        self._prefix = prefix
        self._aead = _object_key(dek, salt, object_id)
        sink.write(self._header)

    def writable(self) -> bool:
        return True

    # Narrower than RawIOBase.write's buffer: every caller passes bytes, bytearray or memoryview.
    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Encrypt whole segments straight from ``data`` (no copy); keep the rest for the next write.

        At least one byte is always held back: only ``close`` knows which segment is the last.
        """
        n = len(data)
        self.plain_size += n
        if self._aead is None:
            self._sink.write(data)
            return n
        view = memoryview(data).cast("B")
        if self._buf:  # top up the held-back segment first
            fill = min(len(view), self._seg - len(self._buf))
            self._buf += view[:fill]
            view = view[fill:]
            if not view:
                return n
            self._emit(self._buf, last=False)  # more follows: it was not the last
            self._buf = bytearray()
        while len(view) > self._seg:
            self._emit(view[: self._seg], last=False)
            view = view[self._seg :]
        self._buf += view
        return n

    def write_last(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` as the end of the stream and close: nothing is copied or held back."""
        if self._aead is None or self._buf:
            n = self.write(data)
            self.close()
            return n
        view = memoryview(data).cast("B")
        self.plain_size += len(view)
        while len(view) > self._seg:
            self._emit(view[: self._seg], last=False)
            view = view[self._seg :]
        self._emit(view, last=True)
        super().close()
        return len(data)

    def _emit(self, plain: bytes | bytearray | memoryview, last: bool) -> None:
        """Encrypt one segment into a per-thread buffer (no fresh allocation per segment) and write it."""
        nonce = _nonce(self._prefix, self._counter, last)
        out = _out_buffer(len(plain) + TAG)
        assert self._aead is not None  # only encrypted streams emit segments
        self._aead.encrypt_into(nonce, plain, self._header, out)
        self._sink.write(out)
        self._counter += 1

    def close(self) -> None:
        if not self.closed and self._aead is not None:
            self._emit(self._buf, last=True)
            self._buf = bytearray()
        super().close()


_OUT = threading.local()


def _out_buffer(size: int) -> memoryview:
    """A reusable output buffer of ``size`` bytes for this thread.

    A 0.5 MB ciphertext in a fresh ``bytes`` each time is a fresh mmap: page faults and zeroing per
    CT slice, about as much as the AES itself. The sink copies what it keeps (a file's page cache,
    an in-memory blob), so one buffer per thread can be reused.
    """
    buf = getattr(_OUT, "buf", None)
    if buf is None or len(buf) < size:
        buf = _OUT.buf = bytearray(max(size, 1 << 16))
    return memoryview(buf)[:size]


class DecryptingReader(io.RawIOBase):
    """A seekable read-only plaintext view of an encrypted blob; decrypts one segment at a time."""

    def __init__(self, source: BinaryIO, dek: bytes | None, object_id: str, blob_size: int | None = None):
        super().__init__()
        self._src = source
        self.name = f"blob {object_id}"  # pydicom records a file-like's name as its filename
        if blob_size is None:
            blob_size = source.seek(0, io.SEEK_END)
        source.seek(0)
        head = source.read(HEADER_SIZE)
        self._pos = 0
        self._cache: tuple[int, bytes] = (-1, b"")
        if head[:8] == RAW_MAGIC:
            self._aead = None
            self.size = blob_size - len(RAW_MAGIC)
            return
        if len(head) < HEADER_SIZE or head[:8] != MAGIC:
            raise DecryptionFailed("blob has no valid header")
        if dek is None:
            raise DecryptionFailed("blob is encrypted but no key was given")
        _, self._seg, salt, self._prefix = _HEADER.unpack(head)
        self._header = head
        self._aead = _object_key(dek, salt, object_id)
        body = blob_size - HEADER_SIZE
        self._nseg = max(1, -(-body // (self._seg + TAG)))
        self.size = body - self._nseg * TAG
        if self.size < 0:
            raise DecryptionFailed("blob is truncated")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _segment(self, index: int) -> bytes:
        if self._cache[0] == index:
            return self._cache[1]
        self._src.seek(HEADER_SIZE + index * (self._seg + TAG))
        last = index == self._nseg - 1
        ct = self._src.read(self._seg + TAG)
        assert self._aead is not None  # raw blobs are read without segments
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, index, last), ct, self._header)
        except InvalidTag:
            raise DecryptionFailed(f"segment {index} failed authentication") from None
        self._cache = (index, plain)
        return plain

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if self._pos >= end:
            return b""
        if self._aead is None:
            self._src.seek(len(RAW_MAGIC) + self._pos)
            out = self._src.read(end - self._pos)
            self._pos += len(out)
            return out
        parts = []
        while self._pos < end:
            index, within = divmod(self._pos, self._seg)
            seg = self._segment(index)
            chunk = seg[within: within + (end - self._pos)]
            if not chunk:
                raise DecryptionFailed("blob is truncated")
            parts.append(chunk)
            self._pos += len(chunk)
        return b"".join(parts)

    # Narrower than RawIOBase.readinto's buffer: what BufferedReader and callers pass.
    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def verify(self) -> None:
        """Authenticate every segment (used after writes and by ``pacs verify``)."""
        if self._aead is not None:
            for i in range(self._nseg):
                self._segment(i)

    def close(self) -> None:
        if not self.closed:
            self._src.close()
        super().close()


def seal_small(key: bytes, plain: bytes, aad: bytes) -> bytes:
    """Encrypt a small value (index fields): nonce (12) + ciphertext + tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plain, aad)


def open_small(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except InvalidTag:
        raise DecryptionFailed("index value failed authentication") from None
