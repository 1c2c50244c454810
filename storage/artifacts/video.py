"""Phone and ultrasound video <-> Video Photographic Image Storage (PS3.3 A.32.7; PS3.5 8.2.8, 8.2.12, A.4.5).

The Pixel Data holds one MP4 file as its single fragment, with an empty Basic Offset Table; the
transfer syntax names the codec: MPEG-4 AVC/H.264 High Profile (level 4.1/4.2) or HEVC/H.265 Main
Profile level 5.1 (Main 10 is not used: the VL Image module allows 8 bits only). What comes in:

* MP4 with H.264 or HEVC (8-bit Main) that fits one of those syntaxes: stored as is (the Pixel Data *is* the
  original, byte-identical, no second copy).
* MOV (QuickTime, what phones write) with such a stream: remuxed to MP4 (stream copy, no loss,
  packet by packet) for the Pixel Data; the MOV is kept in the private "original" block.
* Anything else PyAV decodes (MPEG-4 Part 2, Motion JPEG, VP9, ProRes, H.264 4:2:2 / 10-bit,
  above 1080p, ...): transcoded with PyAV/libx264 to H.264 High Profile 8-bit 4:2:0 (scaled down
  to fit 1920x1080), frame by frame (one frame decoded at a time); the original is kept in the
  private block. Conversions write to memory, never to a temporary file in clear.

A kept original doubles the size of that object: the price of giving back the very file.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from itertools import islice
from typing import BinaryIO

import av
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from pydicom import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import (
    HEVCM10P51,
    HEVCMP51,
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

from .common import (
    EL_ORIGINAL_BYTES,
    Provenance,
    base_dataset,
    finish,
    private_value,
    record_provenance,
)
from .errors import InvalidArtifact, UnsupportedArtifact
from .model import Original, PatientInfo, StudyInfo

VIDEO_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
MEDIA_TYPE = "video/mp4"
VIDEO_MEDIA_TYPES = ("video/mp4", "video/quicktime")
# H.264 profiles a High Profile decoder must decode (ITU-T H.264 A.2).
_PROFILES = {"Constrained Baseline", "Main", "High"}
_PIX_FMTS = {"yuv420p", "yuvj420p"}
# HEVC Main only: the VL Image module (PS3.3 C.8.12.1) enumerates 8 bits, so a Main 10 (HDR
# phone) video has no transfer syntax this IOD can carry and is transcoded to 8-bit H.264.
_HEVC_PROFILES = {"Main": HEVCMP51}
_HEVC_PIX_FMTS = {"Main": {"yuv420p", "yuvj420p"}}
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
_VIDEO_SYNTAXES = _H264_SYNTAXES | {HEVCMP51, HEVCM10P51}  # M10: objects from elsewhere
_COPY_AUDIO = {"aac", "mp3", "alac"}  # audio codecs an MP4 carries as they are


@dataclass(frozen=True)
class VideoInfo:
    """What DICOM needs to know about the video stream."""

    width: int
    height: int
    frames: int
    frame_rate: Fraction
    profile: str
    level: int
    codec: str = "h264"
    pix_fmt: str = "yuv420p"
    container: str = "mp4"


def has_video(data: bytes | BinaryIO) -> bool:
    """Whether an ISO BMFF file (MP4/MOV/M4A) has a video stream (else it is audio only)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        source.seek(0)
        with av.open(source) as container:
            return bool(container.streams.video)
    except av.error.FFmpegError:
        return True  # let the video path say what is wrong
    finally:
        source.seek(0)


