"""storage.artifacts: real samples in, Part 10 out, dciodvfy-checked, originals back."""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.uid import (
    MPEG4HP41,
    MPEG4HP422D,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from storage.artifacts import (
    SUPPORTED_MEDIA_TYPES,
    ArtifactError,
    ArtifactTooLarge,
    InstanceRef,
    InvalidArtifact,
    PatientInfo,
    StudyInfo,
    UnsupportedArtifact,
    detect_media_type,
    encapsulate,
    extract_original,
    note_text,
)
from tests import data_artifacts as samples

PATIENT = PatientInfo(
    "PAT-001", "Doe^Jane", issuer_of_patient_id="HOSP", birth_date="19700102", sex="F"
)
STUDY = StudyInfo(study_description="Documents", accession_number="ACC1", study_id="S1")
WHEN = datetime(2026, 11, 25, 10, 30, 15, tzinfo=UTC)
CT_REF = InstanceRef(
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.826.0.1.3680043.8.498.1",
    "1.2.826.0.1.3680043.8.498.2",
    "1.2.826.0.1.3680043.8.498.3",
)
PDF_REF = InstanceRef(
    "1.2.840.10008.5.1.4.1.1.104.1",
    "1.2.826.0.1.3680043.8.498.4",
    "1.2.826.0.1.3680043.8.498.5",
    "1.2.826.0.1.3680043.8.498.3",
)

needs = {
    tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed")
    for tool in ("dciodvfy", "pdf2dcm", "ffmpeg", "dcmdump")
}


def roundtrip(
    ds: pydicom.Dataset, tmp_path: Path, name: str = "obj.dcm"
) -> tuple[Path, pydicom.Dataset]:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def dciodvfy(path: Path) -> list[str]:
    """Lines dciodvfy reports, minus the private-tag and DICOMDIR chatter."""
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Error")]


def check_common(ds: pydicom.Dataset, sop_class: str) -> None:
    assert ds.SOPClassUID == sop_class
    assert ds.file_meta.MediaStorageSOPClassUID == sop_class
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PatientID == "PAT-001" and str(ds.PatientName) == "Doe^Jane"
    assert (
        ds.IssuerOfPatientID == "HOSP"
        and ds.PatientBirthDate == "19700102"
        and ds.PatientSex == "F"
    )
    assert (
        ds.AccessionNumber == "ACC1" and ds.StudyID == "S1" and ds.StudyDescription == "Documents"
    )
    assert ds.ContentDate == "20261125" and ds.ContentTime == "103015"
    assert ds.StudyDate == "20261125"  # new study: dated like its content
    assert ds.SeriesInstanceUID != ds.StudyInstanceUID
    block = ds.private_block(0x0011, "PACS ARTIFACT ORIGINAL 1")
    assert block[0x04].value and len(block[0x04].value) == 64  # SHA-256 hex


# --- PDF ---------------------------------------------------------------------------------


@needs["dciodvfy"]
def test_pdf_roundtrip_byte_identical_and_valid(tmp_path: Path) -> None:
    pdf = samples.make_pdf(pages=2)
    if len(pdf) % 2 == 0:
        pdf += b"\n"  # odd length on purpose: the even-length pad must come off again
    ds = encapsulate(
        pdf,
        patient=PATIENT,
        study=STUDY,
        filename="C:\\letters\\discharge.pdf",
        title="Discharge letter",
        content_datetime=WHEN,
    )
    path, back = roundtrip(ds, tmp_path)
    check_common(back, "1.2.840.10008.5.1.4.1.1.104.1")
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert back.DocumentTitle == "Discharge letter"
    assert back.EncapsulatedDocumentLength == len(pdf)
    assert len(back.EncapsulatedDocument) == len(pdf) + 1
    original = extract_original(back)
    assert original.data == pdf
    assert (original.media_type, original.filename) == ("application/pdf", "discharge.pdf")
    assert errors(dciodvfy(path)) == []


@needs["pdf2dcm"]
def test_pdf_matches_dcmtk_pdf2dcm(tmp_path: Path) -> None:
    pdf = samples.make_pdf("Compare with dcmtk")
    (tmp_path / "in.pdf").write_bytes(pdf)
    ref_path = tmp_path / "ref.dcm"
    subprocess.run(["pdf2dcm", str(tmp_path / "in.pdf"), str(ref_path)], check=True, timeout=60)
    ref = pydicom.dcmread(ref_path)
    _, ours = roundtrip(encapsulate(pdf, patient=PATIENT, study=STUDY, filename="in.pdf"), tmp_path)
    assert ours.SOPClassUID == ref.SOPClassUID
    assert ours.EncapsulatedDocument == ref.EncapsulatedDocument  # same bytes, same padding
    assert ours.EncapsulatedDocumentLength == ref.EncapsulatedDocumentLength == len(pdf)
    keys = [
        "MIMETypeOfEncapsulatedDocument",
        "Modality",
        "ConversionType",
        "BurnedInAnnotation",
        "DocumentTitle",
        "ConceptNameCodeSequence",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "InstanceNumber",
        "ContentDate",
        "ContentTime",
        "AcquisitionDateTime",
        "PatientID",
        "PatientName",
    ]
    for key in keys:
        assert key in ours and key in ref, key
    assert (ours.Modality, ours.ConversionType) == (ref.Modality, ref.ConversionType)
    # Our extractor reads dcmtk's object too (no private block there).
    assert extract_original(ref).data == pdf


def test_pdf_references_are_source_instances(tmp_path: Path) -> None:
    ds = encapsulate(
        samples.make_pdf(),
        patient=PATIENT,
        study=StudyInfo("1.2.826.0.1.3680043.8.498.3"),
        references=[CT_REF],
    )
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.3"
    assert ds.StudyDate == ""  # existing study: its date is not invented
    assert ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID == CT_REF.sop_instance_uid


# --- Images --------------------------------------------------------------------------------


@needs["dciodvfy"]
def test_jpeg_kept_as_is(tmp_path: Path) -> None:
    jpeg = samples.make_jpeg(64, 48)
    ds = encapsulate(
        jpeg, patient=PATIENT, study=STUDY, filename="wound.jpg", content_datetime=WHEN
    )
    path, back = roundtrip(ds, tmp_path)
    check_common(back, "1.2.840.10008.5.1.4.1.1.77.1.4")
    assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert (back.Rows, back.Columns, back.SamplesPerPixel) == (48, 64, 3)
    assert back.PhotometricInterpretation == "YBR_FULL_422"
    assert back.LossyImageCompression == "01"
    original = extract_original(back)
    assert (
        original.data == jpeg
        and original.media_type == "image/jpeg"
        and original.filename == "wound.jpg"
    )
    # pydicom + pylibjpeg decode what we stored: the bitstream is a valid DICOM JPEG
    assert back.pixel_array.shape == (48, 64, 3)
    assert errors(dciodvfy(path)) == []


def test_jpeg_grayscale_and_progressive(tmp_path: Path) -> None:
    grey = encapsulate(samples.make_jpeg(mode="L"), patient=PATIENT, study=STUDY)
    assert grey.PhotometricInterpretation == "MONOCHROME2" and grey.SamplesPerPixel == 1
    prog = samples.make_jpeg(40, 30, progressive=True)
    ds = encapsulate(prog, patient=PATIENT, study=STUDY, filename="p.jpg")
    # Progressive JPEG's transfer syntax is retired: decoded pixels are stored instead.
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.ImageType[0] == "DERIVED" and ds.LossyImageCompression == "01"
    _, back = roundtrip(ds, tmp_path)
    out = extract_original(back)  # the original is kept: the same progressive JPEG back
    assert (out.data, out.media_type, out.filename) == (prog, "image/jpeg", "p.jpg")
    assert back.pixel_array.tobytes() == Image.open(io.BytesIO(prog)).convert("RGB").tobytes()


@needs["dciodvfy"]
@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGB"), ("PNG", "L"), ("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB")]
)
def test_lossless_images_keep_pixels(tmp_path: Path, fmt: str, mode: str) -> None:
    data = samples.make_png(33, 17, mode) if fmt == "PNG" else samples.make_image(fmt, mode=mode)
    ds = encapsulate(
        data, patient=PATIENT, study=STUDY, filename=f"img.{fmt.lower()}", content_datetime=WHEN
    )
    path, back = roundtrip(ds, tmp_path)
    check_common(back, "1.2.840.10008.5.1.4.1.1.77.1.4")
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.LossyImageCompression == "00"
    out = extract_original(back)  # the original file is kept as is
    assert (out.data, out.filename) == (data, f"img.{fmt.lower()}")
    assert out.media_type == detect_media_type(data)
    src = Image.open(io.BytesIO(data))
    src = src.convert("RGB") if src.mode == "P" else src
    assert back.pixel_array.shape[:2] == (src.height, src.width)
    assert back.pixel_array.tobytes() == src.tobytes()
    # Objects made before originals were kept (no xx05) still give the pixels back as PNG.
    del back[back.private_block(0x7FE1, "PACS ARTIFACT ORIGINAL 1").get_tag(0x05)]
    png = extract_original(back)
    assert png.media_type == "image/png" and png.filename == "img.png"
    assert Image.open(io.BytesIO(png.data)).tobytes() == src.tobytes()
    assert errors(dciodvfy(path)) == []


