"""WADO-RS retrieval (PS3.18 10.4) against a real ``pacs serve``: dcmtk pushes, dicomweb-client pulls.

Instances, series and studies (as stored and transcoded), frames (native, JPEG 2000 and JPEG
pass-through, decoded), bulk data (pixel data, a nested attribute, a PDF's original), rendered
images, thumbnails at every level, zip, and the error statuses.
"""

from __future__ import annotations

import io
import struct
import subprocess
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from dicomweb.multipart import decode_bytes
from storage.artifacts import PatientInfo, StudyInfo, encapsulate
from tests.conftest import require
from tests.data_artifacts import make_jpeg, make_pdf
from tests.dicomgen import make_image, make_study

pytestmark = pytest.mark.cloud  # server tests on SQLite + files and on PostgreSQL + S3

ELE = "1.2.840.10008.1.2.1"


@dataclass
class Data:
    study_uid: str
    ct: list[Path]  # the CT study pushed by storescu (2 series x 2)
    j2k: Dataset  # a 3-frame JPEG 2000 lossless instance (other study)
    j2k_pixels: np.ndarray
    implicit: Dataset  # stored as Implicit VR LE, with a nested attribute
    jpeg: Dataset  # VL Photographic, JPEG baseline
    jpeg_bytes: bytes
    pdf: Dataset
    pdf_bytes: bytes
    misc_study: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def data(server, tmp_path_factory) -> Data:
    folder = tmp_path_factory.mktemp("wado")
    ct = make_study(folder / "ct", n_series=2, per_series=2, rows=128, columns=128)
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([require("storescu"), "-aec", server.ae_title, "+sd", "+r", "127.0.0.1",
                    str(server.dicom_port), str(folder / "ct")], check=True, env=env, timeout=60,
                   capture_output=True)
    misc = generate_uid()
    j2k = make_image(study_uid=misc, rows=64, columns=64, frames=3, patient_id="PAT002")
    pixels = j2k.pixel_array.copy()
    j2k.compress(JPEG2000Lossless)
    implicit = make_image(study_uid=misc, patient_id="PAT002", rows=32, columns=32)
    item = Dataset()
    item.RadionuclideTotalDose = "370000000"
    implicit.RadiopharmaceuticalInformationSequence = [item]
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    jpeg_bytes = make_jpeg(48, 32)
    patient = PatientInfo(patient_id="PAT002", patient_name="Doe^John")
    jpeg = encapsulate(jpeg_bytes, patient=patient, study=StudyInfo(study_instance_uid=misc),
                       filename="photo.jpg")
    pdf_bytes = make_pdf("WADO test letter")
    pdf = encapsulate(pdf_bytes, patient=patient, study=StudyInfo(study_instance_uid=misc),
                      filename="letter.pdf")
    archive = server.archive()
    try:
        for ds in (j2k, implicit, jpeg, pdf):
            archive.store(_part10(ds), actor="test", origin="test")
    finally:
        archive.close()
    return Data(pydicom.dcmread(ct[0]).StudyInstanceUID, ct, j2k, pixels, implicit, jpeg,
                jpeg_bytes, pdf, pdf_bytes, misc_study=misc)


@pytest.fixture(scope="module")
def client(server) -> DICOMwebClient:
    return DICOMwebClient(url=server.dicomweb_url)


def _get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _after_meta(part10: bytes) -> bytes:
    """The dataset bytes after the File Meta Information (PS3.10 7.1)."""
    assert part10[128:132] == b"DICM"
    (group_len,) = struct.unpack("<I", part10[140:144])
    return part10[144 + group_len:]


def _url(server, ds: Dataset) -> str:
    return (f"{server.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


# ------------------------------------------------------------------- instances, series, study


def test_study_as_stored_is_byte_identical(server, data):
    status, headers, body = _get(f"{server.dicomweb_url}/studies/{data.study_uid}",
                                 'multipart/related; type="application/dicom"; transfer-syntax=*')
    assert status == 200, body[:200]
    parts = decode_bytes(body, headers["Content-Type"])
    assert len(parts) == 4
    originals = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in data.ct}
    for part in parts:
        assert part.transfer_syntax == ELE
        sent = part.read()
        sop = pydicom.dcmread(io.BytesIO(sent)).SOPInstanceUID
        assert _after_meta(sent) == _after_meta(originals[sop])
        assert part.content_location.endswith(f"/instances/{sop}")


