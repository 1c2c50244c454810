"""Non-DICOM artifacts (PDF, photos, video, audio, notes) as standard DICOM objects.

Pure functions over bytes: no files, no network, no database.

=================  ==========================================  ======================
media type         SOP Class (PS3.4 B.5)                       comes back
=================  ==========================================  ======================
application/pdf    Encapsulated PDF (A.45.1)                   byte-identical
image/jpeg         VL Photographic Image (A.32.4), JPEG as is  byte-identical
image/png|gif|...  VL Photographic Image, native pixels,       byte-identical (kept)
image/heic|heif    upright (EXIF), one object per page
video/mp4, MOV     Video Photographic Image (A.32.7), H.264    byte-identical (MP4
                   or HEVC as is, else remuxed/transcoded      as is, else kept)
audio/wav (PCM)    General Audio Waveform (A.34.4)             byte-identical
audio/mpeg|mp4|    General Audio Waveform, decoded to PCM      byte-identical (kept)
aac|ogg
text/plain         Basic Text SR (A.35.1)                      byte-identical
text/rtf           Basic Text SR, RTF kept privately           byte-identical
=================  ==========================================  ======================

The original media type, file name, size and SHA-256 are kept in a private
block described in :mod:`storage.artifacts.common`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import BinaryIO, TypedDict

import pydicom
from pydicom.uid import UID

from .about import about_study, record_about
from .audio import GENERAL_AUDIO_WAVEFORM_STORAGE, encapsulate_wav, extract_wav
from .coded_audio import CODED_AUDIO, encapsulate_coded_audio, extract_coded_audio
from .common import (
    EL_FILENAME,
    EL_MEDIA_TYPE,
    EL_SIZE,
    check_size,
    private_value,
    safe_filename,
    verify_sha256,
)
from .detect import SUPPORTED_MEDIA_TYPES, detect_media_type, normalize_media_type
from .errors import ArtifactError, ArtifactTooLarge, InvalidArtifact, UnsupportedArtifact
from .image import (
    VL_PHOTOGRAPHIC_IMAGE_STORAGE,
    encapsulate_jpeg,
    encapsulate_pages,
    extract_image,
)
from .model import InstanceRef, Original, PatientInfo, StudyInfo
from .pdf import ENCAPSULATED_PDF_STORAGE, encapsulate_pdf, extract_pdf
from .text_sr import BASIC_TEXT_SR_STORAGE, encapsulate_note, extract_note, note_text
from .video import (
    VIDEO_MEDIA_TYPES,
    VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE,
    encapsulate_video,
    extract_video,
    has_video,
)
from .video_stream import streamed_video_kind, write_video

__all__ = [
    "ArtifactError",
    "ArtifactTooLarge",
    "InstanceRef",
    "InvalidArtifact",
    "Original",
    "PatientInfo",
    "StudyInfo",
    "SUPPORTED_MEDIA_TYPES",
    "UnsupportedArtifact",
    "about_study",
    "detect_media_type",
    "encapsulate",
    "encapsulate_all",
    "has_video",
    "streamed_video_kind",
    "write_video_object",
    "extract_original",
    "note_text",
]

_DEFAULT_NAMES = {
    "application/pdf": "document.pdf",
    "image/jpeg": "photo.jpg",
    "video/mp4": "video.mp4",
    "video/quicktime": "video.mov",
    "audio/wav": "audio.wav",
    "audio/mpeg": "dictation.mp3",
    "audio/mp4": "dictation.m4a",
    "audio/aac": "dictation.aac",
    "audio/ogg": "dictation.ogg",
    "text/plain": "note.txt",
    "text/rtf": "note.rtf",
}
_DECODED_IMAGES = {"image/png", "image/gif", "image/bmp", "image/tiff", "image/heic", "image/heif"}


def encapsulate(
    data: bytes,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str | None = None,
    media_type: str | None = None,
    title: str | None = None,
    series_description: str = "",
    references: Sequence[InstanceRef] = (),
    about: str | None = None,
    max_size: int | None = None,
    content_datetime: datetime | None = None,
) -> pydicom.Dataset:
    """Wrap an artifact in one new DICOM object; see :func:`encapsulate_all` (one page only)."""
    objects = encapsulate_all(data, patient=patient, study=study, filename=filename,
                              media_type=media_type, title=title,
                              series_description=series_description, references=references,
                              about=about, max_size=max_size, content_datetime=content_datetime)
    if len(objects) != 1:
        raise UnsupportedArtifact(
            f"the file has {len(objects)} pages, which make {len(objects)} objects: use encapsulate_all")
    return objects[0]


class _Described(TypedDict):
    """What every ``encapsulate_*`` takes by keyword besides its own options."""

    patient: PatientInfo
    study: StudyInfo
    filename: str
    title: str
    series_description: str
    content_datetime: datetime


def encapsulate_all(
    data: bytes,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str | None = None,
    media_type: str | None = None,
    title: str | None = None,
    series_description: str = "",
    references: Sequence[InstanceRef] = (),
    about: str | None = None,
    max_size: int | None = None,
    content_datetime: datetime | None = None,
) -> list[pydicom.Dataset]:
    """Wrap an artifact in new DICOM objects (new SOP Instance and Series UIDs): one object, or
    one per page of a multi-page image, all in one series, the first carrying the original.

    ``media_type`` is a declared label, checked against the content like the
    file name's extension. ``title`` defaults to the file name. References
    are recorded in text notes (SR content and evidence) and PDFs (Source
    Instance Sequence); for other kinds they raise ArtifactError. ``about``: the
    Study Instance UID the artifact discusses (:mod:`.about`), for every kind.
    Each result carries file_meta: ``ds.save_as(f, enforce_file_format=True)``.
    """
    check_size(data, max_size)
    kind = detect_media_type(data, filename, media_type)
    if kind in ("video/mp4", "video/quicktime", "audio/mp4") and not has_video(data):
        kind = "audio/mp4"  # an MP4/MOV with sound only is a dictation
    elif kind == "audio/mp4" and has_video(data):
        kind = "video/mp4"
    name = safe_filename(filename, _DEFAULT_NAMES.get(kind, "image." + kind.split("/")[1]))
    when = content_datetime or datetime.now().astimezone()
    doc_title = name if title is None else title
    common: _Described = {
        "patient": patient,
        "study": study,
        "filename": name,
        "title": doc_title,
        "series_description": series_description,
        "content_datetime": when,
    }
    if references and kind not in ("application/pdf", "text/plain", "text/rtf"):
        raise ArtifactError(f"references can be recorded for PDFs and notes, not for {kind}")
    if kind == "application/pdf":
        objects = [encapsulate_pdf(data, **common)]
        if references:
            objects[0].SourceInstanceSequence = [_ref_item(r) for r in references]
    elif kind == "image/jpeg":
        objects = [encapsulate_jpeg(data, **common)]
    elif kind in _DECODED_IMAGES:
        objects = encapsulate_pages(data, media_type=kind, **common)
    elif kind in VIDEO_MEDIA_TYPES:
        objects = [encapsulate_video(data, media_type=kind, **common)]
    elif kind == "audio/wav":
        objects = [encapsulate_wav(data, **common)]
    elif kind in CODED_AUDIO:
        objects = [encapsulate_coded_audio(data, media_type=kind, **common)]
    else:
        objects = [encapsulate_note(data, media_type=kind, references=references, **common)]
    if about:
        for ds in objects:
            record_about(ds, about)
    return objects


def write_video_object(
    src: BinaryIO,
    dest: BinaryIO,
    *,
    media_type: str,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str | None = None,
    title: str | None = None,
    series_description: str = "",
    about: str | None = None,
    content_datetime: datetime | None = None,
    new_sink: Callable[[], BinaryIO] = io.BytesIO,
    amend: Callable[[pydicom.Dataset], None] | None = None,
) -> pydicom.Dataset:
    """A video (MP4/MOV, already detected as ``media_type``, e.g. by
    :func:`streamed_video_kind`) from a seekable file to a Part 10 stream in bounded memory
    (:mod:`.video_stream`); returns the header written (``amend``: see :func:`.write_video`)."""
    name = safe_filename(filename, _DEFAULT_NAMES.get(media_type, "video.mp4"))
    return write_video(src, dest, media_type=media_type, patient=patient, study=study,
                       filename=name, title=name if title is None else title,
                       series_description=series_description,
                       content_datetime=content_datetime or datetime.now().astimezone(),
                       about=about, new_sink=new_sink, amend=amend)


def _ref_item(ref: InstanceRef) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def extract_original(ds: pydicom.Dataset) -> Original:
    """Recover the artifact from an object made by :func:`encapsulate` (or a like one).

    Byte-identical for every kind (checked against the recorded SHA-256), except
    pages after the first of a multi-page image and images stored before originals
    were kept, which come back as PNG with the same pixels.
    Works on objects from other tools (e.g. dcmtk's pdf2dcm) without the
    private block, using the standard attributes only.
    """
    sop_class = UID(ds.SOPClassUID)
    declared = private_value(ds, EL_MEDIA_TYPE)
    media_type = normalize_media_type(str(declared)) if declared else None
    raw_name = private_value(ds, EL_FILENAME)
    size_value = private_value(ds, EL_SIZE)
    size = int(size_value) if isinstance(size_value, int) else None
    name = safe_filename(
        str(raw_name) if raw_name else None, _DEFAULT_NAMES.get(media_type or "", "artifact")
    )
    if sop_class == ENCAPSULATED_PDF_STORAGE:
        original = extract_pdf(
            ds, safe_filename(str(raw_name) if raw_name else None, "document.pdf")
        )
    elif sop_class == VL_PHOTOGRAPHIC_IMAGE_STORAGE:
        original = extract_image(ds, name, size)
        if original.media_type == "image/png" and media_type != "image/png":
            return original  # re-encoded: pixels equal, bytes not
    elif sop_class == VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE:
        original = extract_video(
            ds, media_type or "", safe_filename(str(raw_name) if raw_name else None, "video.mp4"),
            size,
        )
    elif sop_class == GENERAL_AUDIO_WAVEFORM_STORAGE:
        coded = extract_coded_audio(ds, media_type or "", name)
        original = coded or extract_wav(
            ds, safe_filename(str(raw_name) if raw_name else None, "audio.wav"), size
        )
    elif sop_class == BASIC_TEXT_SR_STORAGE:
        original = extract_note(
            ds, safe_filename(str(raw_name) if raw_name else None, "note.txt"), media_type, size
        )
    else:
        raise UnsupportedArtifact(
            f"no artifact can be extracted from {sop_class.name or sop_class}"
        )
    verify_sha256(ds, original.data)
    return original
