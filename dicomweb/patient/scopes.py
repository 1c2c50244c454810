"""Several patient records behind one DICOMweb root: which scope a request reads (issue 19).

A session holding letters from several providers, or a share covering several of a patient's
records, has one :class:`~storage.archive.Scope` per record (one patient row each). The read
services take one scope a request, so the authenticator picks it here:

* the request names a study (in the path, or ``StudyInstanceUID`` / WADO-URI ``studyUID``): the
  scope that covers it; a study no scope covers gets :data:`storage.shares.NOWHERE`, so it
  answers exactly as an unknown UID (404 or an empty search), never revealing it exists;
* a QIDO-RS search at the root (``/studies``, ``/series``, ``/instances``) naming no study: run
  once per scope and the answers concatenated (``limit``/``offset`` apply to each record);
* anything else: the first scope.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from flask import Response, abort, g, request

from storage.archive import Scope
from storage.shares import NOWHERE, study_owner

from .. import context

_ROOT_SEARCHES = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}


class Option(NamedTuple):
    scope: Scope
    actor: str


def study_named() -> str | None:
    """The Study Instance UID a request is about, if it names one."""
    found = (request.view_args or {}).get("study")
    if found:
        return str(found)
    for key in ("StudyInstanceUID", "0020000D", "studyUID"):
        value = request.args.get(key)
        if value:
            return value.replace("\\", ",").split(",")[0].strip() or None
    return None


def covers(scope: Scope, owner: int | None, study: str) -> bool:
    return owner == scope.patient_ref and (scope.study_uids is None or study in scope.study_uids)


def pick(options: list[Option], *, uncovered: Callable[[str], None] | None = None) -> Scope:
    """The scope of this request among ``options`` (sets the audit actor); may answer itself
    (a merged root search) by aborting with the response."""
    if len(options) == 1 and uncovered is None:  # the one scope answers a foreign UID as unknown
        g.pacs_actor = options[0].actor
        return options[0].scope
    study = study_named()
    if study is not None:
        owner = study_owner(context.archive(), study)
        for opt in options:
            if covers(opt.scope, owner, study):
                g.pacs_actor = opt.actor
                return opt.scope
        g.pacs_actor = options[0].actor
        if uncovered is not None:
            uncovered(study)
        return NOWHERE
    g.pacs_actor = options[0].actor
    level = _ROOT_SEARCHES.get((request.endpoint or "").rsplit(".", 1)[-1])
    if len(options) > 1 and level is not None and request.blueprint and "qido" in request.blueprint:
        abort(_merged_search(level, options))
    return options[0].scope


def _merged_search(level: str, options: list[Option]) -> Response:
    from .. import qido

    items: list[Any] = []
    last: Response | None = None
    for opt in options:
        g.pacs_scope, g.pacs_actor = opt.scope, opt.actor
        last = qido.search(level, {})  # type: ignore[arg-type]
        items.extend(json.loads(last.get_data() or b"[]"))
    assert last is not None
    resp = Response(json.dumps(items), status=200, content_type=last.content_type)
    if "Warning" in last.headers:
        resp.headers["Warning"] = last.headers["Warning"]
    resp.headers["Cache-Control"] = "no-store"
    return resp