def test_dicomweb_client_retrieve_study_series_instance(client, data):
    files = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in data.ct}
    got = client.retrieve_study(data.study_uid)
    assert {ds.SOPInstanceUID for ds in got} == set(files)
    for ds in got:
        ref = files[ds.SOPInstanceUID]
        assert ds.PixelData == ref.PixelData and ds.PatientName == ref.PatientName
    first = files[min(files)]
    series = client.retrieve_series(data.study_uid, first.SeriesInstanceUID,
                                    media_types=(("application/dicom", "*"),))
    assert {ds.SeriesInstanceUID for ds in series} == {first.SeriesInstanceUID}
    assert len(series) == 2
    one = client.retrieve_instance(data.study_uid, first.SeriesInstanceUID, first.SOPInstanceUID)
    assert one.SOPInstanceUID == first.SOPInstanceUID and one.PixelData == first.PixelData


def test_jpeg2000_instance_transcoded_by_default_and_as_stored_with_star(client, data):
    d = data.j2k
    plain = client.retrieve_instance(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID,
                                     media_types=(("application/dicom", ELE),))
    assert plain.file_meta.TransferSyntaxUID == ELE
    assert np.array_equal(plain.pixel_array, data.j2k_pixels)
    stored = client.retrieve_instance(d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID,
                                      media_types=(("application/dicom", "*"),))
    assert stored.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert stored.PixelData == d.PixelData


def test_implicit_vr_is_never_sent_on_the_web(server, data):
    status, headers, body = _get(_url(server, data.implicit),
                                 'multipart/related; type="application/dicom"; transfer-syntax=*')
    assert status == 200
    (part,) = decode_bytes(body, headers["Content-Type"])
    assert part.transfer_syntax == ELE
    ds = pydicom.dcmread(io.BytesIO(part.read()))
    assert ds.file_meta.TransferSyntaxUID == ELE
    assert ds.PixelData == data.implicit.PixelData
    assert ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose == 370000000


def test_zip_of_a_study(server, data):
    status, headers, body = _get(f"{server.dicomweb_url}/studies/{data.study_uid}",
                                 "application/zip")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert len(names) == 4 and all(n.endswith(".dcm") for n in names)
        sops = {pydicom.dcmread(io.BytesIO(zf.read(n))).SOPInstanceUID for n in names}
    assert sops == {pydicom.dcmread(p).SOPInstanceUID for p in data.ct}


# ---------------------------------------------------------------------------------- frames


def test_native_frames(client, data):
    ds = pydicom.dcmread(data.ct[0])
    (frame,) = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                               ds.SOPInstanceUID, frame_numbers=[1])
    assert frame == ds.PixelData


def test_jpeg2000_frames_pass_through_and_decoded(client, data):
    d = data.j2k
    stored = [bytes(f) for f in generate_frames(d.PixelData, number_of_frames=3)]
    got = client.retrieve_instance_frames(
        d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID, frame_numbers=[1, 3],
        media_types=(("image/jp2", "1.2.840.10008.1.2.4.90"),))
    assert got == [stored[0], stored[2]]
    decoded = client.retrieve_instance_frames(
        d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID, frame_numbers=[2],
        media_types=(("application/octet-stream", ELE),))
    assert decoded == [data.j2k_pixels[1].astype("<u2").tobytes()]


def test_jpeg_frame_pass_through_is_the_original_jpeg(client, data):
    d = data.jpeg
    (frame,) = client.retrieve_instance_frames(
        d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID, frame_numbers=[1],
        media_types=(("image/jpeg", str(d.file_meta.TransferSyntaxUID)),))
    assert frame.rstrip(b"\0") == data.jpeg_bytes.rstrip(b"\0")


def test_frame_errors(server, data):
    base = _url(server, data.j2k)
    assert _get(base + "/frames/4")[0] == 404
    status, _, body = _get(base + "/frames/0,x")
    assert status == 400 and b"frame" in body
    assert _get(base.replace(data.j2k.SOPInstanceUID, "1.2.3.4") + "/frames/1")[0] == 404
    assert _get(f"{server.dicomweb_url}/studies/1.2.3.4.5")[0] == 404


# -------------------------------------------------------------------------------- bulk data


