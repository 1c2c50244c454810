"""The dispersed blob store: locations, their health, the repair log, reads and writes of shares.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, func, select

from ..errors import BlobStoreMisconfigured, BlobStoreUnavailable, NotFound
from ..index.models import BlobRepair
from .shares import (
    BLOCK,
    _BadShare,
    fetch_key,
)
from .streams import _DispersedReader, _DispersedWriter

log = logging.getLogger(__name__)

@dataclass
class _Location:
    store: Any  # a FileBlobStore or an S3BlobStore: each reads and writes through its own stream type
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

    def _hung(self, i: int, f: cf.Future[Any]) -> None:
        """A request to location i outlived the timeout: skip i until it returns."""
        loc = self.locations[i]
        loc.failed("timeout")
        loc.hung += 1

        def back(_: cf.Future[Any]) -> None:
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
        pending: dict[cf.Future[Any], tuple[int, float]] = {}
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

    def commit(self, fh: _DispersedWriter, durable: bool = True) -> int:
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

    def close(self) -> None:
        """Stop the share threads (waiting for requests in flight, each bounded by the stores'
        own timeouts). ``pacs serve`` checks the store before it forks its DIMSE workers, and a
        fork must not happen beside live threads (pacs/workers.py): one holding a lock, e.g.
        mid-import in botocore, would leave that lock held for ever in the child."""
        self._pool.shutdown(wait=True, cancel_futures=True)

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
