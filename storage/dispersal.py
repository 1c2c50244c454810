"""Dispersal: every blob erasure-coded k-of-n over n independent blob stores (files or S3).

The blob (already ciphertext: storage/crypto.py sits above every store) is cut into *stripes* of
``k * block`` bytes; each stripe's k data blocks are Reed–Solomon coded into n blocks, and block i
of every stripe goes to share i, kept by location i under the blob's own random key. So byte range
[a, b) of a blob is stripes ``a // (k*block)`` .. ``(b-1) // (k*block)``, one contiguous byte range in
each share: a frame read fetches only those stripes from k shares.

Share format (integers big-endian)::

    header  "PACSSHR1" | version u8 | k u8 | n u8 | share u8 | block u32 | crc32 of these u32  (24 B)
    stripe  block bytes (the last stripe's blocks are ceil(rest / k) long) | crc32 u32, per stripe
    footer  object length u64 | stripes u32 | crc32 of all stripe records u32 | crc32 u32 | "PACSSEND"

Each block's CRC is seeded with (share, stripe), so a block moved to another place fails too; the
footer's digest is the whole share's checksum (``pacs blobs scrub``). The object length is in the
footer, not the header, because a blob streams in before its length is known (S3 objects cannot be
rewritten in place). A corrupt block is never fed to the decoder: its share is skipped for that read
and queued for repair.

Each location alone holds 1/k of the ciphertext (zfec is systematic: shares 0..k-1 carry the data
blocks as they are, shares k.. parity), never a whole object, and nothing that is readable without
the patient's key.

Library: zfec (Tahoe-LAFS's Reed–Solomon over GF(2^8)), a manylinux wheel with no system library.
pyeclib 1.8 (OpenStack Swift's, its wheel bundles liberasurecode and ISA-L) was measured beside it on
this machine, 3-of-5, one core: zfec ~0.9 GB/s encode and decode on 64 KiB blocks; pyeclib
liberasurecode_rs_vand ~0.7/0.6 GB/s, isa_l_rs_vand ~3.5/4.3 GB/s on 1.5 MB calls. zfec is chosen:
its systematic block API is exactly our stripe (k blocks in, n blocks out, any k back), where
pyeclib's fragments carry their own headers and sizes per call, which per 64 KiB stripe we would
wrap and check again. Our whole share encoding, CRCs and copies included, costs ~3 ms of CPU per
MB (AES-GCM: ~0.25 ms/MB; bench/objectstores.py), ~1.5 ms for a CT slice, small beside the round
trips to five locations a store makes. ISA-L through pyeclib is the upgrade if coding shows.

Writes go to all n locations in parallel (a shared thread pool) and are acknowledged once
``write_quorum`` shares are committed (default n; k+1 lets one location be down: the missing shares
are recorded in ``blob_repairs`` for ``pacs blobs repair``). Reads ask the k fastest healthy
locations and fall back to others on an error, a bad checksum or ``timeout``; a location that hangs
costs at most ``timeout``, never a hung store or read.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import logging
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO

import zfec
from sqlalchemy import Engine, delete, func, select

from .errors import BlobStoreMisconfigured, BlobStoreUnavailable, NotFound
from .index.models import BlobRepair

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


@dataclass
class _Location:
    store: Any
    name: str
    latency: float = 0.0  # moving average of recent requests, seconds
    down_until: float = 0.0  # after a failure, asked last for a while
    errors: int = 0
    corrupt: int = 0
    hung: int = 0  # requests still running past the timeout: this location is skipped meanwhile
    last_error: str = ""

    def ok(self, seconds: float) -> None:
        self.latency = seconds if self.latency == 0 else 0.8 * self.latency + 0.2 * seconds
        self.down_until = 0.0

    def failed(self, why: str) -> None:
        self.errors += 1
        self.last_error = why
        self.down_until = time.monotonic() + 10.0


@dataclass
class RepairLog:
    """Blobs below full redundancy (``blob_repairs``): which shares, and why. Random keys only."""

    engine: Engine
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, key: str, shares: set[int], reason: str) -> None:
        try:
            with self._lock, self.engine.begin() as c:
                old = c.execute(select(BlobRepair.shares).where(BlobRepair.key == key)).scalar()
                have = {int(x) for x in old.split(",") if x} if old else set()
                value = ",".join(str(s) for s in sorted(have | shares))
                if old is None:
                    c.execute(BlobRepair.__table__.insert().values(
                        key=key, shares=value, reason=reason[:16],
                        recorded_at=datetime.now(UTC).replace(tzinfo=None)))
                else:
                    c.execute(BlobRepair.__table__.update().where(BlobRepair.key == key)
                              .values(shares=value, reason=reason[:16]))
        except Exception:  # noqa: BLE001 - a scrub finds it again
            log.warning("could not record a blob needing repair", exc_info=True)

    def done(self, key: str) -> None:
        with self.engine.begin() as c:
            c.execute(delete(BlobRepair).where(BlobRepair.key == key))

    def pending(self) -> list[tuple[str, set[int]]]:
        with self.engine.connect() as c:
            rows = c.execute(select(BlobRepair.key, BlobRepair.shares).order_by(BlobRepair.key)).all()
        return [(k, {int(x) for x in s.split(",") if x}) for k, s in rows]

    def count(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(BlobRepair)).scalar() or 0)


class DispersedBlobStore:
    """k-of-n erasure coding over ``locations`` (blob stores). See the module docstring."""

    def __init__(self, locations: list[Any], k: int, n: int, *, write_quorum: int = 0,
                 timeout: float = 10.0, block: int = BLOCK, repairs: RepairLog | None = None,
                 names: list[str] | None = None):
        if not 1 <= k <= n:
            raise BlobStoreMisconfigured(f"dispersal_k: must be 1..dispersal_n ({n}), got {k}")
        if n > 255:
            raise BlobStoreMisconfigured(f"dispersal_n: at most 255, got {n}")
        if len(locations) < n:
            raise BlobStoreMisconfigured(
                f"blob_locations: dispersal_n is {n} but only {len(locations)} location(s) are set")
        quorum = write_quorum or n
        if not k <= quorum <= n:
            raise BlobStoreMisconfigured(f"write_quorum: must be {k}..{n} (0 means n), got {write_quorum}")
        self.k, self.n, self.write_quorum, self.timeout, self.block = k, n, quorum, timeout, block
        names = names or [repr(s) for s in locations]
        self.locations = [_Location(s, nm) for s, nm in zip(locations[:n], names, strict=False)]
        self.repairs = repairs
        self._pool = cf.ThreadPoolExecutor(max_workers=max(8, 6 * n), thread_name_prefix="pacs-shares")
        self.corrupt_found = 0

    # -- plumbing -------------------------------------------------------------------------------------

    def _all(self, fn: Callable[[int, _Location], Any], shares: list[int] | None = None,
             timeout: float | None = None) -> dict[int, Any | BaseException]:
        """``fn`` on each location in parallel; results or exceptions, a TimeoutError past ``timeout``."""
        shares = list(range(self.n)) if shares is None else shares
        out: dict[int, Any | BaseException] = {}
        futures = {}
        for i in shares:
            if self.locations[i].hung:
                out[i] = TimeoutError("an earlier request is still hanging")
            else:
                futures[self._pool.submit(fn, i, self.locations[i])] = i
        done, late = cf.wait(futures, timeout=self.timeout if timeout is None else timeout)
        for f in done:
            try:
                out[futures[f]] = f.result()
            except BaseException as exc:  # noqa: BLE001 - reported per location
                out[futures[f]] = exc
        for f in late:
            self._hung(futures[f], f)
            out[futures[f]] = TimeoutError(f"no answer within {self.timeout:g} s")
        return out

    def _hung(self, i: int, f: cf.Future) -> None:
        """A request to location i outlived the timeout: skip i until it returns."""
        loc = self.locations[i]
        loc.failed("timeout")
        loc.hung += 1

        def back(_: cf.Future) -> None:
            loc.hung -= 1

        f.add_done_callback(back)

    def _ranked(self) -> list[int]:
        now = time.monotonic()
        return sorted((i for i in range(self.n) if not self.locations[i].hung),
                      key=lambda i: (self.locations[i].down_until > now, self.locations[i].latency, i))

    def _gather(self, fetch: Callable[[int], Any], need: int, order: list[int] | None = None,
                report_missing: bool = True) -> dict[int, Any]:
        """``need`` successful fetches, fastest locations first; others asked on error or delay."""
        order = list(order if order is not None else self._ranked())
        pending: dict[cf.Future, tuple[int, float]] = {}
        got: dict[int, Any] = {}
        errors: list[str] = []

        def launch() -> bool:
            if not order:
                return False
            i = order.pop(0)
            pending[self._pool.submit(fetch, i)] = (i, time.monotonic())
            return True

        for _ in range(need):
            launch()
        deadline = time.monotonic() + self.timeout
        hedge = max(self.timeout / 4, 0.05)
        while len(got) < need:
            left = deadline - time.monotonic()
            if not pending or left <= 0:
                for f, (i, _t) in pending.items():
                    self._hung(i, f)
                raise BlobStoreUnavailable(
                    f"only {len(got)} of the {need} shares needed could be read "
                    f"({'; '.join(errors) or 'no answer in time'})")
            done, _ = cf.wait(pending, timeout=min(left, hedge), return_when=cf.FIRST_COMPLETED)
            if not done:  # something is slow: ask one more location meanwhile
                launch()
                continue
            for f in done:
                i, started = pending.pop(f)
                loc = self.locations[i]
                try:
                    got[i] = f.result()
                    loc.ok(time.monotonic() - started)
                except _BadShare as exc:
                    self._corrupt(fetch_key(fetch), i, str(exc))
                    errors.append(f"share {i} corrupt")
                    launch()
                except NotFound:
                    if report_missing:
                        self._missing(fetch_key(fetch), i)
                    errors.append(f"share {i} missing")
                    launch()
                except Exception as exc:  # noqa: BLE001 - that location is down: ask another
                    loc.failed(type(exc).__name__)
                    errors.append(f"location {i} {type(exc).__name__}")
                    launch()
        for f in pending:  # enough: the slower answers are not waited for
            f.cancel()
        return got

    def _corrupt(self, key: str | None, share: int, why: str) -> None:
        self.corrupt_found += 1
        self.locations[share].corrupt += 1
        log.warning("dispersal: share %d on %s is corrupt (%s); skipped, queued for repair",
                    share, self.locations[share].name, why)
        if key and self.repairs is not None:
            self.repairs.record(key, {share}, "corrupt")

    def _missing(self, key: str | None, share: int) -> None:
        if key and self.repairs is not None:
            self.repairs.record(key, {share}, "missing")

    # -- BlobStore ------------------------------------------------------------------------------------

    def new_key(self) -> str:
        return secrets.token_hex(16)

    def create(self, key: str) -> _DispersedWriter:
        return _DispersedWriter(self, key)

    def commit(self, fh: _DispersedWriter, durable: bool = True) -> int:  # type: ignore[override]
        return fh.commit(durable)

    def sync(self, keys: list[str]) -> None:
        """Make committed shares durable on every location (files: fsync/syncfs; S3: already).

        Raises BlobStoreUnavailable when fewer than ``write_quorum`` locations confirm."""
        results = self._all(lambda i, loc: loc.store.sync(keys))
        failed = {i for i, r in results.items() if isinstance(r, BaseException)}
        ok = self.n - len(failed)
        if failed and ok >= self.write_quorum and self.repairs is not None:
            for key in keys:
                self.repairs.record(key, failed, "write")
        if ok < self.write_quorum:
            raise BlobStoreUnavailable(f"only {ok} of {self.n} storage locations made the objects "
                                       f"durable; write_quorum is {self.write_quorum}")

    def open(self, key: str) -> _DispersedReader:
        return _DispersedReader(self, key)

    def size(self, key: str) -> int:
        with self.open(key) as r:
            return r.length()

    def delete(self, key: str) -> None:
        """Delete every share; a location that is down keeps an orphan share, swept when it is back."""
        results = self._all(lambda i, loc: loc.store.delete(key))
        for i, r in results.items():
            if isinstance(r, BaseException):
                log.warning("dispersal: could not delete a share on %s (%s); the orphan sweep will",
                            self.locations[i].name, type(r).__name__)

    def keys(self, older_than: float | None = None) -> Iterator[str]:
        results = self._all(lambda i, loc: set(loc.store.keys(older_than)), timeout=max(self.timeout, 60))
        seen: set[str] = set()
        for r in results.values():
            if not isinstance(r, BaseException):
                seen |= r
        yield from sorted(seen)

    def sweep_incomplete(self, older_than: float) -> int:
        results = self._all(lambda i, loc: loc.store.sweep_incomplete(older_than))
        return sum(r for r in results.values() if isinstance(r, int))

    def check(self) -> None:
        """Refuse a location that is misconfigured; refuse to start below write_quorum reachable."""
        results = self._all(lambda i, loc: loc.store.check())
        down = []
        for i, r in sorted(results.items()):
            if isinstance(r, BlobStoreMisconfigured):  # its message names blob_locations[i]
                raise r
            if isinstance(r, BaseException):
                down.append(i)
        if self.n - len(down) < self.write_quorum:
            raise BlobStoreUnavailable(
                f"blob_locations: only {self.n - len(down)} of {self.n} locations are reachable; "
                f"write_quorum is {self.write_quorum}")
        for i in down:
            log.warning("dispersal: location %d (%s) is unreachable; its shares will be repaired",
                        i, self.locations[i].name)

    def status(self) -> dict[str, Any]:
        """Each location up or down, corrupt shares seen, objects below full redundancy (for
        ``pacs blobs health`` and metrics; location names carry no credentials)."""
        results = self._all(lambda i, loc: loc.store.health())
        locs = []
        for i, loc in enumerate(self.locations):
            r = results.get(i)
            up = isinstance(r, dict) and r.get("") == "ok"
            error = "" if up else (f"unreachable ({type(r).__name__})" if isinstance(r, BaseException)
                                   else str((r or {}).get("", "down")))
            locs.append({"name": loc.name, "up": up, "error": error,
                         "corrupt_shares_seen": loc.corrupt})
        up = sum(1 for x in locs if x["up"])
        below = self.repairs.count() if self.repairs is not None else 0
        return {"ok": up >= self.write_quorum, "locations": locs, "k": self.k, "n": self.n,
                "write_quorum": self.write_quorum, "objects_below_full_redundancy": below}

    def health(self) -> dict[str, str]:
        """Readiness: the store as a whole ("ok" while write_quorum locations answer), each location
        ("degraded: ..." when down but tolerated), and objects below full redundancy."""
        st = self.status()
        up = sum(1 for x in st["locations"] if x["up"])
        out = {"": "ok" if st["ok"] else
               f"unavailable: {up} of {self.n} locations up, write_quorum {self.write_quorum}"}
        for i, loc in enumerate(st["locations"]):
            out[f"location{i}"] = "ok" if loc["up"] else f"degraded: {loc['error']}"
        below = st["objects_below_full_redundancy"]
        out["full_redundancy"] = "ok" if not below else f"degraded: {below} object(s) below"
        return out

    def __repr__(self) -> str:
        return f"DispersedBlobStore({self.k}-of-{self.n})"

    # -- share-level access (repair, scrub) ------------------------------------------------------------

    def read_share(self, i: int, key: str) -> bytes:
        with self.locations[i].store.open(key) as fh:
            return fh.read()

    def write_share(self, i: int, key: str, data: bytes) -> None:
        store = self.locations[i].store
        store.delete(key)
        fh = store.create(key)
        try:
            fh.write(data)
        except BaseException:
            fh.close()
            raise
        store.commit(fh, durable=True)


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


class _DispersedWriter(io.RawIOBase):
    """Encodes stripes as they fill and sends each location its blocks, all locations in parallel."""

    def __init__(self, store: DispersedBlobStore, key: str):
        super().__init__()
        self._store, self._key = store, key
        self._enc = _Encoder(store.k, store.n, store.block)
        self._buf = bytearray()
        self._batch = store.k * store.block * BATCH_STRIPES
        self._writers: dict[int, Any] = {}
        self._failed: dict[int, str] = {}
        self._done = False
        heads = {i: share_header(store.k, store.n, i, store.block) for i in range(store.n)}
        self._send(heads, opening=True)

    def writable(self) -> bool:
        return True

    def _send(self, per_share: dict[int, Any], opening: bool = False) -> None:
        s = self._store

        def one(i: int, loc: _Location) -> None:
            if opening:
                self._writers[i] = loc.store.create(self._key)
            self._writers[i].write(per_share[i])

        alive = [i for i in range(s.n) if i not in self._failed]
        for i, r in s._all(one, alive).items():
            if isinstance(r, BaseException):
                self._fail(i, r)
        if s.n - len(self._failed) < s.write_quorum:
            self.close()
            raise BlobStoreUnavailable(
                f"only {s.n - len(self._failed)} of {s.n} storage locations took the object; "
                f"write_quorum is {s.write_quorum}")

    def _fail(self, i: int, exc: BaseException) -> None:
        self._failed[i] = type(exc).__name__
        self._store.locations[i].failed(type(exc).__name__)
        log.warning("dispersal: location %d (%s) failed a write (%s)", i,
                    self._store.locations[i].name, type(exc).__name__)

    def write(self, data: Any) -> int:  # type: ignore[override]
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self._buf += data
        if len(self._buf) > self._batch:
            cut = (len(self._buf) - 1) // self._batch * self._batch  # at least one byte stays
            with memoryview(self._buf) as view:
                out = self._enc.encode(view[:cut], last=False)
            del self._buf[:cut]
            self._send(dict(enumerate(out)))
        return n

    def commit(self, durable: bool) -> int:
        s = self._store
        try:
            with memoryview(self._buf) as view:
                out = self._enc.encode(view, last=True)
            self._buf = bytearray()
            footers = self._enc.footers()
            self._send({i: bytes(out[i]) + footers[i] for i in range(s.n)})

            def finish(i: int, loc: _Location) -> int:
                return loc.store.commit(self._writers[i], durable=durable)

            alive = [i for i in range(s.n) if i not in self._failed]
            for i, r in s._all(finish, alive).items():
                if isinstance(r, BaseException):
                    self._fail(i, r)
            ok = [i for i in range(s.n) if i not in self._failed]
            if len(ok) < s.write_quorum:
                s._all(lambda i, loc: loc.store.delete(self._key), ok)
                raise BlobStoreUnavailable(
                    f"only {len(ok)} of {s.n} storage locations confirmed the object; "
                    f"write_quorum is {s.write_quorum}")
            if self._failed and s.repairs is not None:
                s.repairs.record(self._key, set(self._failed), "write")
            self._done = True
            return self._enc.length
        finally:
            self.close()

    def close(self) -> None:
        """Without commit: close every share's writer and delete what was written (in the background)."""
        if not self.closed and not self._done:
            s = self._store
            for i, w in list(self._writers.items()):
                if s.locations[i].hung and i in self._failed:
                    continue

                s._pool.submit(_drop, w, s.locations[i].store, self._key)
        elif not self.closed:  # committed, but some locations failed: drop their partial shares
            s = self._store
            for i in self._failed:
                if i in self._writers and not s.locations[i].hung:
                    s._pool.submit(_drop, self._writers[i], s.locations[i].store, self._key)
        super().close()


