"""Notes, dictations and documents shown beside the study they discuss, on the patient page.

An artifact attached with ``--about STUDY`` (or a Referenced Study Sequence in STOW-RS, or the
upload page's "About") names that study in its Referenced Study Sequence
(:mod:`storage.artifacts.about`). The page lists each such artifact under the study it is about,
wherever the artifact itself is stored. Only this patient's artifacts (``content_type`` set at
ingest) are read, header only, values above 1 KiB left unread; at most :data:`MAX_ARTIFACTS`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pydicom
from pydicom.uid import BasicTextSRStorage

from storage.archive import Archive, InstanceInfo, Scope
from storage.artifact_classes import ARTIFACT_CLASSES, WITH_ORIGINAL
from storage.artifacts import about_study, note_text
from storage.errors import NotFound
from storage.letters import Grant

MAX_ARTIFACTS = 200
_KINDS = {uid: ARTIFACT_CLASSES[uid].label for uid in WITH_ORIGINAL}  # storage/artifact_classes.py
_TAGS = ["SOPClassUID", "ReferencedStudySequence", "DocumentTitle", "ImageComments",
         "ContentSequence", "ValueType", "ContentDate"]


@dataclass(frozen=True)
class Note:
    """One artifact about a study, as the page shows it."""

    kind: str
    title: str
    text: str
    info: InstanceInfo


def _read(archive: Archive, info: InstanceInfo) -> pydicom.Dataset:
    with archive.open(info) as r:
        return pydicom.dcmread(io.BufferedReader(r, 1 << 16), stop_before_pixels=True,
                               specific_tags=_TAGS, defer_size=1024)


def notes_about(archive: Archive, grant: Grant) -> dict[str, list[Note]]:
    """Study Instance UID -> the artifacts (in this grant's scope) that are about it."""
    try:
        infos = archive.instances(scope=Scope(grant.patient_ref, grant.study_uids))
    except NotFound:
        return {}
    out: dict[str, list[Note]] = {}
    for info in [i for i in infos if i.content_type and i.sop_class_uid in _KINDS][:MAX_ARTIFACTS]:
        try:
            ds = _read(archive, info)
            study = about_study(ds)
            if not study:
                continue
            text = ""
            if info.sop_class_uid == BasicTextSRStorage:
                text = note_text(ds)
            title = str(ds.get("DocumentTitle") or ds.get("ImageComments") or "")
        except Exception:  # an unreadable artifact is left off the page, not fatal
            continue
        out.setdefault(study, []).append(Note(_KINDS[info.sop_class_uid], title, text, info))
    return out
