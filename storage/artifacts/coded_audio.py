"""MP3, M4A/AAC and Ogg (Opus, Vorbis) dictations -> General Audio Waveform (PS3.3 A.34.4).

A DICOM waveform holds linear samples (Waveform module C.10.9), so the coded audio is decoded
with PyAV (FFmpeg's libraries, in process) to 16-bit signed PCM (``SS``) in one multiplex group:
mono stays mono, anything with more channels is mixed down to stereo (General Audio Waveform
allows one or two channels), and rates above 44.1 kHz are resampled to 44.1 kHz.

The coded file itself is kept in the private "original" block (``common``, element xx05), so the
same MP3/M4A/Ogg comes back byte for byte with its media type, while any viewer that plays DICOM
waveforms plays the PCM. Decoding runs frame by frame; memory is the PCM plus the original.
"""

from __future__ import annotations

import io
from datetime import datetime

import av
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from .audio import waveform_dataset
from .common import (
    DICOM_MAX_VALUE_LENGTH,
    EL_ORIGINAL_BYTES,
    Provenance,
    finish,
    private_value,
    record_provenance,
)
from .errors import ArtifactTooLarge, InvalidArtifact, UnsupportedArtifact
from .model import Original, PatientInfo, StudyInfo

MAX_RATE = 44100
# media type -> (PyAV container format names that fit it, codecs accepted in it)
CODED_AUDIO: dict[str, tuple[set[str], set[str]]] = {
    "audio/mpeg": ({"mp3"}, {"mp3", "mp3float"}),
    "audio/mp4": ({"mov", "mp4", "m4a", "3gp", "3g2", "mj2"}, {"aac", "alac", "mp3", "mp3float"}),
    "audio/aac": ({"aac"}, {"aac"}),
    "audio/ogg": ({"ogg"}, {"opus", "libopus", "vorbis", "libvorbis", "flac"}),
}


def _decode(data: bytes, media_type: str) -> tuple[bytes, int, int]:
    """(interleaved s16 samples, channels, rate) of the first audio stream."""
    formats, codecs_ok = CODED_AUDIO[media_type]
    chunks: list[bytes] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not set(container.format.name.split(",")) & formats:
                raise InvalidArtifact(
                    f"the content is {container.format.long_name}, not {media_type}")
            if not container.streams.audio:
                raise InvalidArtifact(f"the {media_type} file has no audio stream")
            stream = container.streams.audio[0]
            codec = stream.codec_context.name
            if codec not in codecs_ok:
                raise UnsupportedArtifact(f"{media_type} with codec {codec} is not supported")
            channels = 1 if stream.codec_context.channels == 1 else 2
            rate = min(int(stream.codec_context.sample_rate or 0), MAX_RATE)
            if rate <= 0:
                raise InvalidArtifact("the audio stream has no sample rate (corrupt?)")
            resampler = av.AudioResampler(format="s16", layout="mono" if channels == 1 else "stereo",
                                          rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().tobytes()
                    total += len(chunk)
                    if total > DICOM_MAX_VALUE_LENGTH - 1:
                        raise ArtifactTooLarge("the decoded audio exceeds a DICOM waveform's 4 GiB")
                    chunks.append(chunk)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().tobytes())
    except av.error.FFmpegError as exc:
        raise InvalidArtifact(f"the {media_type} file cannot be decoded (truncated or corrupt): "
                              f"{exc}") from exc
    samples = b"".join(chunks)
    if not samples:
        raise InvalidArtifact(f"no audio could be decoded from the {media_type} file")
    return samples, channels, rate


def encapsulate_coded_audio(
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
    """A General Audio Waveform object: decoded PCM, the coded original kept privately."""
    samples, channels, rate = _decode(data, media_type)  # 16-bit signed, 1 or 2 channels
    ds = waveform_dataset(samples, channels=channels, width=2, frames=len(samples) // (2 * channels),
                          rate=rate, originality="DERIVED", patient=patient, study=study,
                          title=title, series_description=series_description,
                          content_datetime=content_datetime)
    record_provenance(ds, Provenance(media_type, filename, data, keep_bytes=True, after_pixels=True))
    return finish(ds, ExplicitVRLittleEndian)


def extract_coded_audio(ds: Dataset, media_type: str, filename: str) -> Original | None:
    """The kept MP3/M4A/Ogg, or None when the object holds no coded original."""
    kept = private_value(ds, EL_ORIGINAL_BYTES)
    if media_type not in CODED_AUDIO or not isinstance(kept, bytes):
        return None
    size = private_value(ds, 0x03)
    return Original(kept[:size] if isinstance(size, int) else kept, media_type, filename)
