"""Engine set-up: the read and write engines of the index database and their sessions.

SQLite: one writer at a time, and every write transaction takes the lock at BEGIN
(``BEGIN IMMEDIATE``), so no transaction deadlocks upgrading a read lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    event,
)

from ..index.db import LockedSessions, WriteLock, make_engine, sessions, upgrade

log = logging.getLogger(__name__)


def _serialise_sqlite_writes(engine: Any) -> None:
    """SQLite: every write transaction takes the write lock at BEGIN (no deadlocking upgrades)."""

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn: Any, _record: object) -> None:  # a DBAPI connection
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@dataclass
class Engines:
    """The index database as the archive uses it: readers on one engine, writers on another."""

    engine: Any
    write_engine: Any
    sessions: Any
    write_lock: WriteLock
    write_sessions: Any


def open_engines(database_url: str) -> Engines:
    """Both engines, the schema upgraded to head, and their sessions (SQLite writes serialised)."""
    engine = make_engine(database_url)
    write_engine = make_engine(database_url)
    if engine.dialect.name == "sqlite":
        _serialise_sqlite_writes(write_engine)
    upgrade(engine)
    write_lock = WriteLock(write_engine)
    write_sessions: Any = sessions(write_engine)
    if engine.dialect.name == "sqlite":  # every write transaction waits on the lock
        write_sessions = LockedSessions(write_sessions, write_lock)
    return Engines(engine, write_engine, sessions(engine), write_lock, write_sessions)
