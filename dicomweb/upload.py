"""The provider's upload page (issue 5 part 2): add documents, photos, videos and notes to a study.

``GET {prefix}/`` is a plain HTML page (``templates/upload.html`` + ``static/upload.js``): pick a
patient (search by ID through QIDO-RS ``/studies?PatientID=``) or type ID and name for a new one,
choose one of their studies or a new one, drop files; each file is sent alone to
``POST {prefix}/files`` and shown stored or refused with the reason.

The POST calls :func:`storage.ingest.attach` (the one artifact ingest path). CSRF: the page uses
``fetch`` with the custom header ``X-PACS-Upload: 1``, which a cross-site form cannot send and a
cross-origin script cannot send without a CORS preflight we never grant; a POST without it, or
with an ``Origin`` other than this host, is refused (403). Needs ``write`` scope.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, jsonify, render_template, request, send_file

from storage import metrics
from storage.artifacts import ArtifactError, ArtifactTooLarge, UnsupportedArtifact
from storage.errors import ArchiveError, NotFound
from storage.ingest import attach_all, describe
from storage.spool import EncryptedSpool

from .auth import check_scope
from .context import (
    Authenticate,
    actor,
    archive,
    client_address,
    provider,
    service_blueprint,
    settings,
)

CSRF_HEADER = "X-PACS-Upload"
_STATIC = Path(__file__).parent / "static"


def _refuse(code: int, reason: str) -> tuple[Response, int]:
    return jsonify(status="refused", error=reason), code


def _same_origin() -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin.rstrip("/") == request.host_url.rstrip("/")


def page() -> str:
    return render_template("upload.html", dicomweb_root=request.script_root + settings().dicomweb_root,
                           max_bytes=settings().max_upload_bytes)


def script() -> Response:
    resp = send_file(_STATIC / "upload.js", mimetype="text/javascript", max_age=0)
    return resp


def upload_file() -> tuple[Response, int]:
    """Store one file for a patient (multipart/form-data field ``file``), answered in JSON."""
    check_scope("write")
    if request.headers.get(CSRF_HEADER) != "1" or not _same_origin():
        return _refuse(403, f"missing {CSRF_HEADER} header or cross-origin request")
    limit = settings().max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        return _refuse(413, f"the file is over the limit of {limit} bytes")
    upload = request.files.get("file")
    if upload is None:
        return _refuse(400, "no file in the request (form field 'file')")
    form = request.form
    store_in = archive()  # (made first: it makes <data_dir>/tmp, where the spool may roll over)
    spool = EncryptedSpool(dir=settings().data_dir / "tmp")  # long videos stay out of memory
    try:
        while chunk := upload.stream.read(1 << 20):
            spool.write(chunk)
            if spool.tell() > limit:
                return _refuse(413, f"the file is over the limit of {limit} bytes")
        spool.seek(0)
        results = attach_all(
            store_in, spool.as_file(), filename=upload.filename or None,
            patient_id=form.get("patient_id", ""), patient_name=form.get("patient_name") or None,
            issuer=form.get("issuer", ""), birth_date=form.get("birth_date", ""),
            sex=form.get("sex", ""), study_uid=form.get("study_uid") or None,
            new_study_description=form.get("description") or None,
            title=form.get("title") or None, media_type=upload.mimetype or None,
            about=form.get("about") or None,
            actor=actor(), origin=client_address(), max_size=limit, provider=provider())
    except ArtifactTooLarge as exc:
        return _refuse(413, str(exc))
    except UnsupportedArtifact as exc:
        return _refuse(415, str(exc))
    except ArtifactError as exc:
        return _refuse(400, str(exc))
    except NotFound as exc:
        return _refuse(404, str(exc))
    except ArchiveError as exc:
        from .errors import status_of

        return _refuse(status_of(exc) or 400, str(exc))
    finally:
        spool.close()
    metrics.stored("upload", len(results))
    answer = describe(results[0])
    if len(results) > 1:  # a multi-page scan: one object per page, page 1 first
        answer["pages"] = [describe(r) for r in results]
    return jsonify(answer), 200


def make_blueprint(name: str, authenticate: Authenticate, url_prefix: str = "/upload") -> Blueprint:
    """GET {prefix}/ (the page), {prefix}/upload.js, POST {prefix}/files (one artifact each)."""
    bp = service_blueprint(name, __name__, authenticate, url_prefix)
    bp.template_folder = "templates"
    bp.add_url_rule("/", "page", page, methods=["GET"])
    bp.add_url_rule("/upload.js", "script", script, methods=["GET"])
    bp.add_url_rule("/files", "files", upload_file, methods=["POST"])
    return bp
