"""Streaming ``multipart/related`` (RFC 2387 / RFC 2046 5.1) for DICOMweb, PS3.18 8.6.1.2.

Pure module, no Flask.  :func:`encode` turns parts whose bodies are bytes,
iterators of chunks or readable files into an iterator of chunks, so a whole
study is never held in memory.  :func:`decode` reads a request body from a
file object or chunk iterator and yields each part with its body in memory (an ``io.BytesIO``) up
to a threshold, past it spooled to a ``storage.spool.EncryptedSpool`` (encrypted disk), enforcing
per-part and total size limits.

Why hand-written: werkzeug's ``sansio.multipart.MultipartDecoder`` is for
``multipart/form-data`` (it requires ``Content-Disposition`` on every part and
raises otherwise) and accepts bare CR as a line break, which is unsafe for
binary DICOM bodies.  Tolerated here: preamble and epilogue, transport padding
(LWS after a boundary), a bare LF instead of CRLF around delimiters and
headers, folded header lines, a boundary quoted or not, a final close
delimiter without CRLF (as dicomweb-client writes it).
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from dicomweb.mediatypes import UnsupportedMediaType, parse_content_type
from storage.spool import EncryptedSpool

__all__ = ["MultipartError", "Part", "PayloadTooLarge", "decode", "encode", "new_boundary"]

Body = bytes | bytearray | memoryview | Iterable[bytes] | BinaryIO

_READ_SIZE = 1 << 20
_BOUNDARY_RE = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_MAX_HEADER_BLOCK = 64 * 1024


class MultipartError(ValueError):
    """The multipart body or its Content-Type is malformed (HTTP 400)."""


class PayloadTooLarge(MultipartError):
    """A part or the whole body is over the configured limit (HTTP 413)."""


@dataclass
class Part:
    """One body part (RFC 2046 5.1.1).

    ``headers`` maps header names to values; decoded parts have lower-case
    names.  For decoded parts ``body`` is a seekable binary file at offset 0.
    """

    body: Body
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, body: Body, content_type: str, content_location: str | None = None) -> Part:
        """Build a part with Content-Type (with any transfer-syntax) and Content-Location."""
        headers = {"Content-Type": content_type}
        if content_location:
            headers["Content-Location"] = content_location
        return cls(body, headers)

    def header(self, name: str, default: str | None = None) -> str | None:
        """Case-insensitive header lookup."""
        lname = name.lower()
        for k, v in self.headers.items():
            if k.lower() == lname:
                return v
        return default

    @property
    def content_type(self) -> str | None:
        return self.header("content-type")

    @property
    def content_location(self) -> str | None:
        return self.header("content-location")

    @property
    def media_type(self) -> str | None:
        """Lower-case media type of the part, without parameters."""
        ct = self.content_type
        if not ct:
            return None
        try:
            return parse_content_type(ct)[0]
        except UnsupportedMediaType as exc:
            raise MultipartError(f"part has a malformed Content-Type: {ct!r}") from exc

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter of the part's Content-Type (PS3.18 8.7.3.5)."""
        ct = self.content_type
        if not ct:
            return None
        try:
            return parse_content_type(ct)[1].get("transfer-syntax")
        except UnsupportedMediaType as exc:
            raise MultipartError(f"part has a malformed Content-Type: {ct!r}") from exc

    def read(self) -> bytes:
        """The whole body as bytes (for small parts; large ones should be streamed)."""
        b = self.body
        if isinstance(b, bytes | bytearray | memoryview):
            return bytes(b)
        if hasattr(b, "read"):
            f = cast(BinaryIO, b)  # a file object (BinaryIO is a class, not a runtime protocol)
            f.seek(0)
            return f.read()
        return b"".join(b)

    def close(self) -> None:
        """Release a spooled body (deletes its temporary file if any)."""
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def new_boundary() -> str:
    """A random boundary (122 bits) that will not occur in any body by chance."""
    return uuid.uuid4().hex


# ---------------------------------------------------------------- encode


def _body_chunks(body: Body) -> Iterator[bytes]:
    if isinstance(body, bytes | bytearray | memoryview):
        if len(body):
            yield bytes(body) if isinstance(body, bytearray) else body  # type: ignore[misc]  # a memoryview goes out as is (a bytes-like, no copy)
        return
    read = getattr(body, "read", None)
    if read is not None:
        while chunk := read(_READ_SIZE):
            yield chunk
        return
    for chunk in body:
        if chunk:
            yield chunk