def probe_video(data: bytes | BinaryIO) -> VideoInfo:
    """Describe the first video stream of an MP4/MOV, in memory or a seekable file (no frame is
    decoded; the packets are counted when the container does not say)."""
    source: BinaryIO
    if isinstance(data, bytes):
        whole, source = mp4_length(data) == len(data), io.BytesIO(data)
    else:
        data.seek(0)
        whole, source = box_walk(data) == data.seek(0, io.SEEK_END), data
        data.seek(0)
    if not whole:
        raise InvalidArtifact(
            "the video is truncated or has trailing bytes (its boxes do not cover the file)"
        )
    try:
        with av.open(source, "r") as container:
            if not container.streams.video:
                raise UnsupportedArtifact("the file has no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
            rate = stream.average_rate or stream.guessed_rate
            fmt = container.format.name
            info = VideoInfo(ctx.width, ctx.height, frames, Fraction(rate or 0), str(ctx.profile),
                             int(ctx.level or 0), ctx.name, str(ctx.pix_fmt), fmt)
    except av.error.FFmpegError as exc:
        raise InvalidArtifact(f"the video cannot be read (truncated or corrupt): {exc}") from exc
    if info.pix_fmt == "None" or info.width <= 0 or info.height <= 0:
        raise InvalidArtifact("the video stream has no decoder parameters (corrupt?)")
    if info.frames <= 0 or info.frame_rate <= 0:
        raise InvalidArtifact("the video stream has no frames or no frame rate")
    return info


def probe_mp4(data: bytes) -> VideoInfo:
    """Describe an MP4's H.264 stream; UnsupportedArtifact unless it fits an H.264 syntax."""
    info = probe_video(data)
    if info.codec != "h264":
        raise UnsupportedArtifact(f"MP4 video with codec {info.codec} is not supported (H.264 only)")
    if info.pix_fmt not in _PIX_FMTS or info.profile not in _PROFILES:
        raise UnsupportedArtifact(
            f"H.264 {info.profile} / {info.pix_fmt} is not supported; "
            "re-encode as 8-bit 4:2:0 High Profile (e.g. ffmpeg -profile:v high -pix_fmt yuv420p)"
        )
    return info


def transfer_syntax_for(info: VideoInfo) -> str:
    """The MPEG-4 AVC/H.264 (PS3.5 8.2.8) or HEVC (8.2.12) transfer syntax the stream fits.

    Raises UnsupportedArtifact when it fits none (then it is transcoded)."""
    if info.codec == "hevc":
        ts = _HEVC_PROFILES.get(info.profile)
        if ts is None or info.pix_fmt not in _HEVC_PIX_FMTS[info.profile]:
            raise UnsupportedArtifact(f"HEVC {info.profile} / {info.pix_fmt} has no transfer syntax")
        if info.width > 4096 or info.height > 2176:
            raise UnsupportedArtifact(f"HEVC video of {info.width}x{info.height} exceeds level 5.1")
        return ts
    if info.codec != "h264":
        raise UnsupportedArtifact(f"video codec {info.codec} has no DICOM transfer syntax")
    if info.pix_fmt not in _PIX_FMTS or info.profile not in _PROFILES:
        raise UnsupportedArtifact(f"H.264 {info.profile} / {info.pix_fmt} has no transfer syntax")
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


def box_walk(f: BinaryIO) -> int:
    """:func:`mp4_length` of a seekable file, reading only the box headers."""
    pos, end = 0, f.seek(0, io.SEEK_END)
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(16)
        (size,) = struct.unpack(">I", head[:4])
        if size == 1 and len(head) == 16:
            (size,) = struct.unpack(">Q", head[8:16])
        elif size == 0:
            return end
        if size < 8 or pos + size > end:
            break
        pos += size
    f.seek(0)
    return pos


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


def stored_as_is(info: VideoInfo, media_type: str) -> tuple[str | None, bool]:
    """The transfer syntax the stream fits (None: none), and whether the file is stored as it came
    (an MP4 declared as one, its stream fitting); otherwise it is remuxed if it fits, else
    transcoded, and the original is kept too."""
    try:
        ts: str | None = transfer_syntax_for(info)
    except UnsupportedArtifact:
        ts = None
    return ts, ts is not None and media_type == MEDIA_TYPE and info.container.startswith("mov,mp4")


def _convert(source: bytes | BinaryIO, sink: BinaryIO | io.RawIOBase,
             work: Callable[[InputContainer, OutputContainer], None],
             options: dict[str, str] | None = None) -> None:
    """Open ``source`` and an MP4 muxer on ``sink``; ``work(input, output)`` moves the packets."""
    src = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        src.seek(0)
        with av.open(src, "r") as inp, av.open(sink, "w", format="mp4", options=options or {}) as out:
            work(inp, out)
    except av.error.FFmpegError as exc:
        raise InvalidArtifact(f"the video cannot be converted (corrupt?): {exc}") from exc


def _audio_to_copy(source: InputContainer) -> AudioStream | None:
    audio = source.streams.audio
    return audio[0] if audio and audio[0].codec_context.name in _COPY_AUDIO else None


def _remux(source: InputContainer, out: OutputContainer) -> None:
    """The same video (and AAC/MP3 audio) packets into ``out``: no decoding, no loss."""
    pairs = {}
    for stream in filter(None, [source.streams.video[0], _audio_to_copy(source)]):
        pairs[stream.index] = out.add_stream_from_template(stream)
    for packet in source.demux(*[source.streams[i] for i in pairs]):
        if packet.dts is None:
            continue
        packet.stream = pairs[packet.stream.index]
        out.mux(packet)


def _fit(width: int, height: int) -> tuple[int, int]:
    """The size within 1920x1080 (either way round), aspect kept, even numbers."""
    big, small = (1920, 1080) if width >= height else (1080, 1920)
    scale = min(1.0, big / width, small / height)
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _transcode(source: InputContainer, out: OutputContainer) -> None:
    """H.264 High Profile 8-bit 4:2:0 (level 4.1, 4.2 above 30 frames/s) into ``out``, one frame
    decoded at a time; AAC/MP3 audio copied."""
    vin = source.streams.video[0]
    rate = vin.average_rate or vin.guessed_rate or Fraction(25)
    if rate > 60:
        raise UnsupportedArtifact(f"video at {float(rate):.0f} frames/s is above H.264 level 4.2's 60")
    width, height = _fit(vin.codec_context.width, vin.codec_context.height)
    vout = out.add_stream("libx264", rate=rate)
    vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
    vout.options = {"profile": "high", "level": "4.1" if rate <= 30 else "4.2",
                    "preset": "veryfast", "crf": "18"}
    ain = _audio_to_copy(source)
    aout = out.add_stream_from_template(ain) if ain is not None else None
    streams = [vin] + ([ain] if ain is not None else [])
    tick, count = 1 / Fraction(rate), 0
    for packet in source.demux(*streams):
        if aout is not None and packet.stream is ain:  # aout: ain's copy
            if packet.dts is not None:
                packet.stream = aout
                out.mux(packet)
            continue
        for decoded in packet.decode():
            assert isinstance(decoded, av.VideoFrame)  # the one stream left is the video
            frame = decoded.reformat(width=width, height=height, format="yuv420p")
            frame.pts, frame.time_base = count, tick  # frames in order, constant rate
            count += 1
            out.mux(vout.encode(frame))
    out.mux(vout.encode(None))


def remux_to_mp4(data: bytes) -> bytes:
    """The MP4 :func:`_remux` makes, in memory (never a clear temporary file)."""
    sink = io.BytesIO()
    _convert(data, sink, _remux)
    return sink.getvalue()


def transcode_to_h264(data: bytes) -> bytes:
    """The MP4 :func:`_transcode` makes, in memory."""
    sink = io.BytesIO()
    _convert(data, sink, _transcode)
    return sink.getvalue()


def encapsulate_video(
    data: bytes,
    *,
    media_type: str,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str,
    title: str,
    series_description: str,
    content_datetime: datetime,
) -> Dataset:
    """A Video Photographic Image object for an MP4 or MOV, as this module's docstring says."""
    info = probe_video(data)
    fitting, as_is = stored_as_is(info, media_type)
    if as_is and fitting is not None:
        mp4, kept, ts = data, False, fitting
    else:
        mp4 = remux_to_mp4(data) if fitting is not None else transcode_to_h264(data)
        info = probe_video(mp4)
        ts, kept = transfer_syntax_for(info), True
    ds = _video_dataset(mp4, info, ts, patient=patient, study=study, title=title,
                        series_description=series_description, content_datetime=content_datetime)
    if kept:
        ds.ImageType = ["DERIVED", "PRIMARY"]
    record_provenance(ds, Provenance(media_type, filename, data, keep_bytes=kept, after_pixels=True))
    return finish(ds, ts)


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
    """An H.264 MP4 as is (UnsupportedArtifact if it fits no H.264 transfer syntax)."""
    info = probe_mp4(data)
    ts = transfer_syntax_for(info)
    ds = _video_dataset(data, info, ts, patient=patient, study=study, title=title,
                        series_description=series_description, content_datetime=content_datetime)
    record_provenance(ds, Provenance(MEDIA_TYPE, filename, data))
    return finish(ds, ts)


def _video_dataset(mp4: bytes | None, info: VideoInfo, ts: str, *, patient: PatientInfo,
                   study: StudyInfo, title: str, series_description: str,
                   content_datetime: datetime) -> Dataset:
    """Video Photographic Image modules (PS3.3 A.32.7) around the MP4 in the Pixel Data."""
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
    # Image Pixel as PS3.5 8.2.8 (H.264) and 8.2.12 (HEVC) require
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows = info.height
    ds.Columns = info.width
    ds.BitsAllocated = 8  # VL Image module (C.8.12.1): 8 bits only
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_23008_2" if info.codec == "hevc" else "ISO_14496_10"
    if mp4 is not None:  # (video_stream.py writes the Pixel Data itself)
        ds.PixelData = encapsulate([mp4], has_bot=False)
        ds["PixelData"].VR = "OB"
    return ds


def extract_video(ds: Dataset, media_type: str, filename: str, size: int | None) -> Original:
    """The original video: the kept MOV/other file, else the MP4 in the Pixel Data."""
    kept = private_value(ds, EL_ORIGINAL_BYTES)
    if isinstance(kept, bytes) and media_type:
        return Original(kept[:size] if size else kept, media_type, filename)
    return extract_mp4(ds, filename, size)


def extract_mp4(ds: Dataset, filename: str, size: int | None) -> Original:
    """The MP4 file back from the Pixel Data fragments."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts not in _VIDEO_SYNTAXES:
        raise UnsupportedArtifact(f"cannot extract MP4 from transfer syntax {ts.name}")
    # The first item is the Basic Offset Table (PS3.5 A.4), not video data.
    data = b"".join(islice(generate_fragments(ds.PixelData), 1, None))
    if size is None:
        size = mp4_length(data)
    return Original(data[:size], MEDIA_TYPE, filename)
