"""Re-indexing: blind-index tokens for rows stored before they existed (``pacs reindex``).

Level by level (patients, studies, series) in id order, in batches: decrypt each row's ``phi``,
compute its tokens (storage/blindindex.py), replace the row's tokens, and record the last id done in
``reindex_state`` in the same transaction. Interrupted, it resumes after the last committed batch;
rows stored meanwhile get their tokens at ingest (re-doing them is harmless). When every level is
done, searches trust the tokens (``QueryEngine.index_ready``); until then they read every row.
A patient shredded meanwhile is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, delete, func, insert, select, update

from .attributes import Level
from .errors import NotFound
from .index.models import Patient, PatientKey, ReindexState, Series, Study
from .query import TOKENS, phi_aad

if TYPE_CHECKING:
    from .archive import Archive

_LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES")


def _rows(level: Level) -> Any:
    """id, phi, unique key, key id, key version, wrapped key of a level's rows, by id."""
    keys = (PatientKey.key_id, PatientKey.kek_version, PatientKey.wrapped)
    stmt: Select[*tuple[Any, ...]]
    table: type[Patient | Study | Series]
    if level == "PATIENT":
        stmt = select(Patient.id, Patient.phi, Patient.pid_hash, *keys)
        table = Patient
    elif level == "STUDY":
        stmt = select(Study.id, Study.phi, Study.study_uid, *keys).join(
            Patient, Study.patient_id == Patient.id)
        table = Study
    else:
        stmt = select(Series.id, Series.phi, Series.series_uid, *keys).join(
            Study, Series.study_id == Study.id).join(Patient, Study.patient_id == Patient.id)
        table = Series
    return stmt.outerjoin(PatientKey, PatientKey.key_id == Patient.key_id), table


def reindex(archive: Archive, *, restart: bool = False, batch: int = 500,
            progress: Callable[[str, int, int], None] | None = None) -> dict[str, int]:
    """Index every level; returns rows indexed per level. ``progress(level, done, total)``."""
    with archive.write_sessions.begin() as s:
        known = {r.level: r for r in s.scalars(select(ReindexState)).all()}
        for level in _LEVELS:
            if level not in known:
                s.add(ReindexState(level=level, last_id=0, done=False))
            elif restart:
                known[level].last_id, known[level].done = 0, False
    counts: dict[str, int] = {}
    for level in _LEVELS:
        counts[level] = _reindex_level(archive, level, batch, progress)
    archive.queries.index_ready_reset()
    return counts


def _reindex_level(archive: Archive, level: Level, batch: int,
                   progress: Callable[[str, int, int], None] | None) -> int:
    stmt, table = _rows(level)
    tokens_table, fk = TOKENS[level]
    with archive.sessions() as s:
        state = s.get(ReindexState, level)
        assert state is not None
        if state.done:
            return 0
        last = state.last_id
        total = s.scalar(select(func.count()).select_from(table).where(table.id > last)) or 0
    done = 0
    while True:
        with archive.engine.connect() as c:
            rows = c.execute(stmt.where(table.id > last).order_by(table.id).limit(batch)).all()
        if not rows:
            break
        new_tokens: list[dict[str, Any]] = []
        for row_id, phi, unique, key_id, kek_version, wrapped in rows:
            try:
                dek = archive.vault.dek_from(key_id, kek_version, wrapped)
            except NotFound:
                continue  # shredded meanwhile: its rows are going
            uid = unique.hex() if isinstance(unique, bytes) else unique
            values = archive.vault.unseal(key_id, phi_aad(level, uid), phi, dek)
            new_tokens += [{"token": t, fk: row_id}
                           for t in sorted(archive.blind.tokens(level, values))]
        ids = [r[0] for r in rows]
        last = ids[-1]
        with archive.write_sessions.begin() as s:
            present = set(s.scalars(select(table.id).where(table.id.in_(ids))).all())
            s.execute(delete(tokens_table).where(tokens_table.c[fk].in_(ids)))
            kept = [t for t in new_tokens if t[fk] in present]
            if kept:
                s.execute(insert(tokens_table), kept)
            s.execute(update(ReindexState).where(ReindexState.level == level).values(last_id=last))
        done += len(rows)
        if progress is not None:
            progress(level, done, total)
    with archive.write_sessions.begin() as s:
        s.execute(update(ReindexState).where(ReindexState.level == level).values(done=True))
    return done
