"""``pacs backup DIR`` and ``pacs restore DIR``: a consistent online snapshot, and bringing it back.

A backup directory holds:

* ``index.sqlite``: the whole index at one instant (wrapped keys, rows, inline blobs). From a SQLite
  archive through SQLite's online backup API (a read transaction: writers go on); from PostgreSQL by
  copying every table inside one REPEATABLE READ transaction (the snapshot pg_dump takes), into a
  SQLite file with the same schema, so a backup restores onto either database;
* ``blobs/``: the ciphertext files the snapshot names, copied as they are (blob files are written
  once, fsynced before their index row commits and never rewritten, so copying after the snapshot
  is consistent). An object deleted between the snapshot and its copy is dropped from the backup's
  index, with the counts above it: the backup is then the archive a moment later;
* ``shred-log.txt``: the key ids of every patient shredded before the snapshot (random ids, no PHI);
* ``manifest.json``: what was copied; and ``master.key`` only when asked (``--with-master-key``).

Without the master key a backup is ciphertext and wrapped keys: useless. Restoring an older backup
would bring back patients shredded after it; :func:`restore` replays shred logs (the live archive's
``pacs patient shred-log``, or a newer backup's ``shred-log.txt``) and destroys those patients' keys
again before the archive is used.

Hand-written because no library snapshots an index and a blob tree together; the copies themselves
are sqlite3's backup API, SQLAlchemy Core and ``shutil``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, MetaData, insert, select, text

from .errors import ArchiveError, KeyUnavailable, NotFound
from .index.db import make_engine, upgrade
from .index.models import PatientKey, ShredLogEntry, SystemKey
from .keys import MasterKeyRing, WrappedKey, load_master_keys

if TYPE_CHECKING:
    from .archive import Archive
    from .config import Settings

log = logging.getLogger(__name__)
FORMAT = 1
INDEX = "index.sqlite"
SHRED_LOG = "shred-log.txt"
MANIFEST = "manifest.json"
KEY_FILE = "master.key"
_BATCH = 500


class BackupError(ArchiveError):
    """A backup cannot be written or restored (target not empty, not a backup, key missing)."""


@dataclass(frozen=True)
class BackupResult:
    instances: int
    blobs: int
    bytes: int
    dropped: int  # deleted between the snapshot and their copy
    master_key_included: bool


@dataclass(frozen=True)
class RestoreResult:
    instances: int
    blobs: int
    shredded: int  # patients whose shred was replayed


# -- backup ---------------------------------------------------------------------------------------

def backup(archive: Archive, dest: Path, *, with_master_key: bool = False) -> BackupResult:
    """Write a snapshot of ``archive`` into the new or empty directory ``dest``."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: a backup goes into a new directory")
    if with_master_key and not isinstance(archive.vault.ring, MasterKeyRing):
        raise BackupError("--with-master-key: the master key is in an HSM; its keys never leave it")
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest, 0o700)
    index = dest / INDEX
    if archive.engine.dialect.name == "sqlite":
        _sqlite_snapshot(Path(archive.engine.url.database or ""), index)
    else:
        _logical_snapshot(archive.engine, index)
    copied = nbytes = 0
    missing: list[str] = []
    with sqlite3.connect(index) as db:
        keys = [k for (k,) in db.execute("SELECT blob_key FROM instances") if not k.startswith("db-")]
        instances = db.execute("SELECT count(*) FROM instances").fetchone()[0]
    for key in keys:
        target = dest / "blobs" / key[:2] / key[2:4] / key
        try:
            nbytes += _copy_file(archive.blobs.path(key), target)
            copied += 1
        except (FileNotFoundError, NotFound):
            missing.append(key)
    if missing:  # deleted (or shredded) after the snapshot: the backup shows them gone too
        _drop_blobs(index, missing)
    with sqlite3.connect(index) as db:
        shredded = [k for (k,) in db.execute("SELECT key_id FROM shred_log ORDER BY shredded_at")]
    _write(dest / SHRED_LOG, "".join(f"{k}\n" for k in shredded))
    if with_master_key:
        ring = archive.vault.ring
        assert isinstance(ring, MasterKeyRing)  # checked above
        _write(dest / KEY_FILE, ring.dumps())
    result = BackupResult(instances - len(missing), copied, nbytes, len(missing), with_master_key)
    _write(dest / MANIFEST, json.dumps({
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_database": archive.engine.dialect.name, "instances": result.instances,
        "blob_files": copied, "blob_bytes": nbytes, "master_key_included": with_master_key}, indent=1))
    _fsync_dir(dest)
    return result


