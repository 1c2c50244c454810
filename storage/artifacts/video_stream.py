"""Long videos in bounded memory: a video file -> a Video Photographic Part 10 stream.

The same object :func:`.video.encapsulate_video` builds in memory, written piece by piece instead:
the header through pydicom (no Pixel Data, no kept original), then the encapsulated Pixel Data
(PS3.5 A.4: undefined length, an empty Basic Offset Table item, one fragment with the MP4, the
sequence delimiter) and, when the original is kept, the trailing private block (group 0x7FE1,
``common``) copied from the source in 1 MiB chunks. The SHA-256 is computed while reading.

Remuxing and transcoding write a *fragmented* MP4 (``frag_keyframe+empty_moov``: no seek back)
into the caller's sink, e.g. an :class:`storage.spool.EncryptedSpool`, so nothing is in memory but
a frame and a chunk, and nothing is on disk in clear. The raw element writing is hand-written
because pydicom writes a dataset from values it holds in memory.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from datetime import datetime
from typing import BinaryIO

import pydicom

from .about import record_about
from .common import (
    DICOM_MAX_VALUE_LENGTH,
    EL_FILENAME,
    EL_MEDIA_TYPE,
    EL_ORIGINAL_BYTES,
    EL_SHA256,
    EL_SIZE,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    TRAILING_GROUP,
    finish,
)
from .detect import detect_media_type
from .errors import ArtifactError, ArtifactTooLarge, UnsupportedArtifact
from .model import PatientInfo, StudyInfo
from .video import (
    VIDEO_MEDIA_TYPES,
    _convert,
    _remux,
    _transcode,
    _video_dataset,
    has_video,
    probe_video,
    stored_as_is,
    transfer_syntax_for,
)

CHUNK = 1 << 20
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


class _WriteOnly(io.RawIOBase):
    """A sink FFmpeg cannot seek in (so the MP4 muxer writes fragments front to back)."""

    def __init__(self, sink: BinaryIO) -> None:
        super().__init__()
        self._sink = sink

    def writable(self) -> bool:
        return True

    # Narrower than RawIOBase.write's buffer: FFmpeg writes bytes.
    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self._sink.write(data)


def _copy(src: BinaryIO, dest: BinaryIO, n: int, digest: hashlib._Hash | None = None) -> None:
    src.seek(0)
    left = n
    while left > 0:
        chunk = src.read(min(CHUNK, left))
        if not chunk:
            raise UnsupportedArtifact("the video file shrank while it was being read")
        if digest is not None:
            digest.update(chunk)
        dest.write(chunk)
        left -= len(chunk)


def _sha256(src: BinaryIO) -> str:
    src.seek(0)
    h = hashlib.sha256()
    while chunk := src.read(CHUNK):
        h.update(chunk)
    src.seek(0)
    return h.hexdigest()


def streamed_video_kind(src: BinaryIO, filename: str | None, declared: str | None) -> str | None:
    """The video media type (MP4 or MOV) of the seekable file ``src`` when it goes the
    bounded-memory way (:func:`write_video`); None for anything else (an MP4 with sound only is
    a dictation; a file whose head is not recognised is judged whole by the in-memory path,
    which gives the reason)."""
    src.seek(0)
    head = src.read(1 << 16)
    src.seek(0)
    if not head:
        return None
    try:
        kind = detect_media_type(head, filename, declared)
    except ArtifactError:
        return None
    return kind if kind in VIDEO_MEDIA_TYPES and has_video(src) else None


def _size(f: BinaryIO) -> int:
    n = f.seek(0, io.SEEK_END)
    f.seek(0)
    return n


def write_video(
    src: BinaryIO,
    dest: BinaryIO,
    *,
    media_type: str,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str,
    title: str,
    series_description: str,
    content_datetime: datetime,
    about: str | None = None,
    new_sink: Callable[[], BinaryIO] = io.BytesIO,
    amend: Callable[[pydicom.Dataset], None] | None = None,
) -> pydicom.Dataset:
    """Write the Part 10 object for the video in ``src`` (seekable) to ``dest``; returns its
    header dataset. ``new_sink()`` gives the file a remuxed/transcoded MP4 is written to (and
    read back from): pass an encrypted spool for long videos. ``amend(ds)`` may change the
    complete header (File Meta included) before it is written, e.g. lay a STOW-RS request's
    attributes over it; it may raise to refuse the object before any Pixel Data is written."""
    size = _size(src)
    if size > DICOM_MAX_VALUE_LENGTH - 1:
        raise ArtifactTooLarge(f"the video is {size} bytes; one DICOM fragment holds < 4 GiB")
    info = probe_video(src)
    fitting, as_is = stored_as_is(info, media_type)
    kept = not as_is
    pixels: BinaryIO = src
    if as_is and fitting is not None:
        ts = fitting
    else:
        pixels = new_sink()
        _convert(src, _WriteOnly(pixels), _remux if fitting is not None else _transcode, _FRAGMENTED)
        pixels.seek(0)
        info = probe_video(pixels)
        ts = transfer_syntax_for(info)
    mp4_size = _size(pixels)
    if mp4_size > DICOM_MAX_VALUE_LENGTH - 1:
        raise ArtifactTooLarge("the converted video is over 4 GiB; one DICOM fragment holds less")
    ds = _video_dataset(None, info, ts, patient=patient, study=study, title=title,
                        series_description=series_description, content_datetime=content_datetime)
    if kept:
        ds.ImageType = ["DERIVED", "PRIMARY"]
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(EL_MEDIA_TYPE, "LO", media_type)
    block.add_new(EL_FILENAME, "UT", filename)
    block.add_new(EL_SIZE, "UL", size)
    block.add_new(EL_SHA256, "LO", _sha256(src))
    if about:
        record_about(ds, about)
    finish(ds, ts)
    if amend is not None:
        amend(ds)
    pydicom.dcmwrite(dest, ds, enforce_file_format=True)
    # Pixel Data (7FE0,0010) OB, undefined length: empty BOT item, one fragment, delimiter.
    dest.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
    dest.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
    dest.write(struct.pack("<HHI", 0xFFFE, 0xE000, mp4_size + (mp4_size & 1)))
    _copy(pixels, dest, mp4_size)
    dest.write(b"\x00" * (mp4_size & 1))
    dest.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    if kept:  # the trailing block: creator (7FE1,0010), then (7FE1,1005) the original
        creator = PRIVATE_CREATOR.encode("ascii")
        creator += b" " * (len(creator) & 1)
        dest.write(struct.pack("<HH2sH", TRAILING_GROUP, 0x0010, b"LO", len(creator)) + creator)
        dest.write(struct.pack("<HH2sHI", TRAILING_GROUP, 0x1000 | EL_ORIGINAL_BYTES, b"OB", 0,
                               size + (size & 1)))
        _copy(src, dest, size)
        dest.write(b"\x00" * (size & 1))
    return ds
