"""storage.artifacts, issue 21: what voice recorders, phones and scanners produce.

MP3/M4A/Ogg dictations, HEVC and QuickTime phone videos (and codecs DICOM has no syntax for),
HEIC photos, EXIF-rotated JPEGs, multi-page TIFF scans and animated GIFs: each made here by the
real tools (ffmpeg CLI, Pillow, pillow-heif), encapsulated, written, read back, checked by
dciodvfy, and the original compared byte for byte.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.uid import HEVCM10P51, HEVCMP51, MPEG4HP41, ExplicitVRLittleEndian

from storage.artifacts import (
    InvalidArtifact,
    PatientInfo,
    StudyInfo,
    UnsupportedArtifact,
    about_study,
    detect_media_type,
    encapsulate,
    encapsulate_all,
    extract_original,
    note_text,
)
from tests import data_artifacts as samples
from tests.test_artifacts import dciodvfy, errors

PATIENT = PatientInfo("PAT-21", "Doe^Jane", birth_date="19700102", sex="F")
STUDY = StudyInfo(study_description="Phone uploads", accession_number="A21", study_id="S21")
AUDIO = "1.2.840.10008.5.1.4.1.1.9.4.2"
VIDEO = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("dciodvfy") is None,
    reason="needs ffmpeg and dicom3tools (scripts/test installs them)")


def roundtrip(ds: pydicom.Dataset, tmp_path: Path, name: str = "obj.dcm") -> tuple[Path, pydicom.Dataset]:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


# --- dictations ------------------------------------------------------------------------------

AUDIO_CASES = {
    "mp3": ("dictation.mp3", "audio/mpeg", lambda: samples.make_mp3(rate=8000)),
    "mp3-stereo-48k": ("memo.mp3", "audio/mpeg", lambda: samples.make_mp3(rate=48000, channels=2)),
    "m4a": ("memo.m4a", "audio/mp4", lambda: samples.make_m4a()),
    "aac-adts": ("memo.aac", "audio/aac", lambda: samples.make_aac()),
    "ogg-opus": ("voice.ogg", "audio/ogg", lambda: samples.make_ogg_opus()),
}


@pytest.mark.parametrize("case", list(AUDIO_CASES))
def test_coded_audio_becomes_pcm_waveform(tmp_path: Path, case: str) -> None:
    name, media, make = AUDIO_CASES[case]
    data = make()
    assert detect_media_type(data, name) == media
    ds = encapsulate(data, patient=PATIENT, study=STUDY, filename=name)
    path, back = roundtrip(ds, tmp_path)
    assert back.SOPClassUID == AUDIO and back.Modality == "AU"
    group = back.WaveformSequence[0]
    assert group.WaveformSampleInterpretation == "SS" and group.WaveformBitsAllocated == 16
    assert float(group.SamplingFrequency) <= 44100
    channels = int(group.NumberOfWaveformChannels)
    assert channels in (1, 2)
    assert group.NumberOfWaveformSamples > 0.3 * float(group.SamplingFrequency)  # ~0.5 s of sound
    pcm = bytes(group.WaveformData)
    assert len(pcm) == group.NumberOfWaveformSamples * channels * 2 and any(pcm)
    original = extract_original(back)
    assert (original.data, original.media_type, original.filename) == (data, media, name)
    # dciodvfy (2022) has no General Audio Waveform IOD: it says only that it cannot find one.
    assert errors(dciodvfy(path)) == ["Error - Information Object Not found"]
    if channels == 1 and float(group.SamplingFrequency) == 8000:
        # Same modules as Basic Voice Audio (A.34.2), which dciodvfy knows: check them there.
        back.SOPClassUID = back.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.4.1"
        voice = tmp_path / "voice.dcm"
        back.save_as(voice, enforce_file_format=True)
        lines = dciodvfy(voice)
        assert "BasicVoice" in lines and errors(lines) == []


def test_audio_mislabelled_and_broken_refused() -> None:
    mp3 = samples.make_mp3()
    with pytest.raises(InvalidArtifact, match="audio/wav"):
        encapsulate(mp3, patient=PATIENT, study=STUDY, filename="dictation.wav")
    with pytest.raises(InvalidArtifact, match="audio/mpeg"):
        encapsulate(samples.make_png(), patient=PATIENT, study=STUDY, filename="dictation.mp3")
    with pytest.raises(InvalidArtifact, match="audio/mpeg"):
        encapsulate(mp3, patient=PATIENT, study=STUDY, media_type="image/png")
    # An MP3 frame header followed by noise: nothing decodes.
    with pytest.raises(InvalidArtifact):
        encapsulate(mp3[:4] + bytes(range(256)) * 4, patient=PATIENT, study=STUDY,
                    filename="cut.mp3")
    with pytest.raises(InvalidArtifact):
        encapsulate(b"OggS" + b"\x00" * 200, patient=PATIENT, study=STUDY, filename="v.ogg")


# --- video -----------------------------------------------------------------------------------

VIDEO_CASES = {
    # name: (file name, media type, maker, transfer syntax, Pixel Data is the original)
    "hevc-mp4": ("clip.mp4", "video/mp4", lambda: samples.make_video(".mp4"), HEVCMP51, True),
    "hevc-mov": ("IMG_0001.MOV", "video/quicktime", lambda: samples.make_video(".mov", audio=True),
                 HEVCMP51, False),
    "hevc10-mov": ("HDR.MOV", "video/quicktime",  # HDR: HEVC Main 10, no 8-bit syntax: H.264
                   lambda: samples.make_video(".mov", extra=("-pix_fmt", "yuv420p10le")),
                   MPEG4HP41, False),
    "h264-mov": ("clip.mov", "video/quicktime",
                 lambda: samples.make_video(".mov", codec="libx264"), MPEG4HP41, False),
    "mpeg4-mp4": ("old.mp4", "video/mp4",
                  lambda: samples.make_video(".mp4", codec="mpeg4", audio=True), MPEG4HP41, False),
    "mjpeg-mov": ("us.mov", "video/quicktime", lambda: samples.make_video(".mov", codec="mjpeg"),
                  MPEG4HP41, False),
    "h264-1440p": ("big.mp4", "video/mp4",
                   lambda: samples.make_video(".mp4", codec="libx264", size="2560x1440",
                                              seconds=0.2), MPEG4HP41, False),
}


@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_video_in_standard_syntax_original_back(tmp_path: Path, case: str) -> None:
    name, media, make, ts, as_is = VIDEO_CASES[case]
    data = make()
    ds = encapsulate(data, patient=PATIENT, study=STUDY, filename=name, title="Gait")
    path, back = roundtrip(ds, tmp_path)
    assert back.SOPClassUID == VIDEO and back.file_meta.TransferSyntaxUID == ts
    assert back.NumberOfFrames >= 5 and back.Rows <= 2160 and back.Columns <= 4096
    if case == "h264-1440p":
        assert (back.Columns, back.Rows) == (1920, 1080)  # scaled to fit level 4.1
    original = extract_original(back)
    assert (original.data, original.media_type, original.filename) == (data, media, name)
    from pydicom.encaps import generate_fragments

    fragments = list(generate_fragments(back.PixelData))
    mp4 = b"".join(fragments[1:])
    assert (mp4[: len(data)] == data) == as_is
    assert mp4[4:8] == b"ftyp"  # an MP4 in the Pixel Data, whatever came in
    assert errors(dciodvfy_video(path, back, tmp_path)) == []


HEVC_GAP = {  # dicom3tools 2022 does not know the HEVC transfer syntaxes (PS3.5 8.2.12, 2016)
    "Error - Undefined value length of other byte/word element is illegal in non-encapsulated "
    "transfer syntax",
    "Error - Dicom dataset read failed",
    "Error - Missing attribute Type 1C Conditional Element=<PixelData> Module=<ImagePixel>",
}


def dciodvfy_video(path: Path, back: pydicom.Dataset, tmp_path: Path) -> list[str]:
    """dciodvfy's lines; for HEVC, its known gap checked and the modules checked under H.264."""
    lines = dciodvfy(path)
    if back.file_meta.TransferSyntaxUID not in (HEVCMP51, HEVCM10P51):
        return lines
    assert set(errors(lines)) == HEVC_GAP
    back.file_meta.TransferSyntaxUID = MPEG4HP41  # same encapsulation, a syntax it knows
    same = tmp_path / "as-h264.dcm"
    back.save_as(same, enforce_file_format=True)
    return dciodvfy(same)