def encode(
    parts: Iterable[Part],
    boundary: str | None = None,
    *,
    media_type: str | None = None,
) -> tuple[str, Iterator[bytes]]:
    """Encode parts as ``multipart/related`` (PS3.18 8.6.1.2, RFC 2387).

    Returns the response Content-Type (``multipart/related; type="...";
    boundary=...``) and an iterator of chunks.  ``media_type`` is the ``type``
    parameter; if None, it is taken from the first part (which is then peeked).
    Parts and their bodies are consumed lazily, one chunk at a time.
    """
    boundary = boundary or new_boundary()
    if not _BOUNDARY_RE.match(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r} (RFC 2046 5.1.1)")
    it = iter(parts)
    first: Part | None = None
    if media_type is None:
        first = next(it, None)
        media_type = "application/octet-stream"
        if first is not None and first.media_type:
            media_type = first.media_type
    content_type = f'multipart/related; type="{media_type}"; boundary={boundary}'

    def generate() -> Iterator[bytes]:
        dash = f"--{boundary}".encode("ascii")
        pending = [first] if first is not None else []
        for part in _chain(pending, it):
            head = [dash]
            for name, value in part.headers.items():
                if "\r" in value or "\n" in value:
                    raise ValueError(f"line break in header {name!r}")
                head.append(f"{name}: {value}".encode("latin-1"))
            yield b"\r\n".join(head) + b"\r\n\r\n"
            yield from _body_chunks(part.body)
            yield b"\r\n"
        yield dash + b"--\r\n"

    return content_type, generate()


def _chain(first: list[Part], rest: Iterator[Part]) -> Iterator[Part]:
    yield from first
    yield from rest


