"""WAV (PCM) <-> General Audio Waveform Storage (PS3.3 A.34.4; Waveform module C.10.9).

The samples go unchanged into one multiplex group (interleaved channels, as
in WAV). The bytes of the WAV around its samples (RIFF header, ``fmt`` and
any other chunks) are kept in the private block (see ``common``), so the
same WAV comes back byte for byte.

The stdlib ``wave`` module checks the format; the chunk walk is hand-written
because ``wave`` does not expose where the ``data`` chunk starts.
"""

from __future__ import annotations

import io
import struct
import wave
from datetime import datetime

from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from .common import (
    EL_PREFIX,
    EL_SUFFIX,
    Provenance,
    base_dataset,
    finish,
    private_value,
    record_provenance,
)
from .errors import InvalidArtifact, UnsupportedArtifact
from .model import Original, PatientInfo, StudyInfo

GENERAL_AUDIO_WAVEFORM_STORAGE = "1.2.840.10008.5.1.4.1.1.9.4.2"
MEDIA_TYPE = "audio/wav"
_INTERPRETATION = {1: "UB", 2: "SS"}  # WAV PCM: 8-bit unsigned, 16-bit signed LE
_LABELS = {1: ["Mono"], 2: ["Left", "Right"]}


def _data_chunk(data: bytes) -> tuple[int, int]:
    """Offset and length of the ``data`` chunk of a RIFF/WAVE file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidArtifact("not a RIFF/WAVE file")
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        if cid == b"data":
            if pos + 8 + size > len(data):
                raise InvalidArtifact(
                    "the WAV is truncated (data chunk shorter than its header says)"
                )
            return pos + 8, size
        pos += 8 + size + (size & 1)
    raise InvalidArtifact("the WAV has no data chunk (truncated?)")


def waveform_dataset(
    samples: bytes,
    *,
    channels: int,
    width: int,
    frames: int,
    rate: int,
    originality: str,
    patient: PatientInfo,
    study: StudyInfo,
    title: str,
    series_description: str,
    content_datetime: datetime,
) -> Dataset:
    """A General Audio Waveform object of interleaved linear PCM ``samples``: 1 or 2 channels of
    ``width`` bytes each (8-bit unsigned, 16-bit signed), one multiplex group (PS3.3 A.34.2)."""
    ds = base_dataset(
        sop_class_uid=GENERAL_AUDIO_WAVEFORM_STORAGE,
        modality="AU",
        patient=patient,
        study=study,
        series_description=series_description,
        content_datetime=content_datetime,
    )
    # Waveform Identification (C.10.8)
    ds.AcquisitionDateTime = content_datetime.strftime("%Y%m%d%H%M%S")
    ds.AcquisitionContextSequence = []  # Acquisition Context (C.7.6.14), type 2
    group = Dataset()
    group.WaveformOriginality = originality  # DERIVED when decoded from a coded file (C.10.9.1.1)
    group.NumberOfWaveformChannels = channels
    group.NumberOfWaveformSamples = frames
    group.SamplingFrequency = str(rate)
    group.MultiplexGroupLabel = title[:64] if title else "Audio"
    group.ChannelDefinitionSequence = []
    for label in _LABELS[channels]:
        ch = Dataset()
        ch.ChannelLabel = label
        src = Dataset()
        src.CodeValue = codes.DCM.Voice.value
        src.CodingSchemeDesignator = "DCM"
        src.CodeMeaning = codes.DCM.Voice.meaning
        ch.ChannelSourceSequence = [src]
        ch.ChannelSampleSkew = "0"  # channels are sampled together (C.10.9.1.4.3)
        ch.WaveformBitsStored = 8 * width
        group.ChannelDefinitionSequence.append(ch)
    group.WaveformBitsAllocated = 8 * width
    group.WaveformSampleInterpretation = _INTERPRETATION[width]
    group.WaveformData = samples + b"\x00" if len(samples) % 2 else samples
    group["WaveformData"].VR = "OB" if width == 1 else "OW"
    ds.WaveformSequence = [group]
    return ds


def encapsulate_wav(
    data: bytes,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str,
    title: str,
    series_description: str,
    content_datetime: datetime,
) -> Dataset:
    """Build a General Audio Waveform object from a PCM WAV."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
    except (wave.Error, EOFError) as exc:
        raise UnsupportedArtifact(f"only PCM WAV is supported: {exc}") from exc
    if channels not in (1, 2) or width not in (1, 2):
        raise UnsupportedArtifact(
            f"WAV with {channels} channel(s) of {8 * width}-bit samples is not supported "
            "(General Audio Waveform: 1 or 2 channels, 8 or 16 bit)"
        )
    offset, size = _data_chunk(data)
    n = frames * channels * width
    if n == 0 or size < n:
        raise InvalidArtifact("the WAV has no samples or is truncated")
    samples = data[offset : offset + n]
    ds = waveform_dataset(samples, channels=channels, width=width, frames=frames, rate=rate,
                          originality="ORIGINAL", patient=patient, study=study, title=title,
                          series_description=series_description, content_datetime=content_datetime)
    prov = Provenance(MEDIA_TYPE, filename, data, prefix=data[:offset], suffix=data[offset + n :])
    record_provenance(ds, prov)
    return finish(ds, ExplicitVRLittleEndian)


def extract_wav(ds: Dataset, filename: str, size: int | None) -> Original:
    """The WAV back: original framing around the samples, or a fresh header."""
    group = ds.WaveformSequence[0]
    bits = int(group.WaveformBitsAllocated)
    channels = int(group.NumberOfWaveformChannels)
    if bits not in (8, 16) or len(ds.WaveformSequence) != 1:
        raise UnsupportedArtifact("only one multiplex group of 8- or 16-bit audio can become a WAV")
    n = int(group.NumberOfWaveformSamples) * channels * bits // 8
    samples = bytes(group.WaveformData)[:n]
    prefix, suffix = private_value(ds, EL_PREFIX), private_value(ds, EL_SUFFIX)
    if isinstance(prefix, bytes) and isinstance(suffix, bytes):
        # The suffix may carry an even-length pad (PS3.5 7.1.1): cut at the original size.
        whole = prefix + samples + suffix
        return Original(whole[:size] if size else whole, MEDIA_TYPE, filename)
    if (bits, group.WaveformSampleInterpretation) not in ((8, "UB"), (16, "SS")):
        raise UnsupportedArtifact("only linear PCM (UB 8-bit, SS 16-bit) can become a WAV")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(bits // 8)
        w.setframerate(round(float(group.SamplingFrequency)))
        w.writeframes(samples)
    return Original(out.getvalue(), MEDIA_TYPE, filename)