def _sqlite_snapshot(source: Path, target: Path) -> None:
    """SQLite's online backup in one step: one read transaction, so one instant of the index."""
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # pages=-1: all in one step, under one read lock
        dst.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
        dst.commit()
    finally:
        dst.close()
        src.close()
    os.chmod(target, 0o600)


def _logical_snapshot(source: Engine, target: Path) -> None:
    """Every table of ``source`` into a new SQLite index, read in one REPEATABLE READ transaction."""
    dst = make_engine(f"sqlite:///{target}")
    try:
        upgrade(dst)
        with (source.connect().execution_options(isolation_level="REPEATABLE READ") as src,
              src.begin(), dst.begin() as out):
            src.execute(text("SET TRANSACTION READ ONLY"))
            _copy_tables(src, out)
    finally:
        dst.dispose()
    os.chmod(target, 0o600)


def _copy_tables(src: Connection, dst: Connection) -> None:
    """Copy the rows of every table the target schema has (parents first)."""
    meta = MetaData()
    meta.reflect(dst)
    for table in meta.sorted_tables:
        if table.name == "alembic_version":
            continue
        dst.execute(table.delete())
        cols = [c.name for c in table.columns]
        rows = src.execute(select(*[text(f'"{c}"') for c in cols]).select_from(text(f'"{table.name}"')))
        while batch := rows.fetchmany(_BATCH):
            dst.execute(insert(table), [dict(zip(cols, (bytes(v) if isinstance(v, memoryview) else v
                                                         for v in row), strict=True)) for row in batch])


def _drop_blobs(index: Path, keys: list[str]) -> None:
    """Remove instances whose blob went before it was copied, and fix the counts above them."""
    with sqlite3.connect(index) as db:
        db.execute("PRAGMA foreign_keys=ON")
        for i in range(0, len(keys), _BATCH):
            part = keys[i:i + _BATCH]
            db.execute(f"DELETE FROM instances WHERE blob_key IN ({','.join('?' * len(part))})", part)
        db.executescript(_RECOUNT)


_RECOUNT = """
UPDATE series SET num_instances = (SELECT count(*) FROM instances WHERE series_id = series.id);
DELETE FROM series WHERE num_instances = 0;
UPDATE studies SET num_series = (SELECT count(*) FROM series WHERE study_id = studies.id),
  num_instances = (SELECT coalesce(sum(num_instances), 0) FROM series WHERE study_id = studies.id);
DELETE FROM studies WHERE num_series = 0;
UPDATE patients SET num_studies = (SELECT count(*) FROM studies WHERE patient_id = patients.id),
  num_series = (SELECT coalesce(sum(num_series), 0) FROM studies WHERE patient_id = patients.id),
  num_instances = (SELECT coalesce(sum(num_instances), 0) FROM studies WHERE patient_id = patients.id);
"""


# -- restore --------------------------------------------------------------------------------------

def restore(source: Path, settings: Settings, *, shred_logs: Iterable[Path] = ()) -> RestoreResult:
    """Bring the backup ``source`` back into the (empty) archive ``settings`` names; replay shreds.

    The master key comes from the settings (key file or PACS_MASTER_KEY) or, if the backup holds
    one, from the backup. It is checked against the backup's keys before anything is written.
    """
    source = Path(source)
    index = source / INDEX
    if not (source / MANIFEST).exists() or not index.exists():
        raise BackupError(f"{source} is not a pacs backup (no {MANIFEST} or {INDEX})")
    ring = _restore_key(source, settings, index)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blob_dir = Path(settings.blob_dir or settings.data_dir / "blobs")
    if blob_dir.exists() and any(blob_dir.iterdir()):
        raise BackupError(f"the blob directory {blob_dir} is not empty: restore into a new archive")
    target = make_engine(settings.database_url)
    try:
        _refuse_used(target)
        if target.dialect.name == "sqlite":
            target.dispose()
            _sqlite_restore(index, Path(target.url.database or ""))
        else:
            upgrade(target)
            src = make_engine(f"sqlite:///{index}")
            try:
                with src.connect() as s, target.begin() as t:
                    _copy_tables(s, t)
                    _reset_sequences(t)
            finally:
                src.dispose()
    finally:
        target.dispose()
    if ring is not None:
        # master_key_file: set by Settings.resolved() when the key is not in the environment
        ring.save(Path(settings.master_key_file))  # type: ignore[arg-type]
    blobs = 0
    if (source / "blobs").exists():
        for path in (source / "blobs").rglob("*"):
            if path.is_file():
                rel = path.relative_to(source / "blobs")
                _copy_file(path, blob_dir / rel)
                blobs += 1
    from .archive import Archive

    archive = Archive(settings)
    try:
        keys = {k for log_path in shred_logs for k in read_shred_log(log_path)}
        shredded = replay_shreds(archive, keys)
        with archive.engine.connect() as c:
            instances = c.execute(text("SELECT count(*) FROM instances")).scalar_one()
    finally:
        archive.close()
    return RestoreResult(instances, blobs, shredded)