# ---------------------------------------------------------------- decode


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a ``multipart/related`` Content-Type, checked."""
    try:
        media_type, params = parse_content_type(content_type)
    except UnsupportedMediaType as exc:
        raise MultipartError(str(exc)) from None
    if media_type != "multipart/related":
        raise UnsupportedMediaType(f"expected multipart/related, got {media_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise MultipartError("multipart/related Content-Type has no boundary parameter")
    if not _BOUNDARY_RE.match(boundary):
        raise MultipartError(f"invalid multipart boundary {boundary!r} (RFC 2046 5.1.1)")
    return boundary


class _Source:
    """A byte buffer refilled from a file object or chunk iterator, counting the total."""

    def __init__(self, stream: BinaryIO | Iterable[bytes], max_total: int) -> None:
        read = getattr(stream, "read", None)
        if read is not None:
            self._chunks: Iterator[bytes] = iter(lambda: read(_READ_SIZE // 4), b"")
        else:
            self._chunks = iter(stream)
        self.buf = bytearray()
        self.eof = False
        self.total = 0
        self.max_total = max_total

    def fill(self) -> bool:
        """Append the next chunk; False at end of input."""
        while not self.eof:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.eof = True
                break
            if chunk:
                self.total += len(chunk)
                if self.total > self.max_total:
                    raise PayloadTooLarge(f"request body over the limit of {self.max_total} bytes")
                self.buf += chunk
                return True
        return False


_NOT_DELIM, _NEED_MORE = -1, -2


def _after_delimiter(buf: bytearray, pos: int, eof: bool) -> tuple[int, bool]:
    """Classify what follows ``--boundary`` at ``pos``.

    Returns (index after the line break, is_close); or (_NEED_MORE, False) when
    the buffer ends first; or (_NOT_DELIM, False) when another character follows
    (the bytes were data, not a delimiter).
    """
    n = len(buf)
    if n - pos < 2 and not eof:
        return _NEED_MORE, False
    if buf[pos : pos + 2] == b"--":
        return pos + 2, True
    i = pos
    while i < n and buf[i] in (0x20, 0x09):
        i += 1
    if i == n:
        return (_NEED_MORE, False) if not eof else (_NOT_DELIM, False)
    if buf[i] == 0x0A:
        return i + 1, False
    if buf[i] == 0x0D:
        if i + 1 == n:
            return (_NEED_MORE, False) if not eof else (_NOT_DELIM, False)
        if buf[i + 1] == 0x0A:
            return i + 2, False
    return _NOT_DELIM, False


_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


class _PartBody:
    """Where a part's bytes go while it is decoded: memory up to ``spool_size``, then an
    :class:`~storage.spool.EncryptedSpool` (plaintext never on disk). A part that arrives whole in
    one buffer is copied once, into the ``bytes`` its :class:`io.BytesIO` serves."""

    def __init__(self, spool_size: int) -> None:
        self._limit = spool_size
        self._pieces: list[bytes] = []
        self._size = 0
        self._spool: EncryptedSpool | None = None

    def write(self, data: memoryview) -> None:
        if self._spool is None and self._size + len(data) <= self._limit:
            self._pieces.append(bytes(data))
            self._size += len(data)
            return
        if self._spool is None:
            self._spool = EncryptedSpool(max_size=self._limit)
            for piece in self._pieces:
                self._spool.write(piece)
            self._pieces = []
        self._spool.write(data)

    def file(self) -> BinaryIO:
        """The body as a seekable binary file at offset 0."""
        if self._spool is not None:
            self._spool.seek(0)
            return self._spool.as_file()
        data = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces = []
        return io.BytesIO(data)

    def close(self) -> None:
        self._pieces = []
        if self._spool is not None:
            self._spool.close()


def _parse_headers(block: bytes) -> dict[str, str]:
    """RFC 5322 style header lines, unfolding continuation lines (LWS)."""
    headers: dict[str, str] = {}
    last: str | None = None
    for raw in re.split(rb"\r?\n", block):
        if not raw:
            continue
        line = raw.decode("latin-1")
        if line[0] in " \t":
            if last is None:
                raise MultipartError("part header block starts with a continuation line")
            headers[last] = f"{headers[last]} {line.strip()}".strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or " " in name:
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name] = value.strip()
        last = name
    return headers


def decode(
    stream: BinaryIO | Iterable[bytes],
    content_type: str,
    *,
    max_part_size: int,
    max_total: int,
    spool_size: int = 1 << 20,
) -> Iterator[Part]:
    """Decode a ``multipart/related`` body part by part (RFC 2046 5.1.1, PS3.18 8.6.1.2).

    Each yielded :class:`Part` has lower-case ``headers`` (a missing
    Content-Type is filled from the multipart ``type`` parameter, RFC 2387 3.1)
    and a seekable body: an ``io.BytesIO`` up to ``spool_size`` bytes, past that an
    :class:`~storage.spool.EncryptedSpool` (encrypted on disk, bounded memory).
    Raises :class:`MultipartError` when malformed or truncated,
    :class:`PayloadTooLarge` over ``max_part_size`` / ``max_total``, and
    :class:`~dicomweb.mediatypes.UnsupportedMediaType` if not multipart/related.
    """
    boundary = boundary_of(content_type).encode("latin-1")
    default_type = parse_content_type(content_type)[1].get("type")
    src = _Source(stream, max_total)
    buf = src.buf
    dash = b"--" + boundary
    needle = b"\n" + dash

    # Preamble: first "--boundary" at the very start or after a line break.
    start = 0
    discarded = False
    while True:
        i = buf.find(dash, start)
        if i >= 0 and ((i == 0 and not discarded) or (i > 0 and buf[i - 1] == 0x0A)):
            after, close = _after_delimiter(buf, i + len(dash), src.eof)
            if after == _NEED_MORE:
                src.fill()
                continue
            if after != _NOT_DELIM:
                del buf[:after]
                break
        if i >= 0:
            start = i + 1
            continue
        keep = len(dash) + 1
        if len(buf) > keep:
            del buf[: len(buf) - keep]
            discarded = True
        start = 0
        if not src.fill():
            raise MultipartError("no multipart boundary found in the body")
    if close:
        return

    while True:
        # Header block up to a blank line (or none: body starts at once).
        while True:
            if buf[:2] == b"\r\n" or buf[:1] == b"\n":
                hdr_end, body_start = 0, (2 if buf[:1] == b"\r" else 1)
                break
            m = _BLANK_LINE.search(buf)
            if m is not None:
                hdr_end, body_start = m.start(), m.end()
                break
            if len(buf) > _MAX_HEADER_BLOCK:
                raise MultipartError("part header block too long")
            if len(buf) < 2 and not src.eof:
                src.fill()
                continue
            if not src.fill():
                raise MultipartError("body ends inside a part's headers")
        headers = _parse_headers(bytes(buf[:hdr_end]))
        if "content-type" not in headers and default_type:
            headers["content-type"] = default_type
        del buf[:body_start]

        body = _PartBody(spool_size)
        size = 0
        search = 0
        try:
            while True:
                i = buf.find(needle, search)
                if i >= 0:
                    after, close = _after_delimiter(buf, i + len(needle), src.eof)
                    if after == _NEED_MORE:
                        if not src.fill():
                            raise MultipartError("body ends inside a boundary")
                        continue
                    if after == _NOT_DELIM:
                        search = i + 1
                        continue
                    end = i - 1 if i > 0 and buf[i - 1] == 0x0D else i
                    size += end
                    if size > max_part_size:
                        raise PayloadTooLarge(f"a part is over the limit of {max_part_size} bytes")
                    body.write(memoryview(buf)[:end])
                    del buf[:after]  # CPython drops a bytearray's head without moving the rest
                    break
                # Keep a tail that may hold the start of "\r\n--boundary".
                flush = len(buf) - len(needle) - 1
                if flush > 0:
                    size += flush
                    if size > max_part_size:
                        raise PayloadTooLarge(f"a part is over the limit of {max_part_size} bytes")
                    body.write(memoryview(buf)[:flush])
                    del buf[:flush]
                search = 0
                if not src.fill():
                    raise MultipartError("body ends before the closing boundary")
        except BaseException:
            body.close()
            raise
        yield Part(body.file(), headers)
        if close:
            return


def decode_bytes(body: bytes, content_type: str, *, max_part_size: int | None = None) -> list[Part]:
    """Convenience for tests and small bodies: decode all parts of ``body``."""
    limit = max_part_size if max_part_size is not None else len(body)
    return list(decode(io.BytesIO(body), content_type, max_part_size=limit, max_total=len(body)))
