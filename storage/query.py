"""The one query engine: C-FIND (pacs/) and QIDO-RS (dicomweb/) both build a :class:`Query` and call
:meth:`QueryEngine.run`, which yields one ``{keyword: value}`` dict per match.

How matching works on encrypted values (issue 14): every filter is compiled once
(:mod:`storage.matching`). Filters on clear columns (UIDs, dates, modality) and exact matches on
identifiers with a keyed-hash column (PatientID, AccessionNumber) run in SQL. Names, IDs and
descriptions with wildcards, case-insensitive or fuzzy matching are *narrowed* in SQL by their blind
indexes (:mod:`storage.blindindex`: keyed, truncated tokens; what each one reveals to someone holding
the database is written down there: equality of truncated tokens, nothing more) and *confirmed* in
Python on the decrypted values of the candidates only, since a 32-bit token can collide. Nothing
decrypted is kept: memory does not grow with the archive, and there is nothing to rebuild when a
process starts or to keep coherent between nodes.

Candidates: each narrowing filter's posting lists are read first (``SELECT row id FROM tokens WHERE
token IN (...)``, at most :data:`_CANDIDATES_MAX` ids each); when they are small their intersection
goes into the main query as an id list, otherwise as ``IN (subquery)`` conditions. A filter the
index cannot narrow (``*S*``, a birth date) leaves a scan of what the other filters select, decrypted
row by row, never cached. Until ``pacs reindex`` has indexed an archive that predates the tokens
(``reindex_state``), nothing is narrowed and names match by that scan.

Rows are read as Core tuples of only the columns the query needs (:class:`_Plan`, cached per level
and key list), the patient's wrapped key comes along in the same row (one query for the whole
answer, no query per match), and a level's ``phi`` is decrypted only for the rows that are returned
or must be confirmed: the filters' levels first, the rest only for a confirmed match. A patient
shredded while a search runs is skipped. Rows stream (``yield_per``), so C-FIND sends each pending
response as it is produced. Paging is pushed into SQL when no filter is left for Python; otherwise
rows are paged after confirming, so ``offset``/``limit`` are always exact. The study list's
``ORDER BY study_date DESC, study_time DESC, id DESC`` is the order of the index
``ix_studies_listing``, so ``LIMIT 101`` reads 101 index entries instead of sorting them all.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from .attributes import ATTRIBUTES, LEVELS, UNIQUE_KEY, Attr, Level, levels_up_to
from .blindindex import BlindIndex, Narrowing
from .errors import BadInput, NotFound
from .index.models import (
    Instance,
    Patient,
    PatientKey,
    PatientToken,
    ReindexState,
    Series,
    SeriesToken,
    Study,
    StudyToken,
)
from .matching import Matcher, compile_matcher
from .tenancy import provider_is
from .vault import Vault

log = logging.getLogger(__name__)

TABLES = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}
TOKENS = {"PATIENT": (PatientToken.__table__, "patient_id"),
          "STUDY": (StudyToken.__table__, "study_id"),
          "SERIES": (SeriesToken.__table__, "series_id")}
_MULTI_VALUED_COLUMNS = {"modalities", "sop_classes"}
_INT_COLUMNS = {"series_number", "instance_number", "number_of_frames", "rows", "columns",
                "num_studies", "num_series", "num_instances"}
_SQL_INT = re.compile(r"-?[0-9]{1,18}")  # ASCII digits that fit a 64-bit column ("²" is a digit too)
_CANDIDATES_MAX = 5000  # a posting list longer than this stays a subquery instead of an id list
_STREAM = 256  # rows fetched at a time


@dataclass
class Query:
    """A protocol-neutral query: filters and return keys are DICOM keywords."""

    level: Level
    filters: dict[str, Any] = field(default_factory=dict)
    return_keys: Sequence[str] = ()
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    patient_scope: int | None = None  # only this patient (patient letters)
    study_scope: frozenset[str] | None = None  # only these studies (a letter naming studies)
    provider_scope: int | None = None  # only this provider's patients (a provider's credentials)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise BadInput(f"unknown query level {self.level!r}")
        if self.offset < 0 or (self.limit is not None and self.limit < 0):
            raise BadInput("limit and offset must not be negative")

    def within(self, scope: Any) -> Query:
        """This query limited to a caller's :class:`storage.archive.Scope` (None: everything);
        what every front door calls, so no door decides visibility on its own."""
        if scope is not None:
            if scope.patient_ref is not None:
                self.patient_scope = scope.patient_ref
            if scope.study_uids is not None:
                self.study_scope = scope.study_uids
            if scope.provider_id is not None:
                self.provider_scope = scope.provider_id
        return self


@dataclass
class _Filter:
    attr: Attr
    matcher: Matcher


_UID_COLUMN: dict[Level, str] = {"PATIENT": "pid_hash", "STUDY": "study_uid", "SERIES": "series_uid",
                                  "IMAGE": "sop_uid"}
_JOINS: dict[Level, tuple[str, Level]] = {"STUDY": ("patient_id", "PATIENT"),
                                          "SERIES": ("study_id", "STUDY"),
                                          "IMAGE": ("series_id", "SERIES")}


@dataclass(frozen=True)
class _Plan:
    """What one query reads per row, worked out once: Core columns, not ORM objects.

    Row layout: ``patient id, patient key id, key version, wrapped key, *clear columns, *(phi,
    unique key) per sealed level`` (the key columns only when something is sealed). Only the clear
    columns the keys name are selected, and only the levels whose sealed values are needed are
    decrypted.
    """

    columns: tuple[Any, ...]
    clear: tuple[tuple[str, int], ...]  # keyword -> index in the row
    sealed: tuple[tuple[str, int, int, bool], ...]  # level, phi index, unique-key index, key is bytes


class QueryEngine:
    def __init__(self, sessions: sessionmaker[Session], vault: Vault, pn_ignore_case: bool = True,
                 *, phonetic: bool = False):
        self._sessions = sessions
        self._engine = sessions.kw["bind"]
        self._vault = vault
        self._pn_ignore_case = pn_ignore_case
        self._phonetic = phonetic
        self.blind = BlindIndex(vault.blind_key)
        self._index_ready = False

    def index_ready(self, conn: Connection) -> bool:
        """Whether every row has its tokens (``pacs reindex`` done); once true, true for good."""
        if not self._index_ready:
            pending = conn.execute(select(ReindexState.level)
                                   .where(ReindexState.done.is_(False)).limit(1)).first()
            self._index_ready = pending is None
            if not self._index_ready:
                log.warning("the blind indexes are incomplete (run `pacs reindex`): name searches "
                            "read every row")
        return self._index_ready

    def index_ready_reset(self) -> None:
        """Ask ``reindex_state`` again at the next search (after a re-indexing run)."""
        self._index_ready = False

    def run(self, q: Query) -> Iterator[dict[str, Any]]:
        visible = levels_up_to(q.level)
        sql_filters: list[_Filter] = []
        py_filters: list[_Filter] = []
        for kw, value in q.filters.items():
            attr = ATTRIBUTES.get(kw)
            if attr is None or attr.level not in visible:
                continue  # unsupported or lower-level key: no constraint, returned empty
            m = compile_matcher(kw, attr.vr, value, fuzzy=q.fuzzy, pn_ignore_case=self._pn_ignore_case,
                                phonetic=self._phonetic)
            if m.kind == "universal":
                continue
            f = _Filter(attr, m)
            (sql_filters if self._pushable(f) else py_filters).append(f)
        keys = list(dict.fromkeys([*(UNIQUE_KEY[lvl] for lvl in visible if lvl != "PATIENT"),
                                   *q.filters, *q.return_keys]))
        plan = _plan(visible, tuple(keys))
        filter_levels = {f.attr.level for f in py_filters}
        with self._engine.connect() as conn:
            narrow: list[tuple[Level, Narrowing]] = []
            if py_filters and self.index_ready(conn):
                narrow = [(f.attr.level, n) for f in py_filters
                          if (n := self.blind.narrowing(f.attr.keyword, f.matcher)) is not None]
            stmt = self._select(conn, q, visible, sql_filters, narrow, plan)
            if stmt is None:
                return  # a posting list is empty: nothing can match
            if not py_filters:
                stmt = stmt.offset(q.offset or None).limit(q.limit)
            skipped = returned = 0
            for row in self._live_rows(conn.execution_options(yield_per=_STREAM).execute(stmt)):
                try:
                    rec = self._record(row, plan, filter_levels if py_filters else None)
                    if py_filters:
                        if not all(f.matcher(rec.get(f.attr.keyword)) for f in py_filters):
                            continue
                        if skipped < q.offset:
                            skipped += 1
                            continue
                        rec.update(self._record(row, plan, None, skip=filter_levels))
                except NotFound:
                    continue  # shredded while this search ran: not an answer any more
                out = {k: rec.get(k) for k in keys}
                out["_patient_ref"] = row[0]
                yield out
                returned += 1
                if py_filters and q.limit is not None and returned >= q.limit:
                    return

    def _live_rows(self, result: Any) -> Iterator[Any]:
        """The rows of ``result``, less those whose patient was shredded since the search began.

        The search reads one snapshot of the index (a streaming cursor), which still holds the
        wrapped key of a patient shredded meanwhile (issue 13). Before each batch of rows is
        answered, one query on a fresh snapshot asks which of its keys still exist.
        """
        for batch in result.partitions():
            with self._engine.connect() as fresh:
                live = set(fresh.execute(select(PatientKey.key_id).where(
                    PatientKey.key_id.in_({row[1] for row in batch}),
                    PatientKey.wrapped != b"")).scalars())
            for row in batch:
                if row[1] in live:
                    yield row

    def _pushable(self, f: _Filter) -> bool:
        col, kind = f.attr.column, f.matcher.kind
        if f.attr.where == "hashed":
            return kind == "single"
        if f.attr.where != "clear" or col in _MULTI_VALUED_COLUMNS:
            return False
        if col in _INT_COLUMNS:
            return kind == "single" and _SQL_INT.fullmatch(f.matcher.values[0]) is not None
        return kind in ("single", "list", "range")

    def _narrowed(self, conn: Connection, level: Level, id_col: Any, n: Narrowing) -> Any:
        """The SQL condition a narrowing puts on ``id_col`` (an id list when the posting lists are
        short, else subqueries), or False when no row can match."""
        table, fk = TOKENS[level]
        subqueries = []
        ids: set[int] = set()
        for alternative in n or ():
            found: set[int] | None = None
            for group in alternative:
                tokens = sorted(group)
                posting = select(table.c[fk]).where(table.c.token.in_(tokens))
                got = conn.execute(posting.limit(_CANDIDATES_MAX + 1)).scalars().all()
                if len(got) <= _CANDIDATES_MAX:
                    found = set(got) if found is None else found & set(got)
            if found is None:  # every posting list is long: let the database intersect them
                subqueries.append(and_(*(id_col.in_(select(table.c[fk]).where(
                    table.c.token.in_(sorted(g)))) for g in alternative)))
            else:
                ids |= found
        if subqueries:
            return or_(*subqueries, id_col.in_(sorted(ids))) if ids else or_(*subqueries)
        return id_col.in_(sorted(ids)) if ids else False

    def _select(self, conn: Connection, q: Query, visible: tuple[Level, ...], filters: list[_Filter],
                narrow: list[tuple[Level, Narrowing]], plan: _Plan) -> Select[*tuple[Any, ...]] | None:
        t = {lvl: TABLES[lvl].__table__.c for lvl in visible}  # Core columns: no ORM per row
        stmt = select(*plan.columns).select_from(TABLES["PATIENT"].__table__)
        for lvl in visible[1:]:
            fk, parent = _JOINS[lvl]
            stmt = stmt.join(TABLES[lvl].__table__, t[lvl][fk] == t[parent]["id"])
        if plan.sealed:
            keys = PatientKey.__table__.c
            stmt = stmt.outerjoin(PatientKey.__table__, keys["key_id"] == t["PATIENT"]["key_id"])
        conds = []
        for f in filters:
            c = t[f.attr.level]
            m = f.matcher
            if f.attr.where == "hashed":
                label = "pid" if f.attr.keyword == "PatientID" else f.attr.keyword
                conds.append(c[f.attr.column] == self._vault.blind(label, m.values[0]))
                continue
            col = c[f.attr.column]
            if m.kind == "single":
                conds.append(col == (int(m.values[0]) if f.attr.column in _INT_COLUMNS else m.values[0]))
            elif m.kind == "list":
                conds.append(col.in_(m.values))
            elif m.kind == "range":
                if m.low is not None:
                    conds.append(col >= m.low)
                if m.high is not None:
                    conds.append(col <= m.high + "~")
        for level, n in narrow:
            cond = self._narrowed(conn, level, t[level]["id"], n)
            if cond is False:
                return None
            conds.append(cond)
        if q.patient_scope is not None:
            conds.append(t["PATIENT"]["id"] == q.patient_scope)
        if q.study_scope is not None and "STUDY" in visible:
            conds.append(t["STUDY"]["study_uid"].in_(sorted(q.study_scope)))
        if q.provider_scope is not None:  # a tenant sees its own patients only (issue 19)
            conds.append(provider_is(t["PATIENT"]["provider_id"], q.provider_scope))
        if conds:
            stmt = stmt.where(and_(*conds))
        # STUDY order matches ix_studies_listing (study_date, study_time, id): LIMIT needs no sort.
        orders: dict[Level, Callable[[], list[Any]]] = {
                 "PATIENT": lambda: [t["PATIENT"]["id"]],
                 "STUDY": lambda: [t["STUDY"]["study_date"].desc(), t["STUDY"]["study_time"].desc(),
                                   t["STUDY"]["id"].desc()],
                 "SERIES": lambda: [t["SERIES"]["series_number"], t["SERIES"]["id"]],
                 "IMAGE": lambda: [t["IMAGE"]["instance_number"], t["IMAGE"]["id"]]}
        order = orders[q.level]()
        if q.level == "SERIES":
            order = [t["STUDY"]["id"], *order]
        elif q.level == "IMAGE":
            order = [t["SERIES"]["id"], *order]
        return stmt.order_by(*order)

    def _record(self, row: Any, plan: _Plan, only: set[Level] | None,
                skip: set[Level] | frozenset[Level] = frozenset()) -> dict[str, Any]:
        """The row's values: clear ones, and the sealed levels in ``only`` (all: None) but ``skip``.

        Raises NotFound when the patient's key is gone (shredded since the search began)."""
        rec = {kw: row[i] for kw, i in plan.clear} if not skip else {}
        if plan.sealed:
            key_id, unseal = row[1], self._vault.unseal
            dek = None
            for lvl, phi_i, uid_i, is_bytes in plan.sealed:
                if (only is not None and lvl not in only) or lvl in skip:
                    continue
                if dek is None:
                    dek = self._vault.dek_from(key_id, row[2], row[3])
                uid = row[uid_i].hex() if is_bytes else row[uid_i]
                rec.update(unseal(key_id, phi_aad(lvl, uid), row[phi_i], dek))
        return rec


