"""Streaming age v1 encryption with a passphrase (scrypt recipient stanza).

Implements the age format (https://age-encryption.org/v1, C2SP age spec): header line,
one ``scrypt`` stanza wrapping a 16-byte file key with ChaCha20-Poly1305 under
scrypt(passphrase, "age-encryption.org/v1/scrypt" || salt, N=2^work_factor, r=8, p=1),
the header MAC (HMAC-SHA256 keyed by HKDF(file key, "header")), then the payload: a 16-byte
nonce and STREAM of 64 KiB ChaCha20-Poly1305 chunks keyed by HKDF(file key, nonce, "payload").
``age -d`` opens it.

Hand-written because ``pyrage`` 1.x encrypts with a passphrase only from whole ``bytes``
(``pyrage.passphrase.encrypt(bytes, str)``); ``encrypt_io`` takes recipients, not a passphrase.
The primitives come from ``cryptography``; the real ``age`` binary checks the output in tests.

Memory: scrypt at the default work factor 18 (age's own default) needs 256 MiB for the key
derivation, once, before any data flows; the stream itself holds one 64 KiB chunk.
"""

from __future__ import annotations

import base64
import hmac
import os
from hashlib import sha256
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from storage.export.encryptor import EncryptingWriter
from storage.export.errors import ExportError

CHUNK_SIZE = 64 * 1024
DEFAULT_WORK_FACTOR = 18  # log2(N); age >= 1.0 decrypts up to 22 without complaint
_INTRO = b"age-encryption.org/v1"


def _b64(data: bytes) -> bytes:
    """age's base64: standard alphabet, no padding."""
    return base64.b64encode(data).rstrip(b"=")


def _hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _stanza_body_lines(body: bytes) -> bytes:
    """Wrap a stanza body at 64 columns; the last line is always shorter than 64."""
    enc = _b64(body)
    lines = [enc[i : i + 64] for i in range(0, len(enc), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")
    return b"".join(line + b"\n" for line in lines)


class AgeScryptWriter(EncryptingWriter):
    """Encrypt a stream for a passphrase in age v1 format."""

    def __init__(self, out: BinaryIO, passphrase: str, *, work_factor: int = DEFAULT_WORK_FACTOR) -> None:
        super().__init__(out)
        if not passphrase:
            raise ExportError("passphrase must not be empty")
        if not 10 <= work_factor <= 22:
            raise ExportError("age scrypt work factor must be between 10 and 22")
        file_key = os.urandom(16)
        salt = os.urandom(16)
        wrap_key = Scrypt(
            salt=b"age-encryption.org/v1/scrypt" + salt, length=32, n=1 << work_factor, r=8, p=1
        ).derive(passphrase.encode("utf-8"))
        wrapped = ChaCha20Poly1305(wrap_key).encrypt(b"\x00" * 12, file_key, None)
        header = (
            _INTRO + b"\n"
            + b"-> scrypt " + _b64(salt) + b" " + str(work_factor).encode() + b"\n"
            + _stanza_body_lines(wrapped)
            + b"---"
        )
        mac = hmac.new(_hkdf(file_key, None, b"header"), header, sha256).digest()
        nonce = os.urandom(16)
        out.write(header + b" " + _b64(mac) + b"\n" + nonce)

        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._buf = bytearray()

    def _seal(self, chunk: bytes | bytearray | memoryview, last: bool) -> None:
        if self._counter >= 1 << 88:
            raise ExportError("age STREAM counter overflow")
        nonce = self._counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self._out.write(self._aead.encrypt(nonce, bytes(chunk), None))
        self._counter += 1

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data
        # Keep at least one byte back: only close() knows which chunk is the last one.
        if len(self._buf) > CHUNK_SIZE:
            view = memoryview(self._buf)
            pos = 0
            while len(self._buf) - pos > CHUNK_SIZE:
                self._seal(view[pos : pos + CHUNK_SIZE], last=False)
                pos += CHUNK_SIZE
            view.release()
            del self._buf[:pos]

    def _finish(self) -> None:
        self._seal(self._buf, last=True)
        self._buf = bytearray()