def test_video_broken_and_mislabelled_refused() -> None:
    mov = samples.make_video(".mov")
    with pytest.raises(InvalidArtifact, match="truncated"):
        encapsulate(mov[: len(mov) // 2], patient=PATIENT, study=STUDY, filename="cut.mov")
    with pytest.raises(InvalidArtifact, match="video/quicktime"):
        encapsulate(samples.make_jpeg(), patient=PATIENT, study=STUDY, filename="clip.mov")
    with pytest.raises(InvalidArtifact, match="video/quicktime"):
        encapsulate(mov, patient=PATIENT, study=STUDY, filename="clip.pdf")


def test_audio_only_mp4_is_a_dictation(tmp_path: Path) -> None:
    m4a = samples.make_m4a()
    ds = encapsulate(m4a, patient=PATIENT, study=STUDY, filename="memo.mp4")
    _, back = roundtrip(ds, tmp_path)
    assert back.SOPClassUID == AUDIO
    assert extract_original(back).data == m4a


# --- photos and scans ------------------------------------------------------------------------


def _upright(data: bytes) -> Image.Image:
    from PIL import ImageOps

    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def test_heic_photo(tmp_path: Path) -> None:
    heic = samples.make_heic(40, 24)
    assert detect_media_type(heic, "IMG_0002.HEIC") == "image/heic"
    ds = encapsulate(heic, patient=PATIENT, study=STUDY, filename="IMG_0002.HEIC")
    path, back = roundtrip(ds, tmp_path)
    assert back.SOPClassUID == PHOTO and back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (back.Columns, back.Rows, back.PhotometricInterpretation) == (40, 24, "RGB")
    assert back.LossyImageCompression == "01"
    original = extract_original(back)
    assert (original.data, original.media_type) == (heic, "image/heic")
    import pillow_heif

    pillow_heif.register_heif_opener()
    assert back.pixel_array.tobytes() == Image.open(io.BytesIO(heic)).convert("RGB").tobytes()
    assert errors(dciodvfy(path)) == []


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied_to_pixels(tmp_path: Path, orientation: int) -> None:
    jpeg = samples.make_rotated_jpeg(64, 48, orientation)
    ds = encapsulate(jpeg, patient=PATIENT, study=STUDY, filename="phone.jpg")
    path, back = roundtrip(ds, tmp_path)
    upright = _upright(jpeg)
    assert (back.Columns, back.Rows) == upright.size == ((48, 64) if orientation != 3 else (64, 48))
    assert back.pixel_array.tobytes() == upright.tobytes()
    assert extract_original(back).data == jpeg  # the file itself untouched
    assert errors(dciodvfy(path)) == []


def test_heic_orientation_applied(tmp_path: Path) -> None:
    heic = samples.make_heic(40, 24, orientation=6)
    _, back = roundtrip(encapsulate(heic, patient=PATIENT, study=STUDY, filename="r.heic"),
                        tmp_path)
    assert (back.Columns, back.Rows) == (24, 40)


@pytest.mark.parametrize("fmt", ["TIFF", "GIF"])
def test_multipage_one_object_per_page(tmp_path: Path, fmt: str) -> None:
    data = samples.make_multipage(fmt)
    name = f"scan.{fmt.lower()}"
    with pytest.raises(UnsupportedArtifact, match="3 pages"):
        encapsulate(data, patient=PATIENT, study=STUDY, filename=name)
    objects = encapsulate_all(data, patient=PATIENT, study=STUDY, filename=name, title="Lab")
    assert len(objects) == 3
    assert len({o.SeriesInstanceUID for o in objects}) == 1
    assert len({o.SOPInstanceUID for o in objects}) == 3
    assert len({o.StudyInstanceUID for o in objects}) == 1
    src = Image.open(io.BytesIO(data))
    for number, ds in enumerate(objects, start=1):
        path, back = roundtrip(ds, tmp_path, f"p{number}.dcm")
        assert back.InstanceNumber == number and back.ImageComments == f"Lab (page {number} of 3)"
        src.seek(number - 1)
        page = src.convert("RGB")
        assert (back.Columns, back.Rows) == page.size
        assert back.pixel_array.tobytes() == page.tobytes()
        assert errors(dciodvfy(path)) == []
        original = extract_original(back)
        if number == 1:
            assert (original.data, original.media_type, original.filename) == (
                data, f"image/{fmt.lower()}", name)
        else:
            assert original.media_type == "image/png"
            assert Image.open(io.BytesIO(original.data)).convert("RGB").tobytes() == page.tobytes()


def test_broken_images_refused() -> None:
    heic = samples.make_heic()
    with pytest.raises(InvalidArtifact):
        encapsulate(heic[: len(heic) // 2], patient=PATIENT, study=STUDY, filename="cut.heic")
    with pytest.raises(InvalidArtifact, match="image/heic"):
        encapsulate(heic, patient=PATIENT, study=STUDY, filename="photo.jpg")
    tiff = samples.make_multipage("TIFF")
    with pytest.raises(InvalidArtifact):
        encapsulate_all(tiff[: len(tiff) - 200], patient=PATIENT, study=STUDY, filename="s.tif")


# --- about a study ---------------------------------------------------------------------------

LAB = "1.2.826.0.1.3680043.8.498.77"


def test_about_recorded_in_every_kind(tmp_path: Path) -> None:
    for name, data in [("note.txt", b"Blood chemistry of 2/14 indicates normal values.\n"),
                       ("d.mp3", samples.make_mp3()), ("p.heic", samples.make_heic()),
                       ("v.mov", samples.make_video(".mov")), ("l.pdf", samples.make_pdf())]:
        path, back = roundtrip(encapsulate(data, patient=PATIENT, study=STUDY, filename=name,
                                           about=LAB), tmp_path, name + ".dcm")
        assert about_study(back) == LAB
        [item] = back.ReferencedStudySequence
        assert item.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.1"
        if name == "note.txt":
            [ctx] = [c for c in back.ContentSequence if c.ValueType == "UIDREF"]
            assert ctx.RelationshipType == "HAS OBS CONTEXT" and ctx.UID == LAB
            assert ctx.ConceptNameCodeSequence[0].CodeValue == "110180"
            assert note_text(back).startswith("Blood chemistry")
        if not name.endswith(".mp3"):
            assert errors(dciodvfy_video(path, back, tmp_path)) == [], name
    with pytest.raises(Exception, match="invalid Study Instance UID"):
        encapsulate(b"x\n", patient=PATIENT, study=STUDY, filename="n.txt", about="not a uid")


# --- long videos: the bounded-memory writer -------------------------------------------------


@pytest.mark.parametrize("case", ["hevc-mp4", "hevc-mov", "mpeg4-mp4"])
def test_streamed_video_same_object_nothing_clear_on_disk(tmp_path: Path, case: str) -> None:
    """write_video_object: the Part 10 stream written piece by piece into encrypted spools
    (rolled to disk at 4 KiB here) reads back as the in-memory object does."""
    from storage.artifacts import write_video_object
    from storage.spool import EncryptedSpool

    name, media, make, ts, as_is = VIDEO_CASES[case]
    data = make()
    spools: list[EncryptedSpool] = []

    def sink() -> EncryptedSpool:
        spools.append(EncryptedSpool(max_size=4096, dir=tmp_path))
        return spools[-1]

    dest = sink()
    write_video_object(io.BytesIO(data), dest, media_type=media, patient=PATIENT, study=STUDY,
                       filename=name, about=LAB, new_sink=sink)
    assert all(s.rolled for s in spools) and len(spools) == (1 if as_is else 2)
    for f in tmp_path.iterdir():  # the spools' files are unlinked; nothing else was written
        assert data[:64] not in f.read_bytes()
    dest.seek(0)
    path = tmp_path / "streamed.dcm"
    path.write_bytes(dest.read())
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == ts and about_study(back) == LAB
    original = extract_original(back)
    assert (original.data, original.media_type, original.filename) == (data, media, name)
    memory = encapsulate(data, patient=PATIENT, study=STUDY, filename=name)
    assert (back.NumberOfFrames, back.Rows, back.Columns) == (
        memory.NumberOfFrames, memory.Rows, memory.Columns)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert "PixelData" not in header and not any(e.tag.group == 0x7FE1 for e in header)
    assert errors(dciodvfy_video(path, back, tmp_path)) == []


def test_original_span_of_stored_videos(tmp_path: Path) -> None:
    """storage.originals finds the original's bytes in the stored object (WADO-RS and the export
    stream it from there): the Pixel Data fragment of an MP4 kept as is, the trailing element
    of a MOV, odd lengths included."""
    from storage.archive import Archive
    from storage.config import load_settings
    from storage.originals import find_span, read_span

    archive = Archive(load_settings(env={"PACS_DATA_DIR": str(tmp_path / "data")}),
                      create_key=True)
    try:
        mp4 = samples.make_video(".mp4")
        mp4 += b"\x00\x00\x00\x09free\x00" if len(mp4) % 2 == 0 else b""  # odd length
        for name, data in [("a.mp4", mp4), ("b.mov", samples.make_video(".mov", audio=True)),
                           ("c.txt", b"not a video\n")]:
            ds = encapsulate(data, patient=PATIENT, study=STUDY, filename=name)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            result = archive.store(buf.getvalue(), content_type="x")
            [info] = archive.instances(sop_uid=result.sop_instance_uid)
            span = find_span(archive, info)
            if name == "c.txt":
                assert span is None
                continue
            assert span.filename == name and span.length == len(data)
            assert b"".join(read_span(archive, info, span)) == data
    finally:
        archive.close()