def _restore_key(source: Path, settings: Settings, index: Path) -> MasterKeyRing | None:
    """The ring that opens the backup; returns it when it came from the backup (to be saved)."""
    from_backup: MasterKeyRing | None = None
    try:
        ring = load_master_keys(settings.master_key_file, settings.master_key)
    except KeyUnavailable:
        if not (source / KEY_FILE).exists():
            raise BackupError(
                "the backup does not hold the master key (it never does unless made with "
                "--with-master-key): put the key file at master_key_file or set PACS_MASTER_KEY") from None
        ring = from_backup = load_master_keys(source / KEY_FILE)
    engine = make_engine(f"sqlite:///{index}")
    try:
        with engine.connect() as c:
            for row in c.execute(select(SystemKey.name, SystemKey.kek_version, SystemKey.wrapped)):
                ring.unwrap(row.name, WrappedKey(row.kek_version, row.wrapped))
    finally:
        engine.dispose()
    return from_backup


def _refuse_used(engine: Engine) -> None:
    from sqlalchemy import inspect

    tables = set(inspect(engine).get_table_names())
    if "patient_keys" in tables or "system_keys" in tables:
        with engine.connect() as c:
            if c.execute(text("SELECT count(*) FROM system_keys")).scalar_one():
                raise BackupError("the target database already holds an archive: restore into a new one")


def _sqlite_restore(index: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=WAL")
        dst.commit()
    finally:
        dst.close()
        src.close()
    os.chmod(target, 0o600)


def _reset_sequences(conn: Connection) -> None:
    """PostgreSQL: rows came with their ids; move each serial sequence past them."""
    meta = MetaData()
    meta.reflect(conn)
    for table in meta.sorted_tables:
        if "id" in table.columns and table.columns["id"].autoincrement in (True, "auto"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                              f"coalesce((SELECT max(id) FROM \"{table.name}\"), 0) + 1, false) "
                              f"WHERE pg_get_serial_sequence('{table.name}', 'id') IS NOT NULL"))


# -- shred log ------------------------------------------------------------------------------------

def shred_log(archive: Archive) -> list[str]:
    """Key ids of every patient shredded in this archive, oldest first."""
    with archive.sessions() as s:
        return list(s.scalars(select(ShredLogEntry.key_id).order_by(ShredLogEntry.shredded_at)))


def read_shred_log(path: Path) -> list[str]:
    """Key ids from a shred log file, or from a backup directory's ``shred-log.txt``."""
    path = Path(path)
    if path.is_dir():
        path = path / SHRED_LOG
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def replay_shreds(archive: Archive, key_ids: Iterable[str]) -> int:
    """Shred again every patient of ``archive`` whose key is in ``key_ids``; returns how many."""
    from .index.models import Patient
    from .retention import shred

    wanted = set(key_ids)
    if not wanted:
        return 0
    with archive.sessions() as s:
        refs = [pid for pid, key in s.execute(select(Patient.id, Patient.key_id)) if key in wanted]
        loose = [k for k in s.scalars(select(PatientKey.key_id)) if k in wanted]
    for ref in refs:
        shred(archive, ref, actor="pacs restore", origin="shred log", reason="shred log replayed")
    with archive.write_sessions.begin() as s:  # a key whose patient was gone already
        for key_id in loose:
            s.execute(PatientKey.__table__.delete().where(PatientKey.key_id == key_id))
        for key_id in wanted:
            s.merge(ShredLogEntry(key_id=key_id, shredded_at=_now()))
    return len(refs)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- files ----------------------------------------------------------------------------------------

def _copy_file(src: Path, dst: Path) -> int:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
        return fout.tell()


def _write(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    for d in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
