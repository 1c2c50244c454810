"""Streams over a dispersed blob: the writer that encodes and sends stripes as they fill, and the
seekable reader that fetches only the stripes a byte range spans from the k fastest locations.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import BlobStoreUnavailable, NotFound
from .shares import (
    BATCH_STRIPES,
    CRC,
    FOOTER_SIZE,
    HEADER_SIZE,
    READ_AHEAD,
    CorruptShare,
    Geometry,
    _BadShare,
    _decode_stripes,
    _Encoder,
    parse_footer,
    parse_header,
    share_header,
    stripe_layout,
)

if TYPE_CHECKING:
    from .store import DispersedBlobStore, _Location

log = logging.getLogger(__name__)

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

    def write(self, data: Any) -> int:
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
        self._prefetched: dict[int, bytes] = {}  # share -> its first records (_open_geometry)
        self._prefetch_end = 0
        self._open_geometry()

    def _reader(self, i: int) -> BinaryIO:
        """A new reader of share i for each request: an abandoned slow request keeps its own."""
        return self._store.locations[i].store.open(self._key)

    def _open_geometry(self) -> None:
        """Read the header (and learn the share size) of k shares at once, the fastest that
        answer, each with the block records the first read will want (the stripes of
        READ_AHEAD; over S3, bytes the same GET brought): opening a blob and reading its start
        is one round trip to the locations, not two."""
        k = self._store.k

        def head(i: int) -> tuple[Geometry, int, bytes]:
            with self._reader(i) as r:
                geo = parse_header(r.read(HEADER_SIZE))
                if geo.share != i:
                    raise _BadShare(i, "share in the wrong location")
                size = getattr(r, "size", None)
                if size is None:
                    size = r.seek(0, io.SEEK_END)
                    r.seek(HEADER_SIZE)
                end = self._first_end(geo, int(size))
                records = r.read(end - HEADER_SIZE) if end > HEADER_SIZE else b""
                if len(records) != end - HEADER_SIZE:
                    raise CorruptShare("share is truncated")
                return geo, int(size), records

        head.key = self._key  # type: ignore[attr-defined]  # read back by fetch_key()
        try:
            got = self._store._gather(self._guard(head), k, report_missing=False)
        except BlobStoreUnavailable:
            if all(isinstance(r, NotFound) for r in self._probe_missing()):
                raise NotFound("stored object is missing from every storage location") from None
            raise
        geo, size, _ = next(iter(got.values()))
        self._geo, self._share_size = geo, size
        try:
            self._stripes, self._last_block = stripe_layout(size, geo.block)
        except CorruptShare as exc:
            raise BlobStoreUnavailable(f"a share is damaged: {exc}") from None
        self._prefetched = {i: rec for i, (g, sz, rec) in got.items()
                            if (g.k, g.n, g.block, sz) == (geo.k, geo.n, geo.block, size)}
        self._prefetch_end = self._first_end(geo, size)

    def _first_end(self, geo: Geometry, size: int) -> int:
        """Where, in a share of ``size`` bytes, the records of the first read (READ_AHEAD) end."""
        try:
            stripes, _ = stripe_layout(size, geo.block)
        except CorruptShare:
            return HEADER_SIZE
        count = min(stripes, -(-READ_AHEAD // (geo.k * geo.block)))
        return size if count >= stripes else HEADER_SIZE + count * (geo.block + CRC)

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

        run.key = self._key  # type: ignore[attr-defined]  # read back by fetch_key()
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

        pre = self._prefetched

        def part(i: int) -> bytes:
            if i in pre and end <= self._prefetch_end:  # read with the header already
                data = pre[i][start - HEADER_SIZE:end - HEADER_SIZE]
            else:
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
            ranked = [i for i in self._store._ranked() if i not in self._bad]
            order = [i for i in ranked if i in pre] + [i for i in ranked if i not in pre]
            if len(order) < geo.k:
                raise BlobStoreUnavailable("too few intact shares of this object can be read")
            records = self._store._gather(self._guard(part), geo.k, order)
            try:
                plain = _decode_stripes(records, geo, first, count, self._stripes - 1, self._last_block)
                break
            except _BadShare as exc:  # a block failed its CRC: skip that share, ask again
                self._bad.add(exc.share)
                self._store._corrupt(self._key, exc.share, str(exc))
        self._prefetched = {}  # what follows is read on demand (and the reader caches it)
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

    def readinto(self, b: Any) -> int:
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
