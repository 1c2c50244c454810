"""Several ``pacs serve`` nodes on one index and one bucket (issue 16 part 4): what they must agree on.

What a node keeps in memory, and why it stays correct when another node changes the data:

* **Known patients** (``Archive._patients``: pid hash -> row id, key id) and **study owners**
  (``Archive._study_owner``) are checked by the index transaction that uses them (the patient row's
  update must hit one row, the study row names its patient), so a stale entry refuses one store at
  worst; they are also cleared here whenever any node shreds.
* **Frame indexes** are kept per blob key, a random name whose bytes never change: correct by
  construction. **Series metadata** is cached in the index itself (``series.metadata_cache``).
* **Unwrapped data keys** (the vault's LRU): a wrapped key read with a row is checked on every use
  (an empty one is a shredded patient: the cached key is dropped, NotFound). And every node drops
  the keys others shredded: the shred transaction bumps the ``shred`` epoch (table
  ``cluster_epochs``), each process polls the epochs every ``cluster_poll_interval`` seconds and on a
  change reads the new ``shred_log`` entries and forgets their keys.
* **The master key ring**: a rotation or retirement bumps the ``keyring`` epoch; every process then
  re-reads its ring (the shared key file, the HSM), so new patients are wrapped under the current
  version everywhere. A version it does not know is re-read on use anyway (storage/vault.py).

Plain polling of a one-row-per-epoch table, not PostgreSQL's LISTEN/NOTIFY: it works the same on
SQLite with several processes, and a node that was disconnected catches up on its next poll.

Cluster-wide jobs run once across the cluster: on PostgreSQL each takes a session advisory lock
(``pg_try_advisory_lock``) on a connection of its own, and a node that does not get it skips the job;
on SQLite (one machine) the locks that work today stay (the metadata warmer's ``flock``).

Orphans of a node that died: a node with a ``node_name`` gives the blob keys its ``pacs serve``
processes create a prefix derived from that name (8 hex digits of a hash; the other 24 stay random, so
keys are still 32 hex digits and name nothing). When the node starts again, none of its processes
is running, so every object with its prefix that no index row names is an orphan of the crash and is
removed at once (:func:`sweep_own_orphans`), with the multipart uploads it left open; other nodes'
objects keep the one-hour grace of ``Archive.sweep_orphans``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy import Connection, Engine, select, update

from .index.models import AuditEvent, ClusterEpoch, Instance, ShredLogEntry

if TYPE_CHECKING:
    from .archive import Archive
    from .config import Settings

log = logging.getLogger(__name__)

#: ``pacs serve`` sets this in its environment: its processes (and only they) tag new blob keys.
NODE_ENV = "PACS_NODE_PROCESS"
SHRED, KEYRING = "shred", "keyring"
_SKEW = timedelta(minutes=5)  # clocks of nodes may differ: shred log entries are read with a margin


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def lock_id(name: str) -> int:
    """The advisory lock number of a job: 64 bits of a hash of its name (signed, as PostgreSQL's)."""
    return int.from_bytes(hashlib.sha256(b"pacs-job|" + name.encode()).digest()[:8], "big", signed=True)


# -- cluster-wide jobs -----------------------------------------------------------------------------

@contextlib.contextmanager
def job_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Whether this process may run job ``name`` now (True) or another node runs it (False).

    PostgreSQL: ``pg_try_advisory_lock`` on a connection held for the block, released at its end (or
    by the server if this process dies). SQLite: always True (one machine: what works today)."""
    if not is_postgres(engine):
        yield True
        return
    with engine.connect() as conn:
        got = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({lock_id(name)})").scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                with contextlib.suppress(Exception):  # a broken connection has lost it anyway
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({lock_id(name)})")
                    conn.commit()


class Leadership:
    """A lock held for as long as this process leads a background job (the metadata warmer).

    PostgreSQL: a session advisory lock on a connection kept open while leading; if that connection
    breaks (the database restarted), leadership is lost and tried for again. SQLite: a non-blocking
    ``flock`` on ``path`` beside the data (one machine)."""

    def __init__(self, engine: Engine, name: str, path: Path):
        self._engine, self._name, self._path = engine, name, path
        self._conn: Connection | None = None
        self._file: BinaryIO | None = None

    def held(self) -> bool:
        if not is_postgres(self._engine):
            return self._flock()
        if self._conn is not None:
            try:
                self._conn.exec_driver_sql("SELECT 1").scalar()
                self._conn.commit()
                return True
            except Exception:  # noqa: BLE001 - the session (and its lock) is gone
                self.release()
        conn = self._engine.connect()
        try:
            got = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({lock_id(self._name)})").scalar())
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def _flock(self) -> bool:
        if self._file is not None:
            return True
        f = open(self._path, "ab")  # noqa: SIM115 - kept open while leading
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._file = f
        return True

    def release(self) -> None:
        if self._conn is not None:
            try:  # the connection goes back to the pool: the lock must not go with it
                self._conn.exec_driver_sql(f"SELECT pg_advisory_unlock({lock_id(self._name)})")
                self._conn.commit()
                self._conn.close()
            except Exception:  # noqa: BLE001 - broken: closed for good (the session ends, the lock too)
                with contextlib.suppress(Exception):
                    self._conn.invalidate()
            self._conn = None
        if self._file is not None:
            self._file.close()
            self._file = None


def ran_elsewhere(archive: Archive, actor: str, origin: str, within: timedelta) -> bool:
    """Did another node (``source`` other than ``origin``) record a run of ``actor`` lately?"""
    since = datetime.now(UTC).replace(tzinfo=None) - within
    with archive.sessions() as s:
        return s.scalar(select(AuditEvent.id).where(
            AuditEvent.action == "retention", AuditEvent.actor == actor, AuditEvent.source != origin,
            AuditEvent.at >= since).limit(1)) is not None


# -- epochs: what other nodes must drop from memory ------------------------------------------------

def bump(conn: Connection, name: str) -> None:
    """Add one to epoch ``name`` in the caller's transaction (seen by others once it commits)."""
    conn.execute(update(ClusterEpoch).where(ClusterEpoch.name == name)
                 .values(value=ClusterEpoch.value + 1))


def epochs(engine: Engine) -> dict[str, int]:
    with engine.connect() as c:
        return {name: value for name, value in c.execute(select(ClusterEpoch.name, ClusterEpoch.value))}


class EpochWatcher:
    """Polls ``cluster_epochs`` and drops what another node (or process) made stale."""

    def __init__(self, archive: Archive, interval: float):
        self._archive = weakref.ref(archive)
        self.interval = interval
        self._stop = threading.Event()
        self._seen = epochs(archive.engine)
        self._since = datetime.now(UTC).replace(tzinfo=None)
        self._thread: threading.Thread | None = None

    def start(self) -> EpochWatcher:
        self._thread = threading.Thread(target=self._loop, name="pacs-cluster-epochs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            archive = self._archive()
            if archive is None:
                return
            try:
                self.poll(archive)
            except Exception:  # noqa: BLE001 - e.g. the database restarting: next time
                log.debug("cluster epochs could not be read", exc_info=True)
            del archive

    def poll(self, archive: Archive) -> None:
        now = epochs(archive.engine)
        if now.get(SHRED) != self._seen.get(SHRED):
            since, self._since = self._since, datetime.now(UTC).replace(tzinfo=None)
            with archive.engine.connect() as c:
                keys = c.execute(select(ShredLogEntry.key_id)
                                 .where(ShredLogEntry.shredded_at >= since - _SKEW)).scalars().all()
            for key_id in keys:
                archive.vault.forget(key_id)
            archive._patients.clear()
            archive._study_owner.clear()
        if now.get(KEYRING) != self._seen.get(KEYRING):
            archive.vault.reload()
        self._seen = now


def watch(archive: Archive) -> EpochWatcher | None:
    """Start polling for this archive (``cluster_poll_interval`` > 0), or None."""
    interval = archive.settings.cluster_poll_interval
    return EpochWatcher(archive, interval).start() if interval > 0 else None


# -- a node's own orphans --------------------------------------------------------------------------

def node_tag(settings: Settings) -> str:
    """The blob key prefix of this node's ``pacs serve`` processes ("" without a ``node_name``)."""
    if not settings.node_name or os.environ.get(NODE_ENV) != "1":
        return ""
    return hashlib.sha256(b"pacs-node|" + settings.node_name.encode()).hexdigest()[:8]


def tag_new_keys(store: Any, tag: str) -> None:
    """Make ``store.new_key()`` return keys that begin with ``tag`` (still 32 random-looking hex)."""
    if tag:
        store.new_key = lambda: tag + secrets.token_hex(16)[len(tag):]


def sweep_own_orphans(archive: Archive, tag: str) -> int:
    """At a node's start: remove every object with its ``tag`` that no index row names, and abort
    its open multipart uploads (none of its processes runs now). Returns objects removed."""
    if not tag:
        return 0
    n = 0
    store = archive.blobs
    if hasattr(store, "bucket") and hasattr(store, "call"):  # S3: uploads a kill left open
        prefix = f"{store.prefix}/{tag}" if store.prefix else tag
        page = store.call("list_multipart_uploads", Prefix=prefix)
        for up in page.get("Uploads", []):
            with contextlib.suppress(Exception):
                store.call("abort_multipart_upload", Key=up["Key"], UploadId=up["UploadId"])
    with archive.sessions() as s:
        known = set(s.scalars(select(Instance.blob_key).where(Instance.blob_key.startswith(tag))).all())
    for key in list(store.keys()):
        if key.startswith(tag) and key not in known:
            store.delete(key)
            n += 1
    if n:
        log.warning("removed %d object(s) this node left unindexed when it stopped", n)
    return n
