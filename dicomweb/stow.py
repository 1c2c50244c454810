"""STOW-RS (PS3.18 10.5): store instances sent as ``multipart/related`` over HTTP.

``POST {root}/studies`` and ``POST {root}/studies/{study}``, with either

* ``multipart/related; type="application/dicom"``: each part a DICOM Part 10 object, stored as
  received;
* ``multipart/related; type="application/dicom+json"`` (PS3.18 10.5.1.2.2, as dcm4chee accepts it):
  a part holding a JSON array of datasets (PS3.18 F.2) whose BulkDataURI values name other parts by
  their Content-Location; see :func:`store_json_request` for how an object is built from them; or
* a single ``application/dicom`` body, one instance and no multipart, as the Google and Microsoft
  cloud DICOM services accept it (``curl -H 'Content-Type: application/dicom' --data-binary @f.dcm``):
  the same path, response and failure semantics as a one-part multipart request.

Every object goes through :meth:`Archive.store_many`. The body is decoded part by part
(:func:`dicomweb.multipart.decode`: a small part in memory, a large one in an encrypted spool); DICOM
parts are stored as they arrive, so a request is never held in memory. A bad part fails alone (FailedSOPSequence
with a FailureReason) while the others are stored. The answer (PS3.18 10.5.3) is
``application/dicom+json``: 200 all stored, 202 some failed, 409 none stored; 400 for a malformed
body, 413 over ``max_upload_bytes``, 415 for another media type.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

import pydicom
from flask import Blueprint, Response, abort, request
from pydicom.uid import JPEGBaseline8Bit

from storage import metrics
from storage.archive import StoreResult
from storage.errors import ArchiveError, BadInput, Conflict, Duplicate, StorageFull, StudyMismatch
from storage.spool import EncryptedSpool

from .auth import require_scope
from .context import (
    Authenticate,
    actor,
    archive,
    client_address,
    provider,
    service_blueprint,
    service_root,
    settings,
)
from .mediatypes import DICOM, DICOM_JSON, UnsupportedMediaType, parse_content_type
from .multipart import MultipartError, Part, PayloadTooLarge, decode

log = logging.getLogger(__name__)

# Failure reasons (PS3.18 10.5.3.2 refers to the C-STORE statuses of PS3.4 Annex B.2.3).
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
STUDY_UID_MISMATCH = 0xC409  # a Cxxx "cannot understand" code, as dcm4chee-arc answers it
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122

_METRIC_REASON = {OUT_OF_RESOURCES: "out_of_resources", DUPLICATE_SOP: "duplicate",
                  STUDY_UID_MISMATCH: "study_mismatch", CANNOT_UNDERSTAND: "bad_input",
                  DATASET_MISMATCH: "bad_input", SOP_CLASS_NOT_SUPPORTED: "bad_input"}
_REFERENCED_SOP_SEQ = "00081199"
_FAILED_SOP_SEQ = "00081198"
_RETRIEVE_URL = "00081190"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"


class Outcome:
    """What happened to the parts of one request, as the PS3.18 10.5.3 response dataset."""

    def __init__(self, url_study: str | None) -> None:
        self.url_study = url_study
        self.stored: list[StoreResult] = []
        self.failed: list[tuple[str, str, int, str]] = []

    def ok(self, result: StoreResult) -> None:
        self.stored.append(result)

    def fail(self, sop_class: str, sop_uid: str, reason: int, why: str) -> None:
        log.info("STOW part refused: %04X %s", reason, why)
        self.failed.append((sop_class, sop_uid, reason, why))

    def status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def body(self) -> dict[str, Any]:
        root = service_root()
        out: dict[str, Any] = {}
        studies = {r.study_uid for r in self.stored}
        study = self.url_study or (studies.pop() if len(studies) == 1 else None)
        if study:
            out[_RETRIEVE_URL] = {"vr": "UR", "Value": [f"{root}/studies/{study}"]}
        if self.failed:
            out[_FAILED_SOP_SEQ] = {"vr": "SQ", "Value": [_failed_item(*f) for f in self.failed]}
        if self.stored:
            out[_REFERENCED_SOP_SEQ] = {"vr": "SQ", "Value": [
                _referenced_item(r, root) for r in self.stored]}
        return out


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _failed_item(sop_class: str, sop_uid: str, reason: int, why: str) -> dict[str, Any]:
    return {_SOP_CLASS: _ui(sop_class), _SOP_INSTANCE: _ui(sop_uid),
            _FAILURE_REASON: {"vr": "US", "Value": [reason]},
            "00000902": {"vr": "LO", "Value": [why[:64]]}}


def _referenced_item(r: StoreResult, root: str) -> dict[str, Any]:
    item = {_SOP_CLASS: _ui(r.sop_class_uid), _SOP_INSTANCE: _ui(r.sop_instance_uid),
            _RETRIEVE_URL: {"vr": "UR", "Value": [
                f"{root}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_instance_uid}"]}}
    return item


def reason_of(exc: BaseException) -> int:
    """FailureReason for an error raised while storing one part."""
    if isinstance(exc, StorageFull):
        return OUT_OF_RESOURCES
    if isinstance(exc, Duplicate):
        return DUPLICATE_SOP
    if isinstance(exc, StudyMismatch):
        return STUDY_UID_MISMATCH
    if isinstance(exc, Conflict):
        return DATASET_MISMATCH
    if isinstance(exc, BadInput | ValueError):
        return CANNOT_UNDERSTAND
    return PROCESSING_FAILURE


def with_preamble(fp: Any) -> Any:
    """The part as a PS3.10 file: a body that starts with the File Meta group but lacks the
    128-byte preamble and ``DICM`` (as pydicom's ``dcmwrite`` writes it for dicomweb-client)
    gets a zero preamble prepended; any other body is returned unchanged."""
    fp.seek(0)
    head = fp.read(132)
    fp.seek(0)
    if head[128:132] == b"DICM" or not head.startswith(b"\x02\x00") or not head[4:6].isalpha():
        return fp
    if isinstance(fp, io.BytesIO):  # a small part, in memory already
        out: Any = io.BytesIO(b"\0" * 128 + b"DICM" + fp.getvalue())
        fp.close()
        return out
    out = EncryptedSpool(max_size=1 << 20)  # closed by the caller; plaintext never on disk
    out.write(b"\0" * 128 + b"DICM")
    shutil.copyfileobj(fp, out, 1 << 20)
    out.seek(0)
    fp.close()
    return out


def store_dicom_parts(parts: Iterator[Part], outcome: Outcome) -> None:
    """Store ``application/dicom`` parts as received (PS3.18 10.5.1.2.1), indexed in one transaction.

    Parts stream: each is handed to ``archive.store_many`` and released before the next one is read
    from the request body. The archive parses each part once: it refuses a part of another study
    than the URL's (PS3.18 10.5.1) and names every part it refuses by its UIDs, for the
    FailedSOPSequence.
    """

    def bodies() -> Iterator[Any]:
        for part in parts:
            try:
                if part.media_type != DICOM:
                    outcome.fail("", "", CANNOT_UNDERSTAND, f"part is {part.media_type}, not {DICOM}")
                    continue
                part.body = with_preamble(part.body)
                yield part.body
            finally:
                part.close()

    results = archive().store_many(bodies(), actor=actor(), origin=client_address(),
                                   study_uid=outcome.url_study, provider=provider())
    for result in results:
        if isinstance(result, ArchiveError):
            outcome.fail(result.sop_class_uid, result.sop_instance_uid, reason_of(result), str(result))
        else:
            outcome.ok(result)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body over the limit of {limit} bytes")


def _upload_limit() -> int:
    """``max_upload_bytes``, after refusing a body whose declared length is already over it."""
    limit = settings().max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    return limit


def _parts() -> Iterator[Part]:
    limit = _upload_limit()
    return decode(request.stream, request.headers.get("Content-Type", ""),
                  max_part_size=limit, max_total=limit)


def _single_body() -> Iterator[Part]:
    """The request body itself as the one ``application/dicom`` part (a cloud-service client).

    It is copied into an encrypted spool (in memory up to 1 MiB), so the body is never held whole
    in memory nor written in clear, and no more than ``max_upload_bytes`` is read.
    """
    limit = _upload_limit()
    spool = EncryptedSpool(max_size=1 << 20)
    try:
        total = 0
        while chunk := request.stream.read(1 << 20):
            total += len(chunk)
            if total > limit:
                raise _too_large(limit)
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    yield Part.make(spool, DICOM)


def stow(study: str | None = None) -> Response:
    """Store the parts of a STOW-RS request (PS3.18 10.5)."""
    media_type, params = parse_content_type(request.headers.get("Content-Type"))
    outcome = Outcome(study)
    if media_type == DICOM:
        store_dicom_parts(_single_body(), outcome)
        return _answer(outcome)
    if media_type != "multipart/related":
        raise UnsupportedMediaType(f"STOW-RS takes multipart/related or {DICOM}, "
                                   f"not {media_type or 'nothing'}")
    root_type = (params.get("type") or "").lower()
    if root_type not in (DICOM, DICOM_JSON):
        raise UnsupportedMediaType(
            f"multipart type {root_type or '(none)'} is not supported: use {DICOM} or {DICOM_JSON}")
    if root_type == DICOM:
        store_dicom_parts(_parts(), outcome)
    else:
        store_json_request(list(_parts()), outcome, study)
    return _answer(outcome)


def _answer(outcome: Outcome) -> Response:
    """The PS3.18 10.5.3 response: 200, 202 or 409 with the stored and failed instances."""
    if not outcome.stored and not outcome.failed:
        abort(400, "the request holds no instances")
    metrics.stored("stow", len(outcome.stored))
    for _, _, reason, _ in outcome.failed:
        metrics.refused("stow", _METRIC_REASON.get(reason, "processing_failure"))
    body = json.dumps(outcome.body()).encode()
    resp = Response(body, status=outcome.status())
    resp.headers["Content-Type"] = DICOM_JSON  # exactly: dicomweb-client parses nothing else
    return resp


# -- application/dicom+json with bulk data (PS3.18 10.5.1.2.2) -------------------------------------

_BULK_TAGS = ("7FE00010", "00420011")  # PixelData, EncapsulatedDocument
_ARTIFACT_SKIP_GROUPS = (0x0028, 0x7FE0, 0x0042)
_ARTIFACT_SKIP = {"SOPClassUID", "NumberOfFrames", "FrameTime", "CineRate", "FrameIncrementPointer",
                  "ReferencedStudySequence"}
_PAGE_OWN = {"SOPInstanceUID", "InstanceNumber"}
_JPEG_BASELINE = JPEGBaseline8Bit
_JSON_TYPES = (DICOM_JSON, "application/json")


def store_json_request(parts: list[Part], outcome: Outcome, study: str | None) -> None:
    """Build and store one object per dataset of the JSON part(s) (PS3.18 10.5.1.2.2).

    BulkDataURI values name other parts by Content-Location. When PixelData or EncapsulatedDocument
    refers to a part of a media type :mod:`storage.artifacts` knows (application/pdf, image/jpeg,
    video/mp4, ...) and without a ``transfer-syntax`` parameter, the object is made by
    :func:`storage.artifacts.encapsulate` (a complete IOD: pixel description probed from the
    bytes) and the JSON attributes are laid over it, except the SOP Class, the bulk data and the
    image pixel description. Otherwise it is built from the JSON by pydicom alone, the transfer
    syntax from the bulk part's ``transfer-syntax`` parameter (Explicit VR Little Endian if none).
    """
    try:
        bulk = {_location(p): p for p in parts if p.media_type not in _JSON_TYPES}
        datasets: list[dict[str, Any]] = []
        for p in parts:
            if p.media_type in _JSON_TYPES:
                try:
                    doc = json.loads(p.read())
                except (ValueError, UnicodeDecodeError):
                    outcome.fail("", "", CANNOT_UNDERSTAND, "a metadata part is not valid JSON")
                    continue
                items = doc if isinstance(doc, list) else [doc]
                good = [d for d in items if isinstance(d, dict)]
                datasets += good
                for _ in range(len(items) - len(good)):
                    outcome.fail("", "", CANNOT_UNDERSTAND, "a metadata item is not a dataset")
        for item in datasets:
            _store_json_item(item, bulk, outcome, study)
    finally:
        for p in parts:
            p.close()


def _file_of(part: Part) -> BinaryIO:
    """A decoded part's body: a seekable file at offset 0 (dicomweb.multipart.Part)."""
    return cast(BinaryIO, part.body)


def _location(part: Part) -> str:
    return (part.content_location or "").strip().strip("<>")


def _value(item: dict[str, Any], tag: str) -> str:
    """The first value of ``tag`` as text; "" when the item's JSON is not shaped as PS3.18 F.2 says
    (found by fuzzing: a list or a string where an attribute object belongs answered 500)."""
    attr = item.get(tag)
    values = attr.get("Value") if isinstance(attr, dict) else None
    if not isinstance(values, list) or not values:
        return ""
    v = values[0]
    if isinstance(v, dict):  # PN
        v = v.get("Alphabetic", "")
    return str(v or "")[:64]


def _bulk_refs(item: dict[str, Any]) -> dict[str, str]:
    """Tag -> the part its BulkDataURI names."""
    return {tag: str(attr["BulkDataURI"]).strip("<>") for tag, attr in item.items()
            if isinstance(attr, dict) and "BulkDataURI" in attr}


def _store_json_item(item: dict[str, Any], bulk: dict[str, Part], outcome: Outcome,
                     study: str | None) -> None:
    sop_class, sop_uid = _value(item, "00080016"), _value(item, "00080018")
    item_study = _value(item, "0020000D")
    if study and item_study and item_study != study:
        outcome.fail(sop_class, sop_uid, STUDY_UID_MISMATCH,
                     "StudyInstanceUID differs from the study in the URL")
        return
    refs = _bulk_refs(item)
    missing = [uri for uri in refs.values() if uri not in bulk]
    if missing:
        outcome.fail(sop_class, sop_uid, CANNOT_UNDERSTAND,
                     "BulkDataURI names no part of the request")
        return
    from storage.artifacts import streamed_video_kind

    spools: list[EncryptedSpool] = []
    try:
        media, data_part = _artifact_part(refs, bulk)
        video = streamed_video_kind(_file_of(data_part), None, media) if data_part is not None else None
        bodies: list[tuple[pydicom.Dataset, Any, str]] = []
        if data_part is not None and video:
            ds, spool = _video_from_artifact(item, refs, data_part, video, study, spools)
            bodies.append((ds, spool, _media_of(ds)))
        else:
            if data_part is not None:
                objects = _from_artifact(item, refs, data_part, media, study)
            else:
                objects = [_from_json(item, refs, bulk, study)]
            for ds in objects:
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                bodies.append((ds, buf.getvalue(), _media_of(ds) if data_part is not None else ""))
    except ArchiveError as exc:
        _close(spools)
        outcome.fail(sop_class, sop_uid, reason_of(exc), str(exc))
        return
    except Exception as exc:  # pydicom/artifact errors: this item fails alone
        from storage.artifacts import ArtifactTooLarge

        _close(spools)
        reason = OUT_OF_RESOURCES if isinstance(exc, ArtifactTooLarge) else DATASET_MISMATCH
        outcome.fail(sop_class, sop_uid, reason, f"cannot build the object: {exc}")
        return
    try:
        _store_bodies(bodies, outcome)
    finally:
        _close(spools)


def _close(spools: list[EncryptedSpool]) -> None:
    for spool in spools:
        spool.close()


def _store_bodies(bodies: list[tuple[pydicom.Dataset, Any, str]], outcome: Outcome) -> None:
    """Store the pages of one multi-page image, or one object; the first failure ends it."""
    for ds, body, content_type in bodies:
        try:
            result = archive().store(body, actor=actor(), origin=client_address(),
                                     content_type=content_type, provider=provider())
        except ArchiveError as exc:
            outcome.fail(str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                         reason_of(exc), str(exc))
            return
        except Exception:  # this item fails alone; details only in the server log
            log.exception("STOW-RS: storing a JSON item failed")
            outcome.fail(str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")),
                         PROCESSING_FAILURE, "internal error while storing")
            return
        outcome.ok(result)


def _media_of(ds: pydicom.Dataset) -> str:
    from storage.ingest import stored_media_type

    return stored_media_type(ds)


def _artifact_part(refs: dict[str, str], bulk: dict[str, Part]) -> tuple[str, Part | None]:
    from storage.artifacts import SUPPORTED_MEDIA_TYPES
    from storage.artifacts.detect import normalize_media_type

    for tag in _BULK_TAGS:
        if tag in refs:
            part = bulk[refs[tag]]
            media = normalize_media_type(part.media_type or "")
            if media in SUPPORTED_MEDIA_TYPES and not part.transfer_syntax:
                return media, part
    return "", None


def _without(item: dict[str, Any], tags: set[str]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in tags}


def _about(meta: pydicom.Dataset, patient: Any) -> str | None:
    """The study a Referenced Study Sequence item names, checked to be this patient's."""
    from storage.errors import NotFound
    from storage.ingest import check_about

    items = meta.get("ReferencedStudySequence") or []
    uid = str(items[0].get("ReferencedSOPInstanceUID", "") or "") if items else ""
    if not uid:
        return None
    try:
        ref = archive().find_patient(patient.patient_id, patient.issuer_of_patient_id, provider())
    except NotFound:
        ref = None
    return check_about(archive(), uid, ref)


class _ArtifactContext:
    """What the JSON of an artifact item says: the attributes to lay over the object made from the
    bulk part, the patient and study, the title, and the study it is about (checked)."""

    def __init__(self, item: dict[str, Any], refs: dict[str, str], study: str | None) -> None:
        from storage.artifacts import PatientInfo, StudyInfo

        meta = pydicom.Dataset.from_json(_without(item, set(refs)))
        self.meta = meta
        self.patient = PatientInfo(
            str(meta.get("PatientID", "") or ""), str(meta.get("PatientName", "") or ""),
            str(meta.get("IssuerOfPatientID", "") or ""),
            str(meta.get("PatientBirthDate", "") or ""), str(meta.get("PatientSex", "") or ""))
        self.study = StudyInfo(str(meta.get("StudyInstanceUID", "") or "") or study or None,
                               study_description=str(meta.get("StudyDescription", "") or ""),
                               accession_number=str(meta.get("AccessionNumber", "") or ""),
                               study_date=str(meta.get("StudyDate", "") or ""),
                               study_time=str(meta.get("StudyTime", "") or ""),
                               study_id=str(meta.get("StudyID", "") or ""))
        self.title = str(meta.get("DocumentTitle", "") or "") or None
        self.about = _about(meta, self.patient)

    def lay_over(self, ds: pydicom.Dataset, page: int, media: str) -> None:
        """The JSON's attributes over the object made (except the SOP Class, the bulk data and
        the image pixel description; pages after the first keep their own UIDs and numbers)."""
        declared = str(self.meta.get("SOPClassUID", "") or "")
        if not page and declared and declared != str(ds.SOPClassUID):
            raise BadInput(f"SOPClassUID {declared} does not fit a {media} object "
                           f"({ds.SOPClassUID})")
        for elem in self.meta:
            if elem.tag.group in _ARTIFACT_SKIP_GROUPS or elem.keyword in _ARTIFACT_SKIP:
                continue
            if page and elem.keyword in _PAGE_OWN:
                continue
            if elem.value in (None, "", []) and elem.tag in ds:
                continue
            ds[elem.tag] = elem
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _from_artifact(item: dict[str, Any], refs: dict[str, str], part: Part, media: str,
                   study: str | None) -> list[pydicom.Dataset]:
    """Complete IODs from :mod:`storage.artifacts` (one, or one per page of a multi-page image),
    with the JSON's attributes laid over them.

    A Referenced Study Sequence item in the JSON names the study the artifact is about; it must
    be one of the patient's studies and is recorded as :mod:`storage.artifacts.about` says."""
    from storage.artifacts import encapsulate_all

    ctx = _ArtifactContext(item, refs, study)
    objects = encapsulate_all(part.read(), patient=ctx.patient, study=ctx.study, media_type=media,
                              title=ctx.title, about=ctx.about,
                              max_size=settings().max_upload_bytes)
    for page, ds in enumerate(objects):
        ctx.lay_over(ds, page, media)
    return objects


def _video_from_artifact(item: dict[str, Any], refs: dict[str, str], part: Part, media: str,
                         study: str | None, spools: list[EncryptedSpool]
                         ) -> tuple[pydicom.Dataset, EncryptedSpool]:
    """A video bulk part (MP4/MOV, already in an encrypted spool past 1 MiB) made into its
    Video Photographic object in bounded memory, as ``pacs attach`` and ``/upload`` do it
    (:func:`storage.artifacts.write_video_object`): the Part 10 stream, and any remuxed or
    transcoded MP4, go to encrypted spools (appended to ``spools``, the caller closes them), the
    JSON's attributes laid over the header before it is written. Returns (header, object)."""
    from storage.artifacts import write_video_object

    ctx = _ArtifactContext(item, refs, study)
    spool_dir = settings().data_dir / "tmp"
    spool_dir.mkdir(parents=True, exist_ok=True)

    def new_sink() -> EncryptedSpool:
        spools.append(EncryptedSpool(dir=spool_dir))
        return spools[-1]

    dest = new_sink()
    ds = write_video_object(_file_of(part), dest.as_file(), media_type=media, patient=ctx.patient,
                            study=ctx.study, title=ctx.title, about=ctx.about,
                            new_sink=lambda: new_sink().as_file(),
                            amend=lambda ds: ctx.lay_over(ds, 0, media))
    dest.seek(0)
    return ds, dest


def _from_json(item: dict[str, Any], refs: dict[str, str], bulk: dict[str, Part],
               study: str | None) -> pydicom.Dataset:
    """The object exactly as the JSON and its bulk data describe it (pydicom)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate as encapsulate_frames
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    ts = ""
    pixel_part = bulk.get(refs.get("7FE00010", ""))
    if pixel_part is not None:
        ts = pixel_part.transfer_syntax or (
            _JPEG_BASELINE if pixel_part.media_type == "image/jpeg" else "")
    tsuid = UID(ts or ExplicitVRLittleEndian)

    def handler(tag: str, vr: str, uri: str) -> bytes:
        data = bulk[uri.strip("<>")].read()
        if tag.upper() == "7FE00010" and tsuid.is_compressed:
            return encapsulate_frames([data])
        return data

    ds = pydicom.Dataset.from_json(item, bulk_data_uri_handler=handler)
    if not ds.get("SOPClassUID"):
        raise BadInput("SOPClassUID is missing")
    if not ds.get("StudyInstanceUID"):
        ds.StudyInstanceUID = study or generate_uid()
    for kw in ("SeriesInstanceUID", "SOPInstanceUID"):
        if not ds.get(kw):
            setattr(ds, kw, generate_uid())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = tsuid
    return ds


def make_blueprint(name: str, authenticate: Authenticate, url_prefix: str) -> Blueprint:
    """POST {root}/studies and {root}/studies/{uid} (PS3.18 10.5)."""
    bp = service_blueprint(name, __name__, authenticate, url_prefix)

    @bp.errorhandler(MultipartError)
    def _bad_multipart(exc: MultipartError) -> Response:
        from .errors import error_response

        return error_response(413 if isinstance(exc, PayloadTooLarge) else 400, str(exc))

    view = require_scope("write")(stow)
    bp.add_url_rule("/studies", "stow", view, methods=["POST"])
    bp.add_url_rule("/studies/<study>", "stow_study", view, methods=["POST"])
    return bp
