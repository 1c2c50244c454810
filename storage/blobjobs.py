"""Blob store maintenance: ``pacs blobs migrate``, ``repair`` and ``scrub``.

Each job keeps its progress in a small JSON file in data_dir (the last key done: keys are random,
processed in sorted order), so an interrupted run goes on where it stopped; each returns counts.

* migrate: copy every blob file of a file archive into a bucket, read each copy back and compare
  its SHA-256, then write the switch file (storage/blobstores.py): running servers store into the
  bucket from then on and read the bucket first, the old files second. A last pass copies what
  was written before they switched. The files stay until the administrator removes blob_dir
  (and sets ``blob_store`` to the bucket in the configuration).
* repair (dispersal): for every stored blob (or only those recorded in ``blob_repairs``), read each
  share, and rewrite the missing or corrupt ones from k good shares.
* scrub (dispersal): read every share at a bounded rate, check its checksums, record what is
  missing or corrupt for repair.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from .blobstore import FileBlobStore, is_inline
from .blobstores import SWITCH_FILE, SwitchingBlobStore, s3_store
from .dispersal import (
    CorruptShare,
    DispersedBlobStore,
    decode_object,
    encode_object,
    parse_header,
    verify_share,
)
from .errors import ArchiveError, BlobStoreMisconfigured, NotFound
from .index.models import Instance

log = logging.getLogger(__name__)


class _Progress:
    """The last key done and the counts so far, in ``data_dir/<name>.json``."""

    def __init__(self, path: Path, fresh: bool = False):
        self.path = path
        state = {} if fresh or not path.exists() else json.loads(path.read_text())
        self.after: str = state.get("after", "")
        self.counts: Counter[str] = Counter(state.get("counts", {}))
        self.extra: dict[str, Any] = state.get("extra", {})

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"after": self.after, "counts": self.counts, "extra": self.extra}))
        tmp.replace(self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def _indexed_keys(archive: Any) -> list[str]:
    with archive.sessions() as s:
        return sorted(k for k in s.scalars(select(Instance.blob_key)).all() if not is_inline(k))


def _sha(fh: Any) -> str:
    h = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def migrate(archive: Any, to: str, *, limit: int | None = None, switch_grace: float = 3.0,
            progress: Callable[[str], None] | None = None) -> Counter[str]:
    """Copy the file archive's blobs to ``to`` (s3://bucket/prefix), verify, switch; resumable.

    ``limit``: stop after this many copies (an interrupted run, for tests and for pacing).
    """
    store = archive.blobs
    if not isinstance(store, SwitchingBlobStore):
        raise BlobStoreMisconfigured("blob_store: pacs blobs migrate moves a file archive "
                                     "(blob_store = \"\"); this archive is not one")
    files: FileBlobStore = store.files
    target = s3_store(to, archive.settings, "--to")
    target.check()
    state = _Progress(archive.settings.data_dir / "blob-migrate.json")
    if state.extra.get("to", to) != to:
        raise BlobStoreMisconfigured(f"--to: a migration to {state.extra['to']} is under way; "
                                     "finish it first")
    state.extra["to"] = to
    done = 0

    def copy(key: str) -> bool:
        try:
            with files.open(key) as src:
                fh = target.create(key)
                try:
                    while chunk := src.read(1 << 20):
                        fh.write(chunk)
                except BaseException:
                    fh.close()
                    raise
                target.commit(fh)
            with files.open(key) as a, target.open(key) as b:
                if _sha(a) != _sha(b):
                    target.delete(key)
                    raise ArchiveError("a copied blob does not match its source")
            return True
        except NotFound:  # deleted meanwhile
            return False

    if not state.extra.get("switched"):
        for key in sorted(files.keys()):
            if key <= state.after:
                continue
            if limit is not None and done >= limit:
                state.save()
                return state.counts
            if copy(key):
                state.counts["copied"] += 1
                done += 1
            state.after = key
            if done % 50 == 0:
                state.save()
        switch = archive.settings.data_dir / SWITCH_FILE
        switch.write_text(json.dumps({"to": to}))
        state.extra["switched"] = True
        state.save()
        if progress:
            progress("switched: new objects now go to the bucket")
        time.sleep(switch_grace)  # running servers look for the switch once a second
    have = set(target.keys())
    for key in sorted(files.keys()):  # written before the servers switched
        if key not in have and copy(key):
            state.counts["copied late"] += 1
    state.counts["verified"] = state.counts["copied"] + state.counts["copied late"]
    counts = state.counts
    state.finish()
    return counts


def _shares(store: DispersedBlobStore, key: str) -> dict[int, bytes | str]:
    """Each share's bytes, or why it cannot be used: "missing", "corrupt", "unreachable"."""
    out: dict[int, bytes | str] = {}
    for i, r in store._all(lambda i, loc: store.read_share(i, key)).items():
        if isinstance(r, NotFound):
            out[i] = "missing"
        elif isinstance(r, BaseException):
            out[i] = "unreachable"
        else:
            try:
                verify_share(r, i)
                out[i] = r
            except CorruptShare:
                out[i] = "corrupt"
    return out


