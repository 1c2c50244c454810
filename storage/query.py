"""The one query engine: C-FIND (pacs/) and QIDO-RS (dicomweb/) both build a :class:`Query` and call
:meth:`QueryEngine.run`, which yields one ``{keyword: value}`` dict per match.

How matching works on encrypted values (issue 3, part 3): every filter is compiled once
(:mod:`storage.matching`). Filters on clear columns (UIDs, dates, modality) and exact matches on
identifiers with a keyed-hash column (PatientID, AccessionNumber) run in SQL; everything else
(names, descriptions, wildcards) runs in Python on the decrypted ``phi`` values of the rows SQL
returns, with decryption cached in memory by ciphertext (see ``Vault.unseal``). Paging is pushed
into SQL when no filter is left for Python; otherwise rows stream (``yield_per``) and are paged after
matching, so ``offset``/``limit`` are always exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, select
from sqlalchemy.orm import Session, sessionmaker

from .attributes import ATTRIBUTES, LEVELS, UNIQUE_KEY, Attr, Level, levels_up_to
from .errors import BadInput
from .index.models import Instance, Patient, Series, Study
from .matching import Matcher, compile_matcher
from .vault import Vault

TABLES = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}
_MULTI_VALUED_COLUMNS = {"modalities", "sop_classes"}
_INT_COLUMNS = {"series_number", "instance_number", "number_of_frames", "rows", "columns",
                "num_studies", "num_series", "num_instances"}


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


class QueryEngine:
    def __init__(self, sessions: sessionmaker[Session], vault: Vault, pn_ignore_case: bool = True):
        self._sessions = sessions
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
            if attr.where == "hashed" and m.kind != "single":
                pass  # wildcard on an identifier: Python only
        keys = list(dict.fromkeys([*(UNIQUE_KEY[lvl] for lvl in visible if lvl != "PATIENT"),
                                   *q.filters, *q.return_keys]))
        need_phi = {lvl for lvl in visible
                    if any(ATTRIBUTES[k].where != "clear" for k in keys
                           if k in ATTRIBUTES and ATTRIBUTES[k].level == lvl)
                    or any(f.attr.where != "clear" and f.attr.level == lvl for f in py_filters)}

        stmt = self._select(q, visible, sql_filters)
        if not py_filters:
            stmt = stmt.offset(q.offset or None).limit(q.limit)
        skipped = returned = 0
        with self._sessions() as s:
            for row in s.execute(stmt.execution_options(yield_per=500)):
                rec = self._record(row, visible, need_phi)
                if not all(f.matcher(rec.get(f.attr.keyword)) for f in py_filters):
                    continue
                if py_filters and skipped < q.offset:
                    skipped += 1
                    continue
                out = {k: rec.get(k) for k in keys}
                out["_patient_ref"] = rec["_patient_ref"]
                yield out
                returned += 1
                if py_filters and q.limit is not None and returned >= q.limit:
                    return

    def _pushable(self, f: _Filter) -> bool:
        col, kind = f.attr.column, f.matcher.kind
        if f.attr.where == "hashed":
            return kind == "single"
        if f.attr.where != "clear" or col in _MULTI_VALUED_COLUMNS:
            return False
        if col in _INT_COLUMNS:
            return kind == "single" and f.matcher.values[0].lstrip("-").isdigit()
        return kind in ("single", "list", "range")

    def _select(self, q: Query, visible: tuple[Level, ...], filters: list[_Filter]) -> Select:
        tables = [TABLES[lvl] for lvl in visible]
        stmt = select(*tables)
        joins = {"STUDY": Study.patient_id == Patient.id, "SERIES": Series.study_id == Study.id,
                 "IMAGE": Instance.series_id == Series.id}
        stmt = select(*tables).select_from(Patient)
        for lvl in visible[1:]:
            stmt = stmt.join(TABLES[lvl], joins[lvl])
        conds = []
        for f in filters:
            table = TABLES[f.attr.level]
            m = f.matcher
            if f.attr.where == "hashed":
                label = "pid" if f.attr.keyword == "PatientID" else f.attr.keyword
                conds.append(getattr(table, f.attr.column) == self._vault.blind(label, m.values[0]))
                continue
            col = getattr(table, f.attr.column)
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
            conds.append(Patient.id == q.patient_scope)
        if q.study_scope is not None and "STUDY" in visible:
            conds.append(Study.study_uid.in_(sorted(q.study_scope)))
        if conds:
            stmt = stmt.where(and_(*conds))
        order = {"PATIENT": [Patient.id], "STUDY": [Study.study_date.desc(), Study.study_time.desc(), Study.id.desc()],
                 "SERIES": [Series.series_number, Series.id],
                 "IMAGE": [Instance.instance_number, Instance.id]}[q.level]
        if q.level != "STUDY" and "STUDY" in visible:
            order = [Study.id, *order] if q.level == "SERIES" else [Series.id, *order]
        return stmt.order_by(*order)

    def _record(self, row: Any, visible: tuple[Level, ...], need_phi: set[str]) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        patient = row[0]
        rec["_patient_ref"] = patient.id
        for lvl, obj in zip(visible, row, strict=True):
            for attr in ATTRIBUTES.values():
                if attr.level == lvl and attr.where == "clear":
                    rec[attr.keyword] = getattr(obj, attr.column)
            if lvl in need_phi:
                rec.update(self._vault.unseal(patient.key_id, phi_where(lvl, obj), obj.phi))
        return rec


def phi_where(level: str, obj: Any) -> str:
    """Associated data for a row's sealed phi: binds it to its table and unique key."""
    uid = {"PATIENT": lambda o: o.pid_hash.hex(), "STUDY": lambda o: o.study_uid,
           "SERIES": lambda o: o.series_uid, "IMAGE": lambda o: o.sop_uid}[level](obj)
    return f"{level}|{uid}"
