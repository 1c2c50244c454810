"""Core statements compiled once and run on the DBAPI cursor: the ingest path's index writes.

A small C-STORE runs about nine statements in its index transaction. Through
``Connection.execute`` each costs ~50 µs of SQLAlchemy bookkeeping (execution context, result
object, events) around ~8 µs of SQLite: about a third of a millisecond per store, a fifth of the
whole budget. Here SQLAlchemy still writes the SQL (from the models, for the engine's dialect) and
its type processors still convert the values; only the per-execution machinery is skipped. The
statements run on the same connection, inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

# Bind processors by parameter name: SQLAlchemy's per-type conversion of a Python value.
_Processors = dict[str, Callable[[Any], Any]]
_Entry = tuple[str, SQLCompiler, list[str] | None, _Processors]


class Prepared:
    """One statement; compiled per dialect and set of value keys on first use."""

    def __init__(self, stmt: ClauseElement) -> None:
        self._stmt = stmt
        self._compiled: dict[tuple[str, tuple[str, ...]], _Entry] = {}

    def _compile(self, conn: Connection, keys: tuple[str, ...]) -> _Entry:
        dialect = conn.dialect
        compiled = self._stmt.compile(dialect=dialect, column_keys=list(keys))
        assert isinstance(compiled, SQLCompiler)  # a DML statement compiles with the SQL compiler
        processors: _Processors = {}
        for name, bind in compiled.binds.items():
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                processors[name] = proc
        positional = list(compiled.positiontup) if compiled.positiontup is not None else None
        entry = (compiled.string, compiled, positional, processors)
        self._compiled[(dialect.name, keys)] = entry
        return entry

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> Any:
        """Run on ``conn``'s DBAPI connection; returns the DBAPI cursor (for fetchone/rowcount)."""
        keys = tuple(values)
        entry = self._compiled.get((conn.dialect.name, keys)) or self._compile(conn, keys)
        sql, compiled, positional, processors = entry
        params = compiled.construct_params(values, _check=False)
        for name, proc in processors.items():
            if name in params:
                params[name] = proc(params[name])
        cursor = conn.connection.cursor()
        args: Sequence[Any] | Mapping[str, Any] = [params[k] for k in positional] if positional else params
        cursor.execute(sql, args)
        return cursor

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row (DBAPI ``executemany``; every row has the same keys). Nothing for none."""
        if not rows:
            return
        keys = tuple(rows[0])
        entry = self._compiled.get((conn.dialect.name, keys)) or self._compile(conn, keys)
        sql, compiled, positional, processors = entry
        names = positional if positional else list(compiled.binds)
        batch: list[Any]
        if set(names) == set(keys):  # every bind is a given value: no defaults to fill in
            procs = [processors.get(k) for k in names]
            tuples = [[v[k] if p is None else p(v[k]) for k, p in zip(names, procs, strict=True)]
                      for v in rows]
            batch = tuples if positional else [dict(zip(names, t, strict=True)) for t in tuples]
        else:
            batch = []
            for values in rows:
                params = compiled.construct_params(values, _check=False)
                for name, proc in processors.items():
                    if name in params:
                        params[name] = proc(params[name])
                batch.append([params[k] for k in positional] if positional else params)
        cursor = conn.connection.cursor()
        cursor.executemany(sql, batch)
