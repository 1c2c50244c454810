"""DELETE of studies, series and instances (not in PS3.18; as Orthanc's REST API and dcm4chee's
reject-and-delete). Needs an ``admin`` token (or the loopback exemption); never for patient scopes.

``DELETE {root}/studies/{s}[/series/{r}[/instances/{i}]]`` -> 204 on success, 404 if unknown.
The archive removes index rows and blobs and writes the audit event.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort

from . import context
from .auth import require_scope


def make_blueprint(name: str, authenticate: context.Authenticate, url_prefix: str) -> Blueprint:
    bp = context.service_blueprint(name, __name__, authenticate, url_prefix)

    @bp.delete("/studies/<study>")
    @require_scope("admin")
    def delete_study(study: str) -> Response:
        return _delete(study)

    @bp.delete("/studies/<study>/series/<series>")
    @require_scope("admin")
    def delete_series(study: str, series: str) -> Response:
        return _delete(study, series)

    @bp.delete("/studies/<study>/series/<series>/instances/<instance>")
    @require_scope("admin")
    def delete_instance(study: str, series: str, instance: str) -> Response:
        return _delete(study, series, instance)

    return bp


def _delete(study: str, series: str | None = None, instance: str | None = None) -> Response:
    scope = context.scope()
    if scope is not None and scope.patient_ref is not None:  # a patient's letter: never
        abort(403)
    context.archive().delete(study, series, instance, actor=context.actor(),
                             origin=context.client_address(), scope=scope)
    return Response(status=204)