@functools.lru_cache(maxsize=256)
def _plan(visible: tuple[Level, ...], keys: tuple[str, ...]) -> _Plan:
    """The columns and sealed levels a query needs for ``keys`` (filters and return keys)."""
    wanted = [ATTRIBUTES[k] for k in keys if k in ATTRIBUTES and ATTRIBUTES[k].level in visible]
    patient = TABLES["PATIENT"].__table__.c
    keys_c = PatientKey.__table__.c
    columns: list[Any] = [patient["id"], patient["key_id"]]
    if any(a.where != "clear" for a in wanted):
        columns += [keys_c["kek_version"], keys_c["wrapped"]]
    clear: list[tuple[str, int]] = []
    for lvl in visible:
        c = TABLES[lvl].__table__.c
        for a in wanted:
            if a.level == lvl and a.where == "clear":
                clear.append((a.keyword, len(columns)))
                columns.append(c[a.column])
    sealed: list[tuple[str, int, int, bool]] = []
    for lvl in visible:
        if any(a.level == lvl and a.where != "clear" for a in wanted):
            c = TABLES[lvl].__table__.c
            sealed.append((lvl, len(columns), len(columns) + 1, lvl == "PATIENT"))
            columns += [c["phi"], c[_UID_COLUMN[lvl]]]
    return _Plan(tuple(columns), tuple(clear), tuple(sealed))


def phi_aad(level: str, unique: str) -> str:
    """Associated data for a row's sealed phi: binds it to its level and unique key (the one format
    every sealing and unsealing uses)."""
    return f"{level}|{unique}"


def phi_where(level: str, obj: Any) -> str:
    """:func:`phi_aad` of an ORM row (patients are keyed by their PatientID hash)."""
    uid = {"PATIENT": lambda o: o.pid_hash.hex(), "STUDY": lambda o: o.study_uid,
           "SERIES": lambda o: o.series_uid, "IMAGE": lambda o: o.sop_uid}[level](obj)
    return phi_aad(level, uid)