def test_bulkdata_pixel_data_and_nested_attribute(client, server, data):
    ds = pydicom.dcmread(data.ct[1])
    (pixels,) = client.retrieve_bulkdata(_url(server, ds) + "/bulkdata/7fe00010")
    assert pixels == ds.PixelData
    (dose,) = client.retrieve_bulkdata(_url(server, data.implicit) + "/bulkdata/00540016/0/00181074")
    assert dose.strip() == b"370000000"
    assert _get(_url(server, data.implicit) + "/bulkdata/00540016/3/00181074")[0] == 404
    assert _get(_url(server, data.implicit) + "/bulkdata/zz")[0] == 400
    assert _get(_url(server, data.implicit) + "/bulkdata/00540016/%C2%B2/00181074")[0] == 400


def test_pdf_bulkdata_and_rendered_give_the_original(server, data):
    url = _url(server, data.pdf)
    status, headers, body = _get(url + "/bulkdata/00420011", "application/pdf")
    assert status == 200 and headers["Content-Type"] == "application/pdf"
    assert body == data.pdf_bytes
    status, headers, body = _get(url + "/rendered", "application/pdf")
    assert status == 200 and body == data.pdf_bytes
    status, _, body = _get(url + "/rendered", "image/jpeg")
    assert status == 406 and body.strip()
    status, headers, body = _get(url + "/thumbnail", "image/png")
    assert status == 200 and Image.open(io.BytesIO(body)).format == "PNG"


# -------------------------------------------------------------------- rendered, thumbnails


def test_rendered_instance_series_and_frame(client, server, data):
    ds = pydicom.dcmread(data.ct[0])
    jpeg = client.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                             ds.SOPInstanceUID, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).size == (128, 128)
    png = client.retrieve_series_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                          media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).format == "PNG"
    status, headers, body = _get(_url(server, data.j2k) + "/frames/2/rendered?viewport=32,32"
                                 "&window=1000,2000,linear&quality=50")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (32, 32)
    assert _get(_url(server, data.j2k) + "/frames/2/rendered?window=1,2,sigmoidx")[0] == 400