def repair(archive: Any, *, only_recorded: bool = False, fresh: bool = False) -> Counter[str]:
    """Rewrite missing or corrupt shares of every indexed blob; resumable; returns counts."""
    store = archive.blobs
    if not isinstance(store, DispersedBlobStore):
        raise BlobStoreMisconfigured("blob_store: repair is for blob_store = \"dispersal\"")
    state = _Progress(archive.settings.data_dir / "blob-repair.json", fresh=fresh)
    indexed = set(_indexed_keys(archive))
    recorded = {k for k, _ in store.repairs.pending()} if store.repairs else set()
    keys = sorted(recorded if only_recorded else indexed | recorded)
    for n, key in enumerate(keys):
        if key <= state.after:
            continue
        if key not in indexed:  # deleted since: nothing to repair
            if store.repairs:
                store.repairs.done(key)
            state.after = key
            continue
        shares = _shares(store, key)
        good = {i: v for i, v in shares.items() if isinstance(v, bytes)}
        bad = {i: v for i, v in shares.items() if not isinstance(v, bytes)}
        state.counts["objects"] += 1
        if not bad:
            state.counts["complete"] += 1
        elif len(good) < store.k:
            state.counts["unrecoverable"] += 1
            log.error("a blob has only %d good shares of the %d needed", len(good), store.k)
        else:
            geo_block = parse_header(next(iter(good.values()))).block
            data = decode_object(good)
            fresh_shares = encode_object(data, store.k, store.n, geo_block)
            left = set()
            for i, why in bad.items():
                if why == "unreachable":
                    left.add(i)
                    continue
                try:
                    store.write_share(i, key, fresh_shares[i])
                    state.counts[f"rewritten ({why})"] += 1
                except Exception:  # noqa: BLE001 - that location is down again
                    left.add(i)
            if left:
                state.counts["still incomplete"] += 1
                if store.repairs:
                    store.repairs.record(key, left, "missing")
            else:
                state.counts["repaired"] += 1
        if store.repairs and key in recorded and not any(
                v == "unreachable" for v in bad.values()) and len(good) >= store.k:
            store.repairs.done(key)
        state.after = key
        if n % 20 == 0:
            state.save()
    counts = state.counts
    state.finish()
    return counts


def scrub(archive: Any, *, rate_mb: float = 20.0, limit: int | None = None,
          fresh: bool = False) -> Counter[str]:
    """Check every share's checksums at about ``rate_mb`` MB/s; record bad ones; resumable."""
    store = archive.blobs
    if not isinstance(store, DispersedBlobStore):
        raise BlobStoreMisconfigured("blob_store: scrub is for blob_store = \"dispersal\"")
    state = _Progress(archive.settings.data_dir / "blob-scrub.json", fresh=fresh)
    started, read = time.monotonic(), 0
    done = 0
    for key in _indexed_keys(archive):
        if key <= state.after:
            continue
        if limit is not None and done >= limit:
            state.save()
            return state.counts
        shares = _shares(store, key)
        state.counts["objects"] += 1
        bad = set()
        for i, v in shares.items():
            if isinstance(v, bytes):
                state.counts["shares ok"] += 1
                read += len(v)
            else:
                state.counts[f"shares {v}"] += 1
                if v != "unreachable":
                    bad.add(i)
        if bad and store.repairs:
            store.repairs.record(key, bad, "scrub")
        state.after = key
        done += 1
        if done % 20 == 0:
            state.save()
        ahead = read / (rate_mb * 1e6) - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)  # bounded rate: the scrub never competes with clients for long
    counts = state.counts
    state.finish()
    return counts
