"""Artifact ingest: sniff -> encapsulate -> :meth:`Archive.store` (the one ingest path).

Used by ``pacs attach``, the upload page and STOW-RS JSON uploads of plain documents. The object
is made by :mod:`storage.artifacts` (PS3.3 A.45.1 Encapsulated PDF, A.32.4/A.32.7 VL and Video
Photographic, A.34.4 General Audio Waveform, A.35.1 Basic Text SR) and stored with
``content_type`` set to the original media type, so the index records what comes back out.

Patient: a known patient (by ID and issuer) keeps the demographics the archive holds; a name given
for a known patient must match the stored one (a guard against attaching to the wrong person). An
unknown patient needs at least a name, or nothing is stored.

Study: ``study_uid`` names an existing study of this patient (its attributes are copied from the
index); ``None`` makes a new study with ``new_study_description``.

References (a text note or PDF naming other objects): explicit ``references`` (SOP Instance UIDs of
this patient's objects), plus, for text notes, every SOP Instance UID written in the note that the
archive holds for this patient, and every file name in ``named_files`` (the other files of the same
attach call -> their StoreResult) that the note mentions. They become SR content items and
evidence (Basic Text SR) or the Source Instance Sequence (PDF). Other kinds take no references.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .archive import Archive, Scope, StoreResult
from .artifacts import (
    ArtifactError,
    InstanceRef,
    PatientInfo,
    StudyInfo,
    detect_media_type,
    encapsulate_all,
    streamed_video_kind,
    write_video_object,
)
from .artifacts.text_sr import decode_text, rtf_text
from .errors import BadInput, NotFound
from .query import Query
from .tenancy import ProviderRef

__all__ = ["ArtifactError", "attach", "attach_all", "check_about", "patient_info", "study_info",
           "resolve_references"]

_UID_IN_TEXT = re.compile(r"(?<![0-9.])([0-2](?:\.(?:0|[1-9][0-9]*)){3,})(?!\.?[0-9])")
_STUDY_KEYS = ("StudyDescription", "AccessionNumber", "StudyDate", "StudyTime", "StudyID")
_REFERABLE = ("application/pdf", "text/plain", "text/rtf")


def patient_info(archive: Archive, patient_id: str, *, patient_name: str | None = None,
                 issuer: str = "", birth_date: str = "", sex: str = "",
                 provider: ProviderRef | None = None) -> tuple[PatientInfo, int | None]:
    """The Patient Module values to use, and the patient's ref if the archive knows them.

    Raises BadInput for an unknown patient without a name, or a name contradicting the stored one.
    """
    patient_id = (patient_id or "").strip()
    if not patient_id:
        raise BadInput("a patient ID is required")
    if len(patient_id) > 64:
        raise BadInput("the patient ID is longer than 64 characters")
    try:
        ref: int | None = archive.find_patient(patient_id, issuer, provider)
    except NotFound:
        ref = None
    if ref is None:
        if patient_name is None or not patient_name.strip():
            raise BadInput("unknown patient ID: give the patient's name to add a new patient "
                           "(nothing was stored)")
        return PatientInfo(patient_id, patient_name.strip(), issuer, birth_date, sex), None
    stored = archive.patient_values(ref)
    stored_name = str(stored.get("PatientName") or "")
    if patient_name and stored_name and _norm_pn(patient_name) != _norm_pn(stored_name):
        raise BadInput("the patient name given does not match the patient stored under this ID "
                       "(nothing was stored)")
    return PatientInfo(patient_id, stored_name or (patient_name or ""),
                       str(stored.get("IssuerOfPatientID") or issuer),
                       str(stored.get("PatientBirthDate") or birth_date),
                       str(stored.get("PatientSex") or sex)), ref


def _norm_pn(name: str) -> str:
    return "^".join(p.strip() for p in name.replace("=", "^").split("^")).strip("^").casefold()


def study_info(archive: Archive, study_uid: str | None, patient_ref: int | None, *,
               new_study_description: str | None = None) -> StudyInfo:
    """General Study values: copied from an existing study of this patient, or a new study."""
    if not study_uid:
        return StudyInfo(None, study_description=(new_study_description or "").strip())
    if patient_ref is None:
        raise NotFound("no such study for this patient")
    rows = list(archive.find(Query("STUDY", filters={"StudyInstanceUID": study_uid},
                                   return_keys=list(_STUDY_KEYS), patient_scope=patient_ref)))
    if not rows:
        raise NotFound("no such study for this patient")
    row = rows[0]
    return StudyInfo(study_uid, **{k: str(row.get(kw) or "") for k, kw in (
        ("study_description", "StudyDescription"), ("accession_number", "AccessionNumber"),
        ("study_date", "StudyDate"), ("study_time", "StudyTime"), ("study_id", "StudyID"))})


def resolve_references(archive: Archive, patient_ref: int | None,
                       sop_uids: Iterable[str]) -> list[InstanceRef]:
    """InstanceRefs of the given SOP Instance UIDs that this patient has (others are ignored)."""
    if patient_ref is None:
        return []
    out: list[InstanceRef] = []
    seen: set[str] = set()
    for uid in sop_uids:
        if uid in seen:
            continue
        seen.add(uid)
        try:
            info = archive.instances(sop_uid=uid, scope=Scope(patient_ref))[0]
        except NotFound:
            continue
        out.append(InstanceRef(info.sop_class_uid, info.sop_uid, info.series_uid, info.study_uid))
    return out


def _note_text(data: bytes, kind: str) -> str:
    try:
        return rtf_text(data) if kind == "text/rtf" else decode_text(data)
    except ArtifactError:
        return ""


def check_about(archive: Archive, study_uid: str | None, patient_ref: int | None) -> str | None:
    """The Study Instance UID an artifact is about, if it is one of this patient's studies.

    Raises NotFound otherwise (a foreign study answers like an unknown one)."""
    if not study_uid:
        return None
    study_uid = study_uid.strip()
    if patient_ref is None or not list(archive.find(Query(
            "STUDY", filters={"StudyInstanceUID": study_uid}, return_keys=["StudyInstanceUID"],
            patient_scope=patient_ref))):
        raise NotFound("the study the artifact is about is not one of this patient's studies")
    return study_uid


def attach(archive: Archive, data: bytes | str | os.PathLike[str] | BinaryIO,
           **kwargs: Any) -> StoreResult:
    """:func:`attach_all` for callers that want one result: the first object (the page that
    carries the original of a multi-page image)."""
    return attach_all(archive, data, **kwargs)[0]


def attach_all(
    archive: Archive,
    data: bytes | str | os.PathLike[str] | BinaryIO,
    *,
    filename: str | None = None,
    patient_id: str,
    patient_name: str | None = None,
    issuer: str = "",
    birth_date: str = "",
    sex: str = "",
    study_uid: str | None = None,
    new_study_description: str | None = None,
    title: str | None = None,
    media_type: str | None = None,
    references: Iterable[str] = (),
    about: str | None = None,
    named_files: Mapping[str, StoreResult] | None = None,
    actor: str,
    origin: str,
    max_size: int | None = None,
    provider: ProviderRef | None = None,
) -> list[StoreResult]:
    """Encapsulate one artifact as DICOM and store it (one object, or one per page of a
    multi-page image); nothing is stored on any error.

    ``about``: Study Instance UID of one of this patient's studies the artifact discusses
    (recorded as in :mod:`storage.artifacts.about`). A video given as a path or an open file goes
    the bounded-memory way (:func:`_attach_video`); everything else is read into memory (at most
    ``max_size``). Raises BadInput (unknown patient without a name, name mismatch), NotFound
    (study not this patient's), ArtifactError subclasses (empty, truncated, mislabelled,
    unsupported, too large).
    """
    if max_size is None:
        max_size = archive.settings.max_upload_bytes
    if isinstance(data, bytes | bytearray):
        return _attach_bytes(archive, bytes(data), filename=filename, patient_id=patient_id,
                             patient_name=patient_name, issuer=issuer, birth_date=birth_date,
                             sex=sex, study_uid=study_uid,
                             new_study_description=new_study_description, title=title,
                             media_type=media_type, references=references, about=about,
                             named_files=named_files, actor=actor, origin=origin,
                             max_size=max_size, provider=provider)
    if isinstance(data, str | os.PathLike):
        filename = filename or Path(data).name
        with open(data, "rb") as source:
            return attach_all(archive, source, filename=filename, patient_id=patient_id,
                              patient_name=patient_name, issuer=issuer, birth_date=birth_date,
                              sex=sex, study_uid=study_uid,
                              new_study_description=new_study_description, title=title,
                              media_type=media_type, references=references, about=about,
                              named_files=named_files, actor=actor, origin=origin,
                              max_size=max_size, provider=provider)
    size = data.seek(0, io.SEEK_END)
    data.seek(0)
    if size > max_size:
        from .artifacts import ArtifactTooLarge

        raise ArtifactTooLarge(f"{size} bytes is over the limit of {max_size} bytes")
    refs_given = list(references)
    if not refs_given and (kind := streamed_video_kind(data, filename, media_type)):
        return _attach_video(archive, data, filename=filename, patient_id=patient_id,
                             patient_name=patient_name, issuer=issuer, birth_date=birth_date,
                             sex=sex, study_uid=study_uid,
                             new_study_description=new_study_description, title=title,
                             media_type=kind, about=about, actor=actor, origin=origin,
                             provider=provider)
    return _attach_bytes(archive, data.read(), filename=filename, patient_id=patient_id,
                         patient_name=patient_name, issuer=issuer, birth_date=birth_date, sex=sex,
                         study_uid=study_uid, new_study_description=new_study_description,
                         title=title, media_type=media_type, references=refs_given, about=about,
                         named_files=named_files, actor=actor, origin=origin, max_size=max_size,
                         provider=provider)


def _attach_video(archive: Archive, source: BinaryIO, *, filename: str | None, patient_id: str,
                  patient_name: str | None, issuer: str, birth_date: str, sex: str,
                  study_uid: str | None, new_study_description: str | None, title: str | None,
                  media_type: str, about: str | None, actor: str, origin: str,
                  provider: ProviderRef | None = None) -> list[StoreResult]:
    """A video file to the archive in bounded memory: Part 10 written into an encrypted spool
    (storage.spool), remux/transcode output too; nothing in clear on disk, nothing whole in RAM."""
    from .spool import EncryptedSpool

    patient, patient_ref = patient_info(archive, patient_id, patient_name=patient_name,
                                        issuer=issuer, birth_date=birth_date, sex=sex,
                                        provider=provider)
    study = study_info(archive, study_uid, patient_ref, new_study_description=new_study_description)
    about = check_about(archive, about, patient_ref)
    spool_dir = archive.settings.data_dir / "tmp"
    spools: list[EncryptedSpool] = []

    def new_sink() -> BinaryIO:
        spools.append(EncryptedSpool(dir=spool_dir))
        return spools[-1].as_file()

    try:
        dest = new_sink()
        write_video_object(source, dest, media_type=media_type, patient=patient, study=study,
                           filename=filename, title=title, about=about, new_sink=new_sink)
        dest.seek(0)
        return [archive.store(dest, actor=actor, origin=origin, content_type=media_type,
                              provider=provider)]
    finally:
        for spool in spools:
            spool.close()


def _attach_bytes(
    archive: Archive,
    data: bytes,
    *,
    filename: str | None,
    patient_id: str,
    patient_name: str | None,
    issuer: str,
    birth_date: str,
    sex: str,
    study_uid: str | None,
    new_study_description: str | None,
    title: str | None,
    media_type: str | None,
    references: Iterable[str],
    about: str | None,
    named_files: Mapping[str, StoreResult] | None,
    actor: str,
    origin: str,
    max_size: int,
    provider: ProviderRef | None = None,
) -> list[StoreResult]:
    patient, patient_ref = patient_info(archive, patient_id, patient_name=patient_name,
                                        issuer=issuer, birth_date=birth_date, sex=sex,
                                        provider=provider)
    study = study_info(archive, study_uid, patient_ref, new_study_description=new_study_description)
    about = check_about(archive, about, patient_ref)
    kind = detect_media_type(data, filename, media_type)
    refs: list[InstanceRef] = []
    if kind in _REFERABLE:
        uids = list(references)
        if kind != "application/pdf":
            text = _note_text(data, kind)
            uids += _UID_IN_TEXT.findall(text)
            for name, result in (named_files or {}).items():
                if name and name != filename and name in text:
                    refs.append(InstanceRef(result.sop_class_uid, result.sop_instance_uid,
                                            result.series_uid, result.study_uid))
        known = {r.sop_instance_uid for r in refs}
        refs += [r for r in resolve_references(archive, patient_ref, uids)
                 if r.sop_instance_uid not in known]
    elif list(references):
        raise BadInput(f"references can be recorded for PDFs and notes, not for {kind}")
    objects = encapsulate_all(data, patient=patient, study=study, filename=filename,
                              media_type=kind, title=title, references=refs, about=about,
                              max_size=max_size)
    return store_objects(archive, objects, actor=actor, origin=origin, provider=provider)


def stored_media_type(ds: Any) -> str:
    """The media type the index records for an artifact object (what comes back out)."""
    from .artifacts.common import EL_MEDIA_TYPE, private_value

    value = private_value(ds, EL_MEDIA_TYPE)
    return str(value) if value else ""


def store_objects(archive: Archive, objects: list[Any], *, actor: str, origin: str,
                  provider: ProviderRef | None = None) -> list[StoreResult]:
    """Store the objects of one artifact; when one fails, those already stored are deleted."""
    results: list[StoreResult] = []
    try:
        for ds in objects:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            results.append(archive.store(buf.getvalue(), actor=actor, origin=origin,
                                         content_type=stored_media_type(ds), provider=provider))
    except BaseException:
        for r in results:
            archive.delete(r.study_uid, r.series_uid, r.sop_instance_uid, actor=actor,
                           origin=origin)
        raise
    return results


def describe(result: StoreResult) -> dict[str, Any]:
    """What a front door tells the user about one stored artifact (no PHI)."""
    return {"status": result.status, "sop_class_uid": result.sop_class_uid,
            "sop_instance_uid": result.sop_instance_uid, "study_uid": result.study_uid,
            "series_uid": result.series_uid}