@pytest.mark.parametrize("level", ["study", "series", "instance", "frame"])
def test_thumbnails(server, data, level):
    ds = data.j2k
    url = {"study": f"{server.dicomweb_url}/studies/{ds.StudyInstanceUID}",
           "series": f"{server.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/"
                     f"{ds.SeriesInstanceUID}",
           "instance": _url(server, ds), "frame": _url(server, ds) + "/frames/1"}[level]
    status, headers, body = _get(url + "/thumbnail?viewport=64,64", "image/jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg", body[:200]
    img = Image.open(io.BytesIO(body))
    assert max(img.size) <= 64 and img.format == "JPEG"


def _audit_details(server, study_uid: str, needle: str, want: int = 1) -> list[str]:
    """The details of ``retrieve`` events of a study containing ``needle`` (written off the
    request path: polled for a few seconds)."""
    import time

    archive = server.archive()
    try:
        found: list[str] = []
        for _ in range(40):
            found = [e.detail for e in archive.audit.events(action="retrieve", limit=100_000)
                     if e.study_uid == study_uid and needle in e.detail]
            if len(found) >= want:
                break
            time.sleep(0.25)
        return found
    finally:
        archive.close()


def test_frame_and_thumbnail_reads_are_audited_coalesced(server):
    """Issue 6 part 8: frames and thumbnails are audited; repeated reads in a minute coalesce."""
    import http.client

    ds = make_image(patient_id="WADO-AUDIT", rows=8, columns=8)  # a series no other test reads
    archive = server.archive()
    try:
        archive.store(_part10(ds), actor="test", origin="test")
    finally:
        archive.close()
    path = _url(server, ds).removeprefix(server.http_url) + "/frames/1"
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:  # one kept-alive connection: one web worker answers all three
        for _ in range(3):
            conn.request("GET", path, headers={
                "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() and not resp.will_close
    finally:
        conn.close()
    frames = _audit_details(server, str(ds.StudyInstanceUID), f"frames: 1 item(s) of series "
                                                              f"{ds.SeriesInstanceUID}")
    # the first read at once; the next two are counted, written when the minute is over
    assert len(frames) == 1, frames
    status, _, _ = _get(_url(server, ds) + "/thumbnail", "image/jpeg")
    assert status == 200
    assert _audit_details(server, str(ds.StudyInstanceUID), "thumbnail: 1 item(s)")


# ------------------------------------------- rendered study/series/frames (PS3.18 10.4.1.1.3)

MULTI_JPEG = 'multipart/related; type="image/jpeg"'


def _image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_rendered_study_is_every_image_as_multipart(server, data):
    status, headers, body = _get(f"{server.dicomweb_url}/studies/{data.study_uid}/rendered",
                                 MULTI_JPEG)
    assert status == 200, body[:200]
    assert headers["Content-Type"].startswith('multipart/related; type="image/jpeg"')
    parts = decode_bytes(body, headers["Content-Type"])
    sops = {pydicom.dcmread(p).SOPInstanceUID for p in data.ct}
    assert len(parts) == len(sops) == 4
    seen = set()
    for part in parts:
        assert part.media_type == "image/jpeg"
        assert part.content_location.endswith("/rendered")
        seen.add(part.content_location.split("/instances/")[1].split("/")[0])
        img = _image(part.read())
        assert img.format == "JPEG" and img.size == (128, 128)
        assert np.asarray(img).std() > 5  # not blank
    assert seen == sops


def test_rendered_series_with_frames_documents_left_out(server, data):
    """The misc study: a 3-frame JPEG 2000, an Implicit VR image, a JPEG photo and a PDF."""
    status, headers, body = _get(f"{server.dicomweb_url}/studies/{data.misc_study}/rendered",
                                 'multipart/related; type="image/png"')
    assert status == 206 and "1 instance(s)" in headers["Warning"]
    parts = decode_bytes(body, headers["Content-Type"])
    assert len(parts) == 3 + 1 + 1
    j2k = [p for p in parts if data.j2k.SOPInstanceUID in p.content_location]
    assert [p.content_location.rsplit("/frames/", 1)[1] for p in j2k] == \
        ["1/rendered", "2/rendered", "3/rendered"]
    frames = [np.asarray(_image(p.read())) for p in j2k]
    assert all(f.shape == (64, 64) for f in frames)
    assert not np.array_equal(frames[0], frames[1])  # each part is its own frame
    assert not any(data.pdf.SOPInstanceUID in p.content_location for p in parts)


def test_rendered_frame_list_and_windowing_over_http(server, data):
    base = _url(server, data.j2k)
    status, headers, body = _get(base + "/frames/3,1/rendered?window=1000,2000,linear",
                                 'multipart/related; type="image/png"')
    assert status == 200
    parts = decode_bytes(body, headers["Content-Type"])
    assert [p.content_location.rsplit("/frames/", 1)[1] for p in parts] == \
        ["3/rendered", "1/rendered"]
    got = np.asarray(_image(parts[0].read())).astype(float)
    values = data.j2k_pixels[2].astype(float) - 1024  # RescaleIntercept -1024
    expected = np.clip((values - 999.5) / 1999 + 0.5, 0, 1) * 255  # PS3.3 C.11.2.1.2.1
    assert np.abs(got - expected).max() <= 1
    narrow = _get(base + "/frames/3/rendered?window=1000,20,linear", "image/png")
    sigmoid = _get(base + "/frames/3/rendered?window=1000,2000,sigmoid", "image/png")
    assert narrow[0] == sigmoid[0] == 200
    for other in (narrow[2], sigmoid[2]):
        assert not np.array_equal(np.asarray(_image(other)), got.astype(np.uint8))
    assert _get(base + "/frames/4/rendered", "image/png")[0] == 404


def test_rendered_viewport_region_over_http(server, data):
    ds = pydicom.dcmread(data.ct[0])
    url = _url(server, ds) + "/rendered"
    full = np.asarray(_image(_get(url, "image/png")[2]))
    status, _, body = _get(url + "?viewport=32,16,8,4,-32,16", "image/png")
    assert status == 200
    assert np.array_equal(np.asarray(_image(body)), full[4:20, 8:40][:, ::-1])
    status, _, body = _get(url + "?viewport=64,64&quality=20", "image/jpeg")
    assert status == 200 and _image(body).size == (64, 64)


@pytest.mark.parametrize(("query", "reason"), [
    ("window=40", b"center,width"), ("window=40,0,linear", b"width"),
    ("window=40,400,gamma", b"not supported"), ("viewport=0,10", b"viewport"),
    ("viewport=1,2,3", b"viewport"), ("viewport=10,10,999,0,,", b"outside"),
    ("quality=0", b"quality"), ("quality=101", b"quality"), ("quality=high", b"quality"),
])
def test_bad_rendered_parameters_are_400_with_a_reason(server, data, query, reason):
    ds = pydicom.dcmread(data.ct[0])
    status, headers, body = _get(_url(server, ds) + f"/rendered?{query}", "image/jpeg")
    assert status == 400 and reason in body, body
    status, _, body = _get(f"{server.dicomweb_url}/studies/{data.study_uid}/rendered?{query}",
                           MULTI_JPEG)
    assert status == 400 and reason in body, body


def test_dicomweb_client_rendered_methods(client, data):
    ds = pydicom.dcmread(data.ct[0])
    plain = client.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                              ds.SOPInstanceUID, media_types=("image/png",))
    windowed = client.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/png",),
        params={"window": "40,4000,linear"})
    assert _image(plain).size == _image(windowed).size == (128, 128)
    assert not np.array_equal(np.asarray(_image(plain)), np.asarray(_image(windowed)))
    d = data.j2k
    frame = client.retrieve_instance_frames_rendered(
        d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID, frame_numbers=[2],
        media_types=("image/jpeg",), params={"viewport": "32,32"})
    assert _image(frame).size == (32, 32)
    series = client.retrieve_series_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                             media_types=("image/jpeg",))
    img = _image(series)  # a single-part Accept: the series' representative image
    assert img.format == "JPEG" and img.size == (128, 128) and np.asarray(img).std() > 5