def test_transparent_png_refused() -> None:
    img = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    out = io.BytesIO()
    img.save(out, format="PNG")
    with pytest.raises(UnsupportedArtifact, match="transparency"):
        encapsulate(out.getvalue(), patient=PATIENT, study=STUDY)


# --- Video ---------------------------------------------------------------------------------


@needs["ffmpeg"]
@needs["dciodvfy"]
def test_mp4_roundtrip_byte_identical_and_valid(tmp_path: Path) -> None:
    mp4 = samples.make_mp4(seconds=1, size="320x240", rate=25)
    ds = encapsulate(
        mp4,
        patient=PATIENT,
        study=STUDY,
        filename="endo.mp4",
        title="Gait video",
        content_datetime=WHEN,
    )
    path, back = roundtrip(ds, tmp_path)
    check_common(back, "1.2.840.10008.5.1.4.1.1.77.1.4.1")
    assert back.file_meta.TransferSyntaxUID == MPEG4HP41
    assert (back.Rows, back.Columns, back.NumberOfFrames) == (240, 320, 25)
    assert float(back.FrameTime) == pytest.approx(40.0)
    assert back.PhotometricInterpretation == "YBR_PARTIAL_420"
    original = extract_original(back)
    assert original.data == mp4 and (original.media_type, original.filename) == (
        "video/mp4",
        "endo.mp4",
    )
    assert errors(dciodvfy(path)) == []


