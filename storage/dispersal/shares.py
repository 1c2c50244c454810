"""The share format and the erasure code: headers, per-stripe CRCs, footers, encode and decode.

See :mod:`storage.dispersal` for the format; zfec does the Reed–Solomon coding.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zfec

log = logging.getLogger(__name__)

MAGIC, END = b"PACSSHR1", b"PACSSEND"
VERSION = 1
BLOCK = 64 << 10
BATCH_STRIPES = 8  # stripes encoded and sent per location at once (0.75 MB at 3-of-5)
READ_AHEAD = (1 << 20) + (64 << 10)  # a read at 0 (the encryption header) brings the first segment
_HEAD = struct.Struct(">8sBBBBI")
HEADER_SIZE = _HEAD.size + 4
_FOOT = struct.Struct(">QII")
FOOTER_SIZE = _FOOT.size + 4 + len(END)
CRC = 4


class CorruptShare(Exception):
    """A share's header, block or footer does not match its checksum."""


def _crc(share: int, stripe: int, data: Any) -> int:
    return zlib.crc32(data, zlib.crc32(struct.pack(">BI", share, stripe)))


def share_header(k: int, n: int, share: int, block: int) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, k, n, share, block)
    return head + struct.pack(">I", zlib.crc32(head))


@dataclass(frozen=True)
class Geometry:
    """What a share's header says."""

    k: int
    n: int
    share: int
    block: int


def parse_header(data: bytes) -> Geometry:
    if len(data) < HEADER_SIZE:
        raise CorruptShare("share is shorter than its header")
    head, (crc,) = data[:_HEAD.size], struct.unpack(">I", data[_HEAD.size:HEADER_SIZE])
    magic, version, k, n, share, block = _HEAD.unpack(head)
    if magic != MAGIC or version != VERSION or zlib.crc32(head) != crc or not 1 <= k <= n or block < 1:
        raise CorruptShare("share header is not valid")
    return Geometry(k, n, share, block)


def _footer(length: int, stripes: int, digest: int) -> bytes:
    body = _FOOT.pack(length, stripes, digest)
    return body + struct.pack(">I", zlib.crc32(body)) + END


def parse_footer(data: bytes) -> tuple[int, int, int]:
    """(object length, stripes, digest) from the last FOOTER_SIZE bytes of a share."""
    if len(data) != FOOTER_SIZE or data[-len(END):] != END:
        raise CorruptShare("share footer is missing")
    body, (crc,) = data[:_FOOT.size], struct.unpack(">I", data[_FOOT.size:_FOOT.size + 4])
    if zlib.crc32(body) != crc:
        raise CorruptShare("share footer is not valid")
    return _FOOT.unpack(body)


def stripe_layout(share_size: int, block: int) -> tuple[int, int]:
    """(stripes, length of the last stripe's blocks) of a share of ``share_size`` bytes."""
    body = share_size - HEADER_SIZE - FOOTER_SIZE
    if body <= 0:
        return 0, 0
    full = (body - CRC - 1) // (block + CRC)
    last = body - full * (block + CRC) - CRC
    if last < 1 or last > block:
        raise CorruptShare("share size does not match its block size")
    return full + 1, last


class _Encoder:
    """Stripes in, n block records (data + CRC) per stripe out; the footer digests kept per share."""

    def __init__(self, k: int, n: int, block: int):
        self.k, self.n, self.block = k, n, block
        self._fec = zfec.Encoder(k, n)
        self.stripes = 0
        self.length = 0
        self.digests = [0] * n  # running CRC-32 of each share's stripe records

    def encode(self, data: memoryview, last: bool) -> list[bytearray]:
        """Encode ``data``: whole stripes, and if ``last`` a final short stripe for the rest."""
        out = [bytearray() for _ in range(self.n)]
        k, block = self.k, self.block
        size = k * block
        pos, total = 0, len(data)
        while pos < total:
            rest = total - pos
            if rest >= size:
                blen = block
            elif last:
                blen = -(-rest // k)
            else:
                break
            piece = bytes(data[pos:pos + k * blen]) if rest >= k * blen else \
                bytes(data[pos:]) + bytes(k * blen - rest)
            blocks = self._fec.encode(tuple(piece[j * blen:(j + 1) * blen] for j in range(k)))
            for i, b in enumerate(blocks):
                record = b + struct.pack(">I", _crc(i, self.stripes, b))
                out[i] += record
                self.digests[i] = zlib.crc32(record, self.digests[i])
            self.stripes += 1
            pos += min(rest, k * blen)
        self.length += pos
        return out

    def footers(self) -> list[bytes]:
        return [_footer(self.length, self.stripes, d) for d in self.digests]


def encode_object(data: bytes, k: int, n: int, block: int = BLOCK) -> list[bytes]:
    """The n whole shares of ``data`` (repair, tests)."""
    enc = _Encoder(k, n, block)
    body = enc.encode(memoryview(data), last=True)
    return [share_header(k, n, i, block) + bytes(body[i]) + f for i, f in enumerate(enc.footers())]


def _decode_stripes(records: dict[int, bytes], geo: Geometry, first: int, count: int,
                    last_stripe: int, last_block: int) -> bytes:
    """Plain stripes ``first .. first+count-1`` from k shares' block records (CRCs checked)."""
    k = geo.k
    nums = sorted(records)[:k]
    dec = zfec.Decoder(k, geo.n) if nums != list(range(k)) else None
    parts: list[bytes] = []
    offsets = dict.fromkeys(nums, 0)
    for s in range(first, first + count):
        blen = last_block if s == last_stripe else geo.block
        blocks = []
        for i in nums:
            at = offsets[i]
            b = records[i][at:at + blen]
            (crc,) = struct.unpack(">I", records[i][at + blen:at + blen + CRC])
            if len(b) != blen or _crc(i, s, b) != crc:
                raise _BadShare(i, f"block {s} fails its checksum")
            offsets[i] = at + blen + CRC
            blocks.append(b)
        if dec is None:
            parts.extend(blocks)
        else:
            parts.extend(dec.decode(blocks, nums))
    return b"".join(parts)


class _BadShare(Exception):
    def __init__(self, share: int, why: str):
        super().__init__(why)
        self.share = share


def fetch_key(fetch: Callable[[int], Any]) -> str | None:
    return getattr(fetch, "key", None)


def verify_share(data: bytes, share: int) -> tuple[Geometry, int]:
    """Check a whole share (header, every block, footer digest); (geometry, object length)."""
    geo = parse_header(data)
    if geo.share != share:
        raise CorruptShare(f"share {geo.share} found where share {share} belongs")
    length, stripes, digest = parse_footer(data[-FOOTER_SIZE:])
    body = data[HEADER_SIZE:len(data) - FOOTER_SIZE]
    if zlib.crc32(body) != digest:
        raise CorruptShare("share digest does not match")
    count, _last = stripe_layout(len(data), geo.block)
    if count != stripes:
        raise CorruptShare("share holds the wrong number of stripes")
    return geo, length


def decode_object(shares: dict[int, bytes]) -> bytes:
    """The object from k or more verified whole shares."""
    geos = {i: parse_header(d) for i, d in shares.items()}
    geo = next(iter(geos.values()))
    length, stripes, _ = parse_footer(next(iter(shares.values()))[-FOOTER_SIZE:])
    if stripes == 0:
        return b""
    size = len(next(iter(shares.values())))
    _count, last = stripe_layout(size, geo.block)
    records = {i: d[HEADER_SIZE:len(d) - FOOTER_SIZE] for i, d in shares.items()}
    return _decode_stripes(records, geo, 0, stripes, stripes - 1, last)[:length]