def test_study_thumbnail_prefers_an_image_to_a_document(server, data):
    status, headers, body = _get(f"{server.dicomweb_url}/studies/{data.misc_study}/thumbnail",
                                 "image/png")
    assert status == 200 and headers["Content-Type"] == "image/png"
    img = _image(body)
    assert max(img.size) <= 64  # an image of the study, not the 128 x 128 document icon
    assert np.asarray(img).std() > 5


# ----------------------------------------- decoded colour frames agree with the metadata label


@pytest.fixture(scope="module")
def colour(server) -> dict[str, Dataset]:
    from pydicom.data import get_testdata_file

    out = {}
    archive = server.archive()
    try:
        for name, file in (("422", "SC_rgb_dcmtk_+eb+cy+s2.dcm"),
                           ("full", "SC_rgb_jpeg_dcmtk.dcm")):
            ds = pydicom.dcmread(get_testdata_file(file))
            ds.SOPInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            archive.store(_part10(ds), actor="test", origin="test")
            out[name] = ds
    finally:
        archive.close()
    return out


@pytest.mark.parametrize(("which", "samples"), [("422", 2), ("full", 3)])
def test_decoded_jpeg_colour_frame_matches_its_photometric_interpretation(client, colour, which,
                                                                          samples):
    ds = colour[which]
    reference = ds.pixel_array.astype(int)  # pydicom's RGB of the JPEG
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                             ds.SOPInstanceUID)
    label = Dataset.from_json(meta).PhotometricInterpretation
    assert label == ds.PhotometricInterpretation  # YBR_FULL_422 / YBR_FULL, as stored
    (frame,) = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1],
        media_types=(("application/octet-stream", ELE),))
    assert len(frame) == ds.Rows * ds.Columns * samples
    native = Dataset()
    native.file_meta = pydicom.dataset.FileMetaDataset()
    native.file_meta.TransferSyntaxUID = ELE
    for kw in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
               "PixelRepresentation", "PlanarConfiguration"):
        setattr(native, kw, ds[kw].value)
    native.PhotometricInterpretation = label
    native.PixelData = bytes(frame)  # dicomweb-client gives a bytearray
    decoded = native.pixel_array.astype(int)  # read with the metadata's label, to RGB
    assert np.abs(decoded - reference).mean() < 1.5
    assert decoded[5, 50, 0] > 200 and decoded[5, 50, 1] < 60  # the red band stays red
    (stored,) = client.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1],
        media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
    assert stored[:2] == b"\xff\xd8"  # as stored, a JPEG codestream


def test_jpeg_colour_instance_transcoded_says_rgb_and_keeps_its_uid(client, colour):
    ds = colour["422"]
    got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                   media_types=(("application/dicom", ELE),))
    assert got.file_meta.TransferSyntaxUID == ELE
    assert got.SOPInstanceUID == ds.SOPInstanceUID
    assert got.PhotometricInterpretation == "RGB"
    assert len(got.PixelData) == ds.Rows * ds.Columns * 3
    assert np.abs(got.pixel_array.astype(int) - ds.pixel_array.astype(int)).mean() < 1.5
