"""``GET {dicomweb_root}/openapi.json``: an OpenAPI 3.1 description of the provider DICOMweb API.

The paths are read from the application's own route table (``app.url_map``) when the description is
first asked for, so a new route cannot be missing from it; what each one means (summary, query
parameters, media types, statuses) is written down here, per view, from PS3.18: QIDO-RS (10.6),
WADO-RS (10.4), STOW-RS (10.5), WADO-URI (9) and DELETE (the Orthanc/dcm4chee extension). Patient
routes (``/letters/...``) are left out: they are the same services under a letter's Basic credentials.
The description itself carries no data and needs no credentials.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue

DICOM_JSON = "application/dicom+json"
MULTIPART = "multipart/related"

_UID = {"type": "string", "pattern": r"^[0-9.]{1,64}$", "maxLength": 64}
_PATH_PARAMS: dict[str, dict[str, Any]] = {
    "study": {"description": "Study Instance UID", "schema": _UID},
    "series": {"description": "Series Instance UID", "schema": _UID},
    "sop": {"description": "SOP Instance UID", "schema": _UID},
    "instance": {"description": "SOP Instance UID", "schema": _UID},
    "frames": {"description": "frame numbers, 1-based, comma separated (PS3.18 10.4.1.1.3)",
               "schema": {"type": "string", "pattern": r"^[0-9]+(,[0-9]+)*$"}},
    "tagpath": {"description": "attribute tag path of the bulk data (e.g. 7FE00010)",
                "schema": {"type": "string"}},
}
_QIDO_KEYS = ["PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyDate",
              "StudyTime", "StudyDescription", "ModalitiesInStudy", "StudyInstanceUID", "Modality",
              "SeriesInstanceUID", "SeriesNumber", "SOPInstanceUID", "SOPClassUID", "InstanceNumber"]
_QIDO_PARAMS = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    {"name": "fuzzymatching", "in": "query", "schema": {"type": "boolean"}},
    {"name": "includefield", "in": "query", "description": "keywords or tags, comma separated, or all",
     "schema": {"type": "array", "items": {"type": "string"}}, "style": "form", "explode": True},
    *({"name": k, "in": "query", "description": "matching key (PS3.4 C.2.2.2): single value, "
       "wildcards * ?, ranges A-B, UID lists", "schema": {"type": "string"}} for k in _QIDO_KEYS),
]
_RENDER_PARAMS = [
    {"name": "window", "in": "query", "description": "center,width,function (PS3.18 8.3.5.1.3)",
     "schema": {"type": "string"}},
    {"name": "viewport", "in": "query", "description": "vw,vh[,sx,sy,sw,sh]", "schema": {"type": "string"}},
    {"name": "quality", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
]
_WADO_URI_PARAMS = [
    {"name": "requestType", "in": "query", "required": True, "schema": {"type": "string", "enum": ["WADO"]}},
    {"name": "studyUID", "in": "query", "required": True, "schema": _UID},
    {"name": "seriesUID", "in": "query", "required": True, "schema": _UID},
    {"name": "objectUID", "in": "query", "required": True, "schema": _UID},
    {"name": "contentType", "in": "query", "schema": {"type": "string"}},
    {"name": "transferSyntax", "in": "query", "schema": _UID},
    {"name": "frameNumber", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "rows", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "columns", "in": "query", "schema": {"type": "integer", "minimum": 1}},
    {"name": "windowCenter", "in": "query", "schema": {"type": "number"}},
    {"name": "windowWidth", "in": "query", "schema": {"type": "number"}},
]
_ERROR = {"description": "refused, with a reason", "content": {"text/plain": {"schema": {"type": "string"}},
                                                              "application/json": {"schema": {}}}}
_REFUSALS = {"400": _ERROR, "401": _ERROR, "403": _ERROR, "404": _ERROR, "406": _ERROR}


def _operation(endpoint: str, method: str) -> dict[str, Any]:
    """What the view ``endpoint`` does for ``method`` (summary, parameters, request, responses)."""
    service, _, view = endpoint.partition(".")
    op: dict[str, Any] = {"operationId": f"{endpoint}.{method}".replace(".", "_"), "tags": [service]}
    if service == "qido":
        op.update(summary=f"QIDO-RS: search for {view.rsplit('_', 1)[-1]} (PS3.18 10.6)",
                  parameters=list(_QIDO_PARAMS),
                  responses={"200": {"description": "matches", "content": {DICOM_JSON: {"schema": {
                      "type": "array", "items": {"type": "object"}}}}},
                      "204": {"description": "no match"}, **_REFUSALS})
    elif service == "metadata":
        op.update(summary=f"WADO-RS: {view} metadata (PS3.18 10.4.1.1.2)", responses={
            "200": {"description": "DICOM JSON", "content": {DICOM_JSON: {"schema": {"type": "array"}}}},
            **_REFUSALS})
    elif service == "wado" and ("rendered" in view or "thumbnail" in view):
        op.update(summary=f"WADO-RS: {view.replace('_', ' ')} (PS3.18 10.4.1.1.4)",
                  parameters=list(_RENDER_PARAMS) if "rendered" in view else [],
                  responses={"200": {"description": "an image", "content": {
                      "image/jpeg": {}, "image/png": {}, "image/gif": {}}}, **_REFUSALS})
    elif service == "wado":
        op.update(summary=f"WADO-RS: retrieve {view} (PS3.18 10.4)", parameters=[
            {"name": "accept", "in": "query", "description": "media type, instead of Accept",
             "schema": {"type": "string"}}],
            responses={"200": {"description": "the objects, frames or bulk data", "content": {
                MULTIPART: {}, "application/zip": {}, "application/octet-stream": {}}}, **_REFUSALS})
    elif service == "stow":
        op.update(summary="STOW-RS: store instances (PS3.18 10.5)", requestBody={
            "required": True, "content": {
                f'{MULTIPART}; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}},
                f'{MULTIPART}; type="{DICOM_JSON}"': {"schema": {"type": "string", "format": "binary"}},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}}}},
            responses={s: {"description": d, "content": {DICOM_JSON: {"schema": {"type": "object"}}}}
                       for s, d in (("200", "all stored"), ("202", "some stored, some failed"),
                                    ("409", "none stored"))} | {
                "400": _ERROR, "401": _ERROR, "403": _ERROR, "413": _ERROR, "415": _ERROR})
    elif service == "delete":
        op.update(summary=f"delete a {view.removeprefix('delete_')} (needs a write token)",
                  responses={"200": {"description": "deleted"}, "204": {"description": "deleted"},
                             **_REFUSALS})
    elif service == "wadouri":
        op.update(summary="WADO-URI (PS3.18 9)", parameters=list(_WADO_URI_PARAMS), responses={
            "200": {"description": "the object or an image", "content": {
                "application/dicom": {}, "image/jpeg": {}, "image/png": {}}}, **_REFUSALS})
    else:
        op.update(summary=view, responses={"200": {"description": "ok"}, **_REFUSALS})
    return op


def describe(app: Flask) -> dict[str, Any]:
    """The OpenAPI document for every provider route under the DICOMweb root."""
    root = "/" + app.config["PACS_SETTINGS"].dicomweb_root.strip("/")
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(root + "/") or rule.endpoint.startswith("openapi."):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        item = paths.setdefault(path, {})
        params = [{"name": name, "in": "path", "required": True, **_PATH_PARAMS.get(
            name, {"schema": {"type": "string"}})} for name in re.findall(r"{([^}]+)}", path)]
        if params:
            item["parameters"] = params
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            item[method.lower()] = _operation(rule.endpoint, method.lower())
    return {
        "openapi": "3.1.0",
        "info": {"title": "pacs DICOMweb API", "version": "1",
                 "description": "QIDO-RS, WADO-RS, STOW-RS, WADO-URI and DELETE (PS3.18). From the "
                 "server's own machine no credentials are needed; otherwise a bearer token "
                 "(`pacs token create`)."},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": dict(sorted(paths.items())),
    }


def make_blueprint(name: str, url_prefix: str) -> Blueprint:
    bp = Blueprint(name, __name__, url_prefix=url_prefix)

    @bp.get("/openapi.json")
    def openapi() -> ResponseReturnValue:
        doc = current_app.extensions.get("openapi")
        if doc is None:
            doc = current_app.extensions["openapi"] = describe(current_app)
        return jsonify(doc)

    return bp
