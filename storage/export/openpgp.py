"""Streaming OpenPGP symmetric encryption (RFC 4880; v4 packets also valid under RFC 9580).

Output: a Symmetric-Key Encrypted Session Key packet (tag 3, RFC 4880 5.3) with AES-256 and an
iterated+salted SHA-256 S2K (3.7.1.3), followed by a Symmetrically Encrypted Integrity Protected
Data packet (tag 18, 5.13; version 1 with Modification Detection Code) that holds one Literal
Data packet (tag 11, 5.9). Packet bodies of unknown length use partial body lengths (4.2.2.4).
``gpg --batch --passphrase P --decrypt`` opens it.

Hand-written on top of the ``cryptography`` primitives because neither ``pysequoia`` (0.1.x:
``encrypt(bytes, passwords=...)``) nor ``python-gnupg`` (a subprocess) encrypts an unbounded
stream in-process: pysequoia takes and returns whole ``bytes``. The format is small and the
real ``gpg`` binary checks our output in the tests.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable
from typing import BinaryIO

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from storage.export.encryptor import EncryptingWriter
from storage.export.errors import ExportError

SYM_AES256 = 9  # RFC 4880 9.2
HASH_SHA256 = 8  # RFC 4880 9.4
S2K_ITERATED_SALTED = 3  # RFC 4880 3.7.1.3
TAG_SKESK, TAG_SEIPD, TAG_LITERAL, TAG_MDC = 3, 18, 11, 19
DEFAULT_S2K_COUNT_BYTE = 0xFF  # 65,011,712 bytes hashed, gpg's usual order of magnitude
_CHUNK_POW = 20  # partial body chunks of 1 MiB (must be a power of two, >= 512 for the first)


def s2k_count(coded: int) -> int:
    """Decode the one-octet S2K iteration count (RFC 4880 3.7.1.3)."""
    return (16 + (coded & 15)) << ((coded >> 4) + 6)


def s2k_iterated_sha256(passphrase: bytes, salt: bytes, coded_count: int, key_len: int = 32) -> bytes:
    """Iterated and salted S2K with SHA-256: hash salt||passphrase repeated to ``count`` octets."""
    if key_len > 32:
        raise ExportError("SHA-256 S2K gives at most 32 key octets")
    data = salt + passphrase
    count = max(s2k_count(coded_count), len(data))
    h = hashlib.sha256()
    block = data * max(1, (1 << 16) // len(data))
    full, rest = divmod(count, len(block))
    for _ in range(full):
        h.update(block)
    h.update(block[:rest])
    return h.digest()[:key_len]


def new_length(n: int) -> bytes:
    """Encode a new-format packet body length (RFC 4880 4.2.2.1-4.2.2.3)."""
    if n < 192:
        return bytes([n])
    if n < 8384:
        n -= 192
        return bytes([(n >> 8) + 192, n & 0xFF])
    return b"\xff" + struct.pack(">I", n)


class _PartialBodyFramer:
    """Frame a packet body of unknown length with partial body lengths (RFC 4880 4.2.2.4)."""

    def __init__(self, tag: int, sink: Callable[[bytes], object], chunk_pow: int = _CHUNK_POW) -> None:
        self._sink = sink
        self._size = 1 << chunk_pow
        self._prefix = bytes([224 + chunk_pow])
        self._buf = bytearray()
        sink(bytes([0xC0 | tag]))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= self._size:
            view = memoryview(self._buf)
            pos = 0
            while len(self._buf) - pos >= self._size:
                self._sink(self._prefix + view[pos : pos + self._size])
                pos += self._size
            view.release()
            del self._buf[:pos]

    def close(self) -> None:
        self._sink(new_length(len(self._buf)) + bytes(self._buf))
        self._buf = bytearray()


class OpenPGPSymmetricWriter(EncryptingWriter):
    """Encrypt a stream with a passphrase as OpenPGP (AES-256, S2K SHA-256, SEIPD v1 + MDC).

    ``filename`` is stored in the Literal Data packet (``gpg --use-embedded-filename`` uses it).
    """

    def __init__(
        self,
        out: BinaryIO,
        passphrase: str,
        *,
        filename: str = "export.zip",
        s2k_count_byte: int = DEFAULT_S2K_COUNT_BYTE,
    ) -> None:
        super().__init__(out)
        if not passphrase:
            raise ExportError("passphrase must not be empty")
        if not 0 <= s2k_count_byte <= 255:
            raise ExportError("s2k_count_byte must be one octet")
        salt = os.urandom(8)
        key = s2k_iterated_sha256(passphrase.encode("utf-8"), salt, s2k_count_byte)
        # Tag 3 SKESK v4, no encrypted session key: the S2K output is the session key (5.3).
        skesk = bytes([4, SYM_AES256, S2K_ITERATED_SALTED, HASH_SHA256]) + salt + bytes([s2k_count_byte])
        out.write(bytes([0xC0 | TAG_SKESK]) + new_length(len(skesk)) + skesk)

        self._seipd = _PartialBodyFramer(TAG_SEIPD, out.write)
        self._seipd.write(b"\x01")  # SEIPD version 1
        # SEIPD uses plain CFB with a zero IV; the random prefix plays the IV's part (5.13).
        self._enc = Cipher(algorithms.AES(key), CFB(b"\x00" * 16)).encryptor()
        self._mdc = hashlib.sha1()  # SHA-1 is what the MDC packet is defined with
        prefix = os.urandom(16)
        self._encrypt(prefix + prefix[-2:])

        name = filename.encode("utf-8")[:255]
        self._literal = _PartialBodyFramer(TAG_LITERAL, self._encrypt)
        self._literal.write(b"b" + bytes([len(name)]) + name + struct.pack(">I", int(time.time())))

    def _encrypt(self, plain: bytes | bytearray | memoryview) -> None:
        self._mdc.update(plain)
        self._seipd.write(self._enc.update(plain))

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._literal.write(data)

    def _finish(self) -> None:
        self._literal.close()
        mdc_header = bytes([0xC0 | TAG_MDC, 20])  # Modification Detection Code packet (5.14)
        self._mdc.update(mdc_header)
        tail = mdc_header + self._mdc.digest()
        self._seipd.write(self._enc.update(tail) + self._enc.finalize())
        self._seipd.close()