@needs["ffmpeg"]
def test_mp4_odd_length_and_level_42(tmp_path: Path) -> None:
    mp4 = samples.make_mp4(seconds=0.2, size="160x120", rate=30, level="4.2")
    # An extra 'free' box of odd size makes the file odd-length; it must come back exact.
    if len(mp4) % 2 == 0:
        mp4 += b"\x00\x00\x00\x09free\x00"
    ds = encapsulate(mp4, patient=PATIENT, study=STUDY)
    assert ds.file_meta.TransferSyntaxUID == MPEG4HP422D
    _, back = roundtrip(ds, tmp_path)
    assert extract_original(back).data == mp4


@needs["ffmpeg"]
def test_mp4_truncated_is_invalid() -> None:
    mp4 = samples.make_mp4(seconds=0.2)
    with pytest.raises(InvalidArtifact):
        encapsulate(mp4[: len(mp4) // 3], patient=PATIENT, study=STUDY, filename="cut.mp4")


# --- Audio ---------------------------------------------------------------------------------


@needs["dciodvfy"]
@pytest.mark.parametrize(
    ("channels", "width", "extra_chunk"), [(1, 2, False), (2, 2, True), (1, 1, True)]
)
def test_wav_roundtrip(tmp_path: Path, channels: int, width: int, extra_chunk: bool) -> None:
    wav = samples.make_wav(seconds=0.1252, rate=8000, channels=channels, width=width)
    if extra_chunk:
        wav = samples.add_wav_list_chunk(wav)
    ds = encapsulate(
        wav, patient=PATIENT, study=STUDY, filename="dictation.wav", content_datetime=WHEN
    )
    path, back = roundtrip(ds, tmp_path)
    check_common(back, "1.2.840.10008.5.1.4.1.1.9.4.2")
    group = back.WaveformSequence[0]
    assert group.NumberOfWaveformChannels == channels
    assert group.NumberOfWaveformSamples == 1001  # odd: exercises the pad
    assert float(group.SamplingFrequency) == 8000
    assert group.WaveformSampleInterpretation == ("SS" if width == 2 else "UB")
    assert group.ChannelDefinitionSequence[0].ChannelSourceSequence[0].CodeValue == "109110"
    original = extract_original(back)
    assert original.data == wav and original.media_type == "audio/wav"
    # dciodvfy (2022) has no General Audio Waveform IOD: it says only that it cannot find one.
    assert errors(dciodvfy(path)) == ["Error - Information Object Not found"]
    if channels == 1 and float(group.SamplingFrequency) == 8000:
        # Same modules as Basic Voice Audio (A.34.2), which dciodvfy knows: check them there.
        back.SOPClassUID = back.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.4.1"
        voice = tmp_path / "voice.dcm"
        back.save_as(voice, enforce_file_format=True)
        lines = dciodvfy(voice)
        assert "BasicVoice" in lines
        assert errors(lines) == []


def test_wav_without_private_block_gets_fresh_header(tmp_path: Path) -> None:
    wav = samples.make_wav(channels=2)
    ds = encapsulate(wav, patient=PATIENT, study=STUDY)
    for elem in list(ds.group_dataset(0x0011)):
        del ds[elem.tag]
    # stdlib wave writes the same 44-byte header that made the sample
    assert extract_original(ds).data == wav


# --- Notes ---------------------------------------------------------------------------------


@needs["dciodvfy"]
def test_text_note_sr_with_references(tmp_path: Path) -> None:
    note = samples.TEXT_NOTE_UNICODE
    ds = encapsulate(
        note,
        patient=PatientInfo("PAT-2", "Müller^Jörg"),
        study=STUDY,
        filename="note.txt",
        title="Pflegenotiz",
        references=[CT_REF, PDF_REF],
        content_datetime=WHEN,
    )
    path, back = roundtrip(ds, tmp_path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11"
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "Müller^Jörg"
    assert back.ConceptNameCodeSequence[0].CodeValue == "34109-9"
    assert note_text(back) == note.decode("utf-8")
    items = back.ContentSequence
    assert items[0].RelationshipType == "HAS CONCEPT MOD" and items[0].TextValue == "Pflegenotiz"
    refs = {
        i.ValueType: i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for i in items
        if "ReferencedSOPSequence" in i
    }
    assert refs == {"IMAGE": CT_REF.sop_instance_uid, "COMPOSITE": PDF_REF.sop_instance_uid}
    evidence = back.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1 and evidence[0].StudyInstanceUID == CT_REF.study_instance_uid
    assert len(evidence[0].ReferencedSeriesSequence) == 2
    original = extract_original(back)
    assert (
        original.data == note
        and original.media_type == "text/plain"
        and original.filename == "note.txt"
    )
    # plain UTF-8 without trailing blanks: the TEXT item alone reproduces it, no private copy
    block = back.private_block(0x0011, "PACS ARTIFACT ORIGINAL 1")
    assert block.get_tag(0x05) not in back
    assert errors(dciodvfy(path)) == []


@needs["dciodvfy"]
def test_rtf_note_back_byte_identical(tmp_path: Path) -> None:
    ds = encapsulate(
        samples.RTF_NOTE, patient=PATIENT, study=STUDY, filename="brief.rtf", content_datetime=WHEN
    )
    path, back = roundtrip(ds, tmp_path)
    text = note_text(back)
    assert "Follow-up in two weeks." in text and "Café allergy" in text and "\\rtf" not in text
    original = extract_original(back)
    assert original.data == samples.RTF_NOTE and original.media_type == "text/rtf"
    assert errors(dciodvfy(path)) == []


def test_latin1_text_kept_exactly(tmp_path: Path) -> None:
    note = "Gr\xfc\xdfe, 5 \xb0C   \r\n".encode("latin-1")  # not UTF-8, trailing blanks
    _, back = roundtrip(encapsulate(note, patient=PATIENT, study=STUDY, filename="n.txt"), tmp_path)
    assert note_text(back).startswith("Grüße")
    assert extract_original(back).data == note


# --- Detection and bad input ------------------------------------------------------------


def test_detect_media_types() -> None:
    assert detect_media_type(samples.make_pdf()) == "application/pdf"
    assert detect_media_type(samples.make_jpeg(), "x.JPG", "image/jpg") == "image/jpeg"
    assert detect_media_type(samples.make_png(), declared="application/octet-stream") == "image/png"
    assert detect_media_type(samples.make_wav(), "a.wav") == "audio/wav"
    assert detect_media_type(samples.RTF_NOTE, "a.rtf") == "text/rtf"
    assert (
        detect_media_type(samples.TEXT_NOTE, "a.txt", "text/plain; charset=utf-8") == "text/plain"
    )
    assert set(SUPPORTED_MEDIA_TYPES) >= {
        "application/pdf",
        "image/jpeg",
        "image/png",
        "video/mp4",
        "audio/wav",
    }


def test_empty_input() -> None:
    with pytest.raises(InvalidArtifact, match="empty"):
        encapsulate(b"", patient=PATIENT, study=STUDY, filename="x.pdf")


def test_truncated_pdf() -> None:
    pdf = samples.make_pdf()
    with pytest.raises(InvalidArtifact, match="truncated"):
        encapsulate(pdf[: len(pdf) // 2], patient=PATIENT, study=STUDY, filename="cut.pdf")


def test_pdf_that_is_a_png() -> None:
    with pytest.raises(InvalidArtifact, match="image/png"):
        encapsulate(samples.make_png(), patient=PATIENT, study=STUDY, filename="report.pdf")
    with pytest.raises(InvalidArtifact):
        detect_media_type(samples.make_png(), declared="application/pdf")


def test_garbage_named_pdf() -> None:
    with pytest.raises(InvalidArtifact):
        encapsulate(b"\x00\x01\x02 not a pdf", patient=PATIENT, study=STUDY, filename="x.pdf")


def test_too_large() -> None:
    with pytest.raises(ArtifactTooLarge, match="limit"):
        encapsulate(samples.make_pdf(), patient=PATIENT, study=STUDY, max_size=100)


def test_unknown_type_lists_supported() -> None:
    zip_bytes = b"PK\x03\x04" + bytes(range(256)) * 4
    with pytest.raises(UnsupportedArtifact) as info:
        encapsulate(zip_bytes, patient=PATIENT, study=STUDY, filename="x.zip")
    assert "application/pdf" in str(info.value) and "video/mp4" in str(info.value)


def test_truncated_jpeg_png_wav() -> None:
    for data, name in (
        (samples.make_jpeg(), "a.jpg"),
        (samples.make_png(), "a.png"),
        (samples.make_wav(), "a.wav"),
    ):
        with pytest.raises(InvalidArtifact):
            encapsulate(data[: len(data) // 2], patient=PATIENT, study=STUDY, filename=name)


def test_dicom_file_refused(tmp_path: Path) -> None:
    path, _ = roundtrip(encapsulate(samples.make_pdf(), patient=PATIENT, study=STUDY), tmp_path)
    with pytest.raises(UnsupportedArtifact, match="already DICOM"):
        encapsulate(path.read_bytes(), patient=PATIENT, study=STUDY)


def test_bad_patient_and_references() -> None:
    with pytest.raises(ArtifactError, match="patient_id"):
        encapsulate(samples.TEXT_NOTE, patient=PatientInfo(""), study=STUDY)
    with pytest.raises(ArtifactError, match="birth_date"):
        encapsulate(
            samples.TEXT_NOTE, patient=PatientInfo("P", birth_date="1970-01-02"), study=STUDY
        )
    with pytest.raises(ArtifactError, match="references"):
        encapsulate(samples.make_jpeg(), patient=PATIENT, study=STUDY, references=[CT_REF])


def test_tampered_object_detected(tmp_path: Path) -> None:
    _, back = roundtrip(encapsulate(samples.make_pdf(), patient=PATIENT, study=STUDY), tmp_path)
    doc = bytearray(back.EncapsulatedDocument)
    doc[20] ^= 0xFF
    back.EncapsulatedDocument = bytes(doc)
    with pytest.raises(InvalidArtifact, match="SHA-256"):
        extract_original(back)


def test_each_call_new_series_and_instance() -> None:
    a = encapsulate(
        samples.TEXT_NOTE, patient=PATIENT, study=StudyInfo("1.2.826.0.1.3680043.8.498.3")
    )
    b = encapsulate(
        samples.TEXT_NOTE, patient=PATIENT, study=StudyInfo("1.2.826.0.1.3680043.8.498.3")
    )
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SeriesInstanceUID != b.SeriesInstanceUID and a.SOPInstanceUID != b.SOPInstanceUID
    assert "SpecificCharacterSet" not in a  # ASCII only: default repertoire


def test_rtf_keeps_private_copy() -> None:
    ds = encapsulate(samples.RTF_NOTE, patient=PATIENT, study=STUDY)
    block = ds.private_block(0x0011, "PACS ARTIFACT ORIGINAL 1")
    assert block[0x05].value == samples.RTF_NOTE
    assert block[0x01].value == "text/rtf" and block[0x03].value == len(samples.RTF_NOTE)


def test_storage_artifacts_imports_no_front_door() -> None:
    src = Path(__file__).parent.parent / "storage" / "artifacts"
    text = "\n".join(p.read_text() for p in src.glob("*.py"))
    assert (
        "import flask" not in text and "pynetdicom" not in text and "sqlalchemy" not in text.lower()
    )


@needs["dcmdump"]
@needs["ffmpeg"]
def test_dcmtk_reads_every_kind(tmp_path: Path) -> None:
    """dcmtk parses each object; dcmj2pnm decodes the JPEG one (a second, independent reader)."""
    kinds = {
        "pdf": samples.make_pdf(),
        "jpg": samples.make_jpeg(),
        "png": samples.make_png(),
        "mp4": samples.make_mp4(seconds=0.2),
        "wav": samples.make_wav(),
        "rtf": samples.RTF_NOTE,
    }
    for name, data in kinds.items():
        path, _ = roundtrip(
            encapsulate(data, patient=PATIENT, study=STUDY), tmp_path, f"{name}.dcm"
        )
        out = subprocess.run(
            ["dcmdump", "-q", str(path)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "E:" not in out.stderr, (name, out.stderr)
    png = tmp_path / "jpg.png"
    subprocess.run(
        ["dcmj2pnm", "--write-png", str(tmp_path / "jpg.dcm"), str(png)], check=True, timeout=60
    )
    assert Image.open(png).size == (64, 48)
