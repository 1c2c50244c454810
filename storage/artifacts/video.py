"""MP4 (H.264) <-> Video Photographic Image Storage (PS3.3 A.32.7; PS3.5 8.2.8, A.4.5).

The whole MP4 file is the single fragment of the Pixel Data, with an empty
Basic Offset Table; the transfer syntax names the H.264 profile/level. The
stream is described with PyAV (FFmpeg's libraries, in process, no temp file).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from itertools import islice

import av
from pydicom import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import (
    MPEG4HP41,
    MPEG4HP41BD,
    MPEG4HP41BDF,
    MPEG4HP41F,
    MPEG4HP42STEREO,
    MPEG4HP42STEREOF,
    MPEG4HP422D,
    MPEG4HP422DF,
    MPEG4HP423D,
    MPEG4HP423DF,
)

from .common import Provenance, base_dataset, finish, record_provenance
from .errors import InvalidArtifact, UnsupportedArtifact
from .model import Original, PatientInfo, StudyInfo

VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
MEDIA_TYPE = "video/mp4"
# H.264 profiles a High Profile decoder must decode (ITU-T H.264 A.2).
_PROFILES = {"Constrained Baseline", "Main", "High"}
_PIX_FMTS = {"yuv420p", "yuvj420p"}
_H264_SYNTAXES = {
    MPEG4HP41,
    MPEG4HP41BD,
    MPEG4HP422D,
    MPEG4HP423D,
    MPEG4HP42STEREO,
    MPEG4HP41F,
    MPEG4HP41BDF,
    MPEG4HP422DF,
    MPEG4HP423DF,
    MPEG4HP42STEREOF,
}


@dataclass(frozen=True)
class VideoInfo:
    """What DICOM needs to know about the video stream."""

    width: int
    height: int
    frames: int
    frame_rate: Fraction
    profile: str
    level: int


def probe_mp4(data: bytes) -> VideoInfo:
    """Open the MP4 in memory and describe its (first) H.264 video stream."""
    if mp4_length(data) != len(data):
        raise InvalidArtifact(
            "the MP4 is truncated or has trailing bytes (its boxes do not cover the file)"
        )
    try:
        with av.open(io.BytesIO(data), format="mp4") as container:
            if not container.streams.video:
                raise UnsupportedArtifact(
                    "the MP4 has no video stream (audio-only MP4 is not supported)"
                )
            stream = container.streams.video[0]
            ctx = stream.codec_context
            if ctx.name != "h264":
                raise UnsupportedArtifact(
                    f"MP4 video with codec {ctx.name} is not supported (H.264 only)"
                )
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            rate = stream.average_rate or stream.guessed_rate
            info = VideoInfo(
                ctx.width, ctx.height, frames, Fraction(rate or 0), str(ctx.profile), int(ctx.level)
            )
            pix_fmt = ctx.pix_fmt
    except av.error.FFmpegError as exc:
        raise InvalidArtifact(f"the MP4 cannot be read (truncated or corrupt): {exc}") from exc
    if pix_fmt is None or info.profile == "None":
        raise InvalidArtifact("the MP4 video stream has no decoder parameters (corrupt?)")
    if pix_fmt not in _PIX_FMTS or info.profile not in _PROFILES:
        raise UnsupportedArtifact(
            f"H.264 {info.profile} / {pix_fmt} is not supported; "
            "re-encode as 8-bit 4:2:0 High Profile (e.g. ffmpeg -profile:v high -pix_fmt yuv420p)"
        )
    if info.width <= 0 or info.height <= 0 or info.frames <= 0 or info.frame_rate <= 0:
        raise InvalidArtifact("the MP4 video stream has no frames or no frame rate")
    return info


def transfer_syntax_for(info: VideoInfo) -> str:
    """Pick the MPEG-4 AVC/H.264 transfer syntax (PS3.5 8.2.8) the stream conforms to."""
    if info.width > 1920 or info.height > 1080:
        raise UnsupportedArtifact(
            f"video of {info.width}x{info.height} exceeds 1920x1080 (H.264 level 4.1/4.2 transfer syntaxes)"
        )
    if info.level <= 41:
        return MPEG4HP41
    if info.level == 42:
        return MPEG4HP422D
    raise UnsupportedArtifact(
        f"H.264 level {info.level / 10:.1f} is above 4.2; re-encode at level 4.1"
    )


def mp4_length(data: bytes) -> int:
    """Length of the MP4 given by its top-level boxes (ISO/IEC 14496-12 4.2).

    Used when an object carries no recorded original size: a trailing pad
    byte is not part of any box.
    """
    pos = 0
    while pos + 8 <= len(data):
        (size,) = struct.unpack(">I", data[pos : pos + 4])
        if size == 1 and pos + 16 <= len(data):
            (size,) = struct.unpack(">Q", data[pos + 8 : pos + 16])
        elif size == 0:
            return len(data)
        if size < 8 or pos + size > len(data):
            break
        pos += size
    return pos


def encapsulate_mp4(
    data: bytes,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str,
    title: str,
    series_description: str,
    content_datetime: datetime,
) -> Dataset:
    """Build a Video Photographic Image object (PS3.3 A.32.7) around the MP4."""
    info = probe_mp4(data)
    ts = transfer_syntax_for(info)
    ds = base_dataset(
        sop_class_uid=VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE,
        modality="XC",
        patient=patient,
        study=study,
        series_description=series_description,
        content_datetime=content_datetime,
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = None
    ds.AcquisitionContextSequence = []
    # Laterality (General Series, 2C) stays absent: the region is unpaired.
    # VL Image (C.8.12.1): type 1C for video; the region is not known, so the
    # least specific one is given (SCT 38266002 "Entire body").
    region = Dataset()
    region.CodeValue = "38266002"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Entire body"
    ds.AnatomicRegionSequence = [region]
    ds.BurnedInAnnotation = "NO"
    if title:
        ds.ImageComments = title
    # Cine (C.7.6.5) and Multi-frame (C.7.6.6)
    frame_time = 1000 / info.frame_rate
    ds.NumberOfFrames = info.frames
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = f"{float(frame_time):.6g}"
    ds.CineRate = round(info.frame_rate)
    ds.RecommendedDisplayFrameRate = round(info.frame_rate)
    ds.PreferredPlaybackSequencing = 0
    # Image Pixel as PS3.5 8.2.8 requires for H.264
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows = info.height
    ds.Columns = info.width
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_14496_10"
    ds.PixelData = encapsulate([data], has_bot=False)
    ds["PixelData"].VR = "OB"
    record_provenance(ds, Provenance(MEDIA_TYPE, filename, data))
    return finish(ds, ts)


def extract_mp4(ds: Dataset, filename: str, size: int | None) -> Original:
    """The MP4 file back from the Pixel Data fragments."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts not in _H264_SYNTAXES:
        raise UnsupportedArtifact(f"cannot extract MP4 from transfer syntax {ts.name}")
    # The first item is the Basic Offset Table (PS3.5 A.4), not video data.
    data = b"".join(islice(generate_fragments(ds.PixelData), 1, None))
    if size is None:
        size = mp4_length(data)
    return Original(data[:size], MEDIA_TYPE, filename)