class _DispersedReader(io.RawIOBase):
    """A seekable view of a dispersed blob: each read decodes only the stripes it spans."""

    def __init__(self, store: DispersedBlobStore, key: str):
        super().__init__()
        self._store, self._key = store, key
        self._pos = 0
        self._geo: Geometry | None = None
        self._share_size = 0
        self._stripes = 0
        self._last_block = 0
        self._length: int | None = None
        self._bad: set[int] = set()
        self._cache: tuple[int, bytes] = (-1, b"")  # (first stripe, plain bytes)
        self._open_geometry()

    def _reader(self, i: int) -> BinaryIO:
        """A new reader of share i for each request: an abandoned slow request keeps its own."""
        return self._store.locations[i].store.open(self._key)

    def _open_geometry(self) -> None:
        """Read the header (and learn the share size) of one share: the fastest that answers."""

        def head(i: int) -> tuple[Geometry, int]:
            with self._reader(i) as r:
                geo = parse_header(r.read(HEADER_SIZE))
                if geo.share != i:
                    raise _BadShare(i, "share in the wrong location")
                size = getattr(r, "size", None)
                if size is None:
                    size = r.seek(0, io.SEEK_END)
                return geo, int(size)

        head.key = self._key  # type: ignore[attr-defined]
        try:
            got = self._store._gather(self._guard(head), 1, report_missing=False)
        except BlobStoreUnavailable:
            if all(isinstance(r, NotFound) for r in self._probe_missing()):
                raise NotFound("stored object is missing from every storage location") from None
            raise
        (geo, size), = got.values()
        self._geo, self._share_size = geo, size
        try:
            self._stripes, self._last_block = stripe_layout(size, geo.block)
        except CorruptShare as exc:
            raise BlobStoreUnavailable(f"a share is damaged: {exc}") from None

    def _probe_missing(self) -> list[Any]:
        res = self._store._all(lambda i, loc: loc.store.open(self._key).close())
        return list(res.values())

    def _guard(self, fn: Callable[[int], Any]) -> Callable[[int], Any]:
        """Turn a share's CorruptShare into _BadShare (skipped, queued for repair)."""

        def run(i: int) -> Any:
            if i in self._bad:
                raise _BadShare(i, "already found bad")
            try:
                return fn(i)
            except CorruptShare as exc:
                self._bad.add(i)
                raise _BadShare(i, str(exc)) from None
            except _BadShare:
                self._bad.add(i)
                raise

        run.key = self._key  # type: ignore[attr-defined]
        return run

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def length(self) -> int:
        if self._length is None:
            if self._stripes == 0:
                self._length = 0
            else:
                self._fetch(self._stripes - 1, 1)
        assert self._length is not None
        return self._length

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos}.get(whence)
        self._pos = max(0, (self.length() if base is None else base) + offset)
        return self._pos

    def _fetch(self, first: int, count: int) -> bytes:
        """Plain bytes of stripes first..first+count-1 (the last stripe trimmed to the object end)."""
        geo = self._geo
        assert geo is not None
        rec = geo.block + CRC
        start = HEADER_SIZE + first * rec
        to_end = first + count >= self._stripes
        end = self._share_size if to_end else start + count * rec

        def part(i: int) -> bytes:
            with self._reader(i) as r:
                r.seek(start)
                data = r.read(end - start)
            if len(data) != end - start:
                raise CorruptShare("share is truncated")
            if to_end:
                length, stripes, _ = parse_footer(data[-FOOTER_SIZE:])
                if stripes != self._stripes:
                    raise CorruptShare("share footer disagrees with its size")
                self._length = length
                data = data[:-FOOTER_SIZE]
            return data

        while True:
            order = [i for i in self._store._ranked() if i not in self._bad]
            if len(order) < geo.k:
                raise BlobStoreUnavailable("too few intact shares of this object can be read")
            records = self._store._gather(self._guard(part), geo.k, order)
            try:
                plain = _decode_stripes(records, geo, first, count, self._stripes - 1, self._last_block)
                break
            except _BadShare as exc:  # a block failed its CRC: skip that share, ask again
                self._bad.add(exc.share)
                self._store._corrupt(self._key, exc.share, str(exc))
        if to_end and self._length is not None:
            plain = plain[: self._length - first * geo.k * geo.block]
        return plain

    def read(self, size: int = -1) -> bytes:
        geo = self._geo
        assert geo is not None
        if self._stripes == 0:
            return b""
        stripe_bytes = geo.k * geo.block
        if size is None or size < 0:
            size = self.length() - self._pos
        if self._length is not None:
            size = min(size, self._length - self._pos)
        if size <= 0:
            return b""
        first = self._pos // stripe_bytes
        if first >= self._stripes:
            return b""
        ahead = max(self._pos + size, self._pos + READ_AHEAD) if self._pos == 0 else self._pos + size
        last = min((ahead - 1) // stripe_bytes, self._stripes - 1)
        c_first, c_data = self._cache
        if 0 <= c_first <= first and self._pos + size <= c_first * stripe_bytes + len(c_data):
            at = self._pos - c_first * stripe_bytes
            out = c_data[at:at + size]
        else:
            plain = self._fetch(first, last - first + 1)
            self._cache = (first, plain)
            at = self._pos - first * stripe_bytes
            out = plain[at:at + size]
        self._pos += len(out)
        return out

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)



def _drop(writer: Any, store: Any, key: str) -> None:
    """Close an abandoned share writer and delete its share; failures are left to the orphan sweep."""
    for step in (writer.close, lambda: store.delete(key)):
        try:
            step()
        except Exception:  # noqa: BLE001 - best effort
            log.debug("could not clean up an abandoned share", exc_info=True)
