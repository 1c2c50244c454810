"""The one query engine: C-FIND (pacs/) and QIDO-RS (dicomweb/) both build a :class:`Query` and call
:meth:`QueryEngine.run`, which yields one ``{keyword: value}`` dict per match.

How matching works on encrypted values (issue 3, part 3): every filter is compiled once
(:mod:`storage.matching`). Filters on clear columns (UIDs, dates, modality) and exact matches on
identifiers with a keyed-hash column (PatientID, AccessionNumber) run in SQL; everything else
(names, descriptions, wildcards) runs in Python on the decrypted ``phi`` values of the rows SQL
returns, with decryption cached in memory by ciphertext (see ``Vault.unseal``). Paging is pushed
into SQL when no filter is left for Python; otherwise rows stream (``yield_per``) and are paged after
matching, so ``offset``/``limit`` are always exact.

Rows are read as Core tuples of only the columns the query needs (:class:`_Plan`, cached per level
and key list), and a level's ``phi`` is decrypted only when one of its sealed attributes is asked
for. The study list's ``ORDER BY study_date DESC, study_time DESC, id DESC`` is the order of the
index ``ix_studies_listing``, so ``LIMIT 101`` reads 101 index entries instead of sorting them all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, select
from sqlalchemy.orm import Session, sessionmaker

from .attributes import ATTRIBUTES, LEVELS, UNIQUE_KEY, Attr, Level, levels_up_to
from .errors import BadInput, NotFound
from .index.models import Instance, Patient, Series, Study
from .matching import Matcher, compile_matcher
from .vault import Vault

TABLES = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}
_MULTI_VALUED_COLUMNS = {"modalities", "sop_classes"}
_INT_COLUMNS = {"series_number", "instance_number", "number_of_frames", "rows", "columns",
                "num_studies", "num_series", "num_instances"}
_SQL_INT = re.compile(r"-?[0-9]{1,18}")  # ASCII digits that fit a 64-bit column ("²" is a digit too)


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

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise BadInput(f"unknown query level {self.level!r}")
        if self.offset < 0 or (self.limit is not None and self.limit < 0):
            raise BadInput("limit and offset must not be negative")


@dataclass
class _Filter:
    attr: Attr
    matcher: Matcher


_UID_COLUMN: dict[Level, str] = {"PATIENT": "pid_hash", "STUDY": "study_uid", "SERIES": "series_uid",
                                  "IMAGE": "sop_uid"}
_JOINS = {"STUDY": ("patient_id", "PATIENT"), "SERIES": ("study_id", "STUDY"),
          "IMAGE": ("series_id", "SERIES")}


@dataclass(frozen=True)
class _Plan:
    """What one query reads per row, worked out once: Core columns, not ORM objects.

    Row layout: ``patient id, patient key id, *clear columns, *(phi, unique key) per sealed level``.
    Only the clear columns the keys name are selected, and only the levels whose sealed values are
    needed are decrypted (measured on a 10,000-study list: ~85 attribute lookups per row were half
    of the time).
    """

    columns: tuple[Any, ...]
    clear: tuple[tuple[str, int], ...]  # keyword -> index in the row
    sealed: tuple[tuple[str, int, int, bool], ...]  # level, phi index, unique-key index, key is bytes


class QueryEngine:
    def __init__(self, sessions: sessionmaker[Session], vault: Vault, pn_ignore_case: bool = True):
        self._sessions = sessions
        self._engine = sessions.kw["bind"]
        self._vault = vault
        self._pn_ignore_case = pn_ignore_case

    def run(self, q: Query) -> Iterator[dict[str, Any]]:
        visible = levels_up_to(q.level)
        sql_filters, py_filters = [], []
        for kw, value in q.filters.items():
            attr = ATTRIBUTES.get(kw)
            if attr is None or attr.level not in visible:
                continue  # unsupported or lower-level key: no constraint, returned empty
            m = compile_matcher(kw, attr.vr, value, fuzzy=q.fuzzy, pn_ignore_case=self._pn_ignore_case)
            if m.kind == "universal":
                continue
            f = _Filter(attr, m)
            (sql_filters if self._pushable(f) else py_filters).append(f)
        keys = list(dict.fromkeys([*(UNIQUE_KEY[lvl] for lvl in visible if lvl != "PATIENT"),
                                   *q.filters, *q.return_keys]))
        plan = _plan(visible, tuple(keys))
        stmt = self._select(q, visible, sql_filters, plan)
        if not py_filters:
            stmt = stmt.offset(q.offset or None).limit(q.limit)
            with self._engine.connect() as conn:  # read all, then give the connection back
                rows = conn.execute(stmt).all()
            for row in rows:
                rec = self._record(row, plan)
                if rec is None:  # shredded under this query (issue 13): as if never there
                    continue
                out = {k: rec.get(k) for k in keys}
                out["_patient_ref"] = row[0]
                yield out
            return
        skipped = returned = 0
        with self._engine.connect() as conn:
            for row in conn.execution_options(yield_per=500).execute(stmt):
                rec = self._record(row, plan)
                if rec is None:  # shredded under this query (issue 13): as if never there
                    continue
                if not all(f.matcher(rec.get(f.attr.keyword)) for f in py_filters):
                    continue
                if skipped < q.offset:
                    skipped += 1
                    continue
                out = {k: rec.get(k) for k in keys}
                out["_patient_ref"] = row[0]
                yield out
                returned += 1
                if q.limit is not None and returned >= q.limit:
                    return

    def _pushable(self, f: _Filter) -> bool:
        col, kind = f.attr.column, f.matcher.kind
        if f.attr.where == "hashed":
            return kind == "single"
        if f.attr.where != "clear" or col in _MULTI_VALUED_COLUMNS:
            return False
        if col in _INT_COLUMNS:
            return kind == "single" and _SQL_INT.fullmatch(f.matcher.values[0]) is not None
        return kind in ("single", "list", "range")

    def _select(self, q: Query, visible: tuple[Level, ...], filters: list[_Filter], plan: _Plan
                ) -> Select:
        t = {lvl: TABLES[lvl].__table__.c for lvl in visible}  # Core columns: no ORM per row
        stmt = select(*plan.columns).select_from(TABLES["PATIENT"].__table__)
        for lvl in visible[1:]:
            fk, parent = _JOINS[lvl]
            stmt = stmt.join(TABLES[lvl].__table__, t[lvl][fk] == t[parent]["id"])
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
        if q.patient_scope is not None:
            conds.append(t["PATIENT"]["id"] == q.patient_scope)
        if q.study_scope is not None and "STUDY" in visible:
            conds.append(t["STUDY"]["study_uid"].in_(sorted(q.study_scope)))
        if conds:
            stmt = stmt.where(and_(*conds))
        # STUDY order matches ix_studies_listing (study_date, study_time, id): LIMIT needs no sort.
        order = {"PATIENT": lambda: [t["PATIENT"]["id"]],
                 "STUDY": lambda: [t["STUDY"]["study_date"].desc(), t["STUDY"]["study_time"].desc(),
                                   t["STUDY"]["id"].desc()],
                 "SERIES": lambda: [t["SERIES"]["series_number"], t["SERIES"]["id"]],
                 "IMAGE": lambda: [t["IMAGE"]["instance_number"], t["IMAGE"]["id"]]}[q.level]()
        if q.level == "SERIES":
            order = [t["STUDY"]["id"], *order]
        elif q.level == "IMAGE":
            order = [t["SERIES"]["id"], *order]
        return stmt.order_by(*order)

    def _record(self, row: Any, plan: _Plan) -> dict[str, Any] | None:
        """The row's values, decrypted; None when the patient's key is gone (shredded meanwhile)."""
        rec = {kw: row[i] for kw, i in plan.clear}
        if plan.sealed:
            key_id, unseal = row[1], self._vault.unseal
            try:
                for lvl, phi_i, uid_i, is_bytes in plan.sealed:
                    uid = row[uid_i].hex() if is_bytes else row[uid_i]
                    rec.update(unseal(key_id, phi_aad(lvl, uid), row[phi_i]))
            except NotFound:
                return None
        return rec


@functools.lru_cache(maxsize=256)
def _plan(visible: tuple[Level, ...], keys: tuple[str, ...]) -> _Plan:
    """The columns and sealed levels a query needs for ``keys`` (filters and return keys)."""
    wanted = [ATTRIBUTES[k] for k in keys if k in ATTRIBUTES and ATTRIBUTES[k].level in visible]
    patient = TABLES["PATIENT"].__table__.c
    columns: list[Any] = [patient["id"], patient["key_id"]]
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
