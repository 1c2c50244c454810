"""The SOP classes of non-DICOM artifacts and of video and photographs: one table (PS3.4 B.5).

``storage.artifacts`` makes objects of the artifact classes (PDF, photos, video, audio, notes);
everyone else decides by this table: ``storage.letters`` (which objects carry an original to
export), ``dicomweb.patient.notes`` (what a patient's page lists, by label), ``dicomweb.wado`` and ``wadouri`` (which originals come back, as which media type; what is
not rendered), ``dicomweb.render`` (documents are not images) and ``pacs.scp`` (the transfer
syntaxes preferred for video and photographs). No pydicom Dataset, no I/O: a table.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    BasicTextSRStorage,
    EncapsulatedCDAStorage,
    EncapsulatedPDFStorage,
    GeneralAudioWaveformStorage,
    VideoEndoscopicImageStorage,
    VideoMicroscopicImageStorage,
    VideoPhotographicImageStorage,
    VLEndoscopicImageStorage,
    VLMicroscopicImageStorage,
    VLPhotographicImageStorage,
    VLSlideCoordinatesMicroscopicImageStorage,
)


@dataclass(frozen=True)
class ArtifactClass:
    """One SOP class that can hold a non-DICOM file."""

    uid: str
    name: str
    kind: str  # document | image | video | audio | text
    media_type: str | None  # the original as given back (storage.artifacts); None: not given back
    label: str  # what a patient's page calls one (dicomweb.patient.notes)


ARTIFACT_CLASSES: dict[str, ArtifactClass] = {c.uid: c for c in (
    ArtifactClass(EncapsulatedPDFStorage, "Encapsulated PDF", "document", "application/pdf", "Document"),
    ArtifactClass(EncapsulatedCDAStorage, "Encapsulated CDA", "document", None, "Document"),
    # A photograph kept as JPEG comes back as image/jpeg; other photographs are images like any other.
    ArtifactClass(VLPhotographicImageStorage, "VL Photographic Image", "image", "image/jpeg", "Photo"),
    ArtifactClass(VideoPhotographicImageStorage, "Video Photographic Image", "video", "video/mp4", "Video"),
    ArtifactClass(GeneralAudioWaveformStorage, "General Audio Waveform", "audio", "audio/wav", "Dictation"),
    ArtifactClass(BasicTextSRStorage, "Basic Text SR", "text", "text/plain", "Note"),
)}

#: Classes whose objects may carry an original file (``storage.artifacts.extract_original``).
WITH_ORIGINAL = frozenset(uid for uid, c in ARTIFACT_CLASSES.items() if c.media_type)
#: Artifacts that are not images: their original comes back as its own media type, never rendered.
NOT_IMAGES: dict[str, str] = {uid: c.media_type for uid, c in ARTIFACT_CLASSES.items()
                              if c.media_type and c.kind != "image"}
#: Encapsulated documents, by name: never rendered as an image.
DOCUMENTS: dict[str, str] = {uid: c.name for uid, c in ARTIFACT_CLASSES.items() if c.kind == "document"}

#: Video IODs (PS3.3 A.32.5-A.32.7): MPEG/HEVC bitstreams only.
VIDEO_CLASSES = frozenset({VideoEndoscopicImageStorage, VideoMicroscopicImageStorage,
                           VideoPhotographicImageStorage})
#: Visible-light still images (PS3.3 A.32.1-A.32.4), as cameras send them: usually JPEG.
VL_PHOTO_CLASSES = frozenset({VLPhotographicImageStorage, VLEndoscopicImageStorage,
                              VLMicroscopicImageStorage, VLSlideCoordinatesMicroscopicImageStorage})
