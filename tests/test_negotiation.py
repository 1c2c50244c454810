"""Content negotiation of WADO-RS (PS3.18 8.7) with raw Accept headers over http.client.

OHIF's frame header (type quoted and unquoted), ``*/*``, an explicit transfer syntax that needs
transcoding, one that cannot be met (406 with a reason), q-values, single-part frames, video that
cannot be transcoded, and malformed Accept headers.
"""

from __future__ import annotations

import http.client
import io
from urllib.parse import urlsplit

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless

from dicomweb.multipart import decode_bytes
from storage.artifacts import PatientInfo, StudyInfo, encapsulate
from tests.data_artifacts import make_jpeg, make_mp4
from tests.dicomgen import make_image

ELE = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"
OHIF_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OHIF_UNQUOTED = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def objs(server) -> dict[str, Dataset]:
    native = make_image(rows=64, columns=64, patient_id="NEG1")
    j2k = make_image(rows=64, columns=64, frames=2, patient_id="NEG1",
                     study_uid=native.StudyInstanceUID)
    j2k.compress(JPEG2000Lossless)
    patient = PatientInfo(patient_id="NEG1", patient_name="Neg^One")
    study = StudyInfo(study_instance_uid=native.StudyInstanceUID)
    jpeg = encapsulate(make_jpeg(40, 30), patient=patient, study=study, filename="p.jpg")
    video = encapsulate(make_mp4(0.2, "64x48"), patient=patient, study=study, filename="v.mp4")
    archive = server.archive()
    try:
        for ds in (native, j2k, jpeg, video):
            archive.store(_part10(ds), actor="test", origin="test")
    finally:
        archive.close()
    return {"native": native, "j2k": j2k, "jpeg": jpeg, "video": video}


def _get(server, path: str, accept: str | None) -> tuple[int, str, bytes]:
    url = urlsplit(server.dicomweb_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", url.path + path, headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


def _inst(ds: Dataset) -> str:
    return (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


@pytest.mark.parametrize("accept", [OHIF_QUOTED, OHIF_UNQUOTED])
def test_ohif_frame_header_passes_compressed_frames_through(server, objs, accept):
    ds = objs["j2k"]
    status, ctype, body = _get(server, _inst(ds) + "/frames/2", accept)
    assert status == 200, body
    assert ctype.startswith('multipart/related; type="application/octet-stream"; boundary=')
    (part,) = decode_bytes(body, ctype)
    assert part.content_type == f"application/octet-stream; transfer-syntax={J2K}"
    assert part.read() == bytes(list(generate_frames(ds.PixelData, number_of_frames=2))[1])


@pytest.mark.parametrize("accept", [OHIF_QUOTED, OHIF_UNQUOTED])
def test_ohif_frame_header_on_native_frames(server, objs, accept):
    ds = objs["native"]
    status, ctype, body = _get(server, _inst(ds) + "/frames/1", accept)
    assert status == 200
    (part,) = decode_bytes(body, ctype)
    assert part.transfer_syntax == ELE and part.read() == ds.PixelData


def test_any_type_gives_multipart_dicom(server, objs):
    status, ctype, body = _get(server, _inst(objs["native"]), "*/*")
    assert status == 200 and 'type="application/dicom"' in ctype
    (part,) = decode_bytes(body, ctype)
    assert pydicom.dcmread(io.BytesIO(part.read())).SOPInstanceUID == objs["native"].SOPInstanceUID


def test_explicit_le_on_jpeg_instance_is_transcoded(server, objs):
    ds = objs["jpeg"]
    status, ctype, body = _get(server, _inst(ds), f"application/dicom; transfer-syntax={ELE}")
    assert status == 200, body
    assert ctype == f"application/dicom; transfer-syntax={ELE}"  # single part, as asked
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == ELE
    assert got.pixel_array.shape == (30, 40, 3)


def test_impossible_transfer_syntax_is_406_with_reason(server, objs):
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
    status, _, body = _get(server, _inst(objs["native"]), accept)
    assert status == 406 and b"1.2.840.10008.1.2.4.80" in body
    status, _, body = _get(server, _inst(objs["j2k"]) + "/frames/1",
                           'multipart/related; type="image/jls"')
    assert status == 406 and body.strip()


def test_q_values_choose_between_alternatives(server, objs):
    path = _inst(objs["j2k"])
    prefer_stored = (f'multipart/related; type="application/dicom"; transfer-syntax={ELE}; q=0.5, '
                     'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.9')
    status, ctype, body = _get(server, path, prefer_stored)
    assert status == 200 and decode_bytes(body, ctype)[0].transfer_syntax == J2K
    prefer_le = prefer_stored.replace("q=0.5", "q=1.0")
    status, ctype, body = _get(server, path, prefer_le)
    assert status == 200 and decode_bytes(body, ctype)[0].transfer_syntax == ELE
    status, ctype, _ = _get(server, path, "application/zip, application/dicom; q=0.1")
    assert status == 200 and ctype == "application/zip"


def test_one_frame_has_a_content_length_and_keeps_the_connection(server, objs):
    """A viewer asks for one frame per request over a kept-alive connection: the answer is one body
    with a Content-Length (not chunked), and the next request goes over the same connection."""
    url = urlsplit(server.dicomweb_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        for ds in (objs["native"], objs["j2k"], objs["native"]):
            conn.request("GET", url.path + _inst(ds) + "/frames/1", headers={"Accept": OHIF_QUOTED})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert resp.getheader("Transfer-Encoding") is None
            assert int(resp.getheader("Content-Length")) == len(body)
            assert not resp.will_close
            (part,) = decode_bytes(body, resp.getheader("Content-Type"))
            expected = next(generate_frames(ds.PixelData, number_of_frames=2)) if ds is objs["j2k"] \
                else ds.PixelData
            assert part.read() == expected
        sock = conn.sock
        conn.request("GET", url.path + _inst(objs["native"]) + "/frames/1,1", headers={"Accept": OHIF_QUOTED})
        resp = conn.getresponse()
        parts = decode_bytes(resp.read(), resp.getheader("Content-Type"))
        assert conn.sock is sock  # still the first connection
        assert [p.read() for p in parts] == [objs["native"].PixelData] * 2
    finally:
        conn.close()


def test_single_part_frame_when_asked(server, objs):
    status, ctype, body = _get(server, _inst(objs["native"]) + "/frames/1",
                               "application/octet-stream")
    assert status == 200
    assert ctype == f"application/octet-stream; transfer-syntax={ELE}"
    assert body == objs["native"].PixelData


def test_video_cannot_be_transcoded_but_comes_as_stored(server, objs):
    ds = objs["video"]
    status, _, body = _get(server, _inst(ds), f'multipart/related; type="application/dicom"; '
                                              f"transfer-syntax={ELE}")
    assert status == 406 and b"cannot" in body
    status, ctype, body = _get(server, _inst(ds),
                               'multipart/related; type="application/dicom"; transfer-syntax=*')
    assert status == 200
    assert decode_bytes(body, ctype)[0].transfer_syntax == str(ds.file_meta.TransferSyntaxUID)
    study = f"/studies/{ds.StudyInstanceUID}"
    status, _, body = _get(server, study, f"application/dicom; transfer-syntax={ELE}")
    assert status == 406 and ds.SOPInstanceUID.encode() in body


@pytest.mark.parametrize("accept", ["garbage", "application/dicom; q=5", "text/html"])
def test_bad_or_unsatisfiable_accept(server, objs, accept):
    """Nothing acceptable is 406 (RFC 9110 15.5.7); an element that cannot be parsed or has a
    q-value outside 0..1 accepts nothing (dicomweb.mediatypes.parse_accept)."""
    status, _, body = _get(server, _inst(objs["native"]), accept)
    assert status == 406 and body.strip()


# ------------------------------------------------------ rendered media types (PS3.18 8.7.4)


def _study(objs) -> str:
    return f"/studies/{objs['native'].StudyInstanceUID}/rendered"


@pytest.mark.parametrize(("accept", "part_type"), [
    ('multipart/related; type="image/png"', "image/png"),
    ("multipart/related; type=image/png", "image/png"),  # unquoted, as OHIF writes parameters
    ("multipart/related; type=image/*", "image/jpeg"),
    ("*/*", "image/jpeg"),  # several images: the multipart default
    (None, "image/jpeg"),
    ('multipart/related; type="image/png"; q=0.4, multipart/related; type="image/gif"',
     "image/gif"),
])
def test_rendered_study_multipart_negotiation(server, objs, accept, part_type):
    status, ctype, body = _get(server, _study(objs), accept)
    assert status == 206, body[:200]  # the video is left out
    assert ctype.startswith(f'multipart/related; type="{part_type}"')
    parts = decode_bytes(body, ctype)
    assert len(parts) == 1 + 2 + 1  # native, 2-frame JPEG 2000, JPEG photo
    assert {p.media_type for p in parts} == {part_type}
    assert all(p.read()[:2] in (b"\xff\xd8", b"\x89P", b"GI") for p in parts)


@pytest.mark.parametrize(("accept", "media_type"), [
    ("image/png", "image/png"), ("image/*", "image/jpeg"),
    ("image/png;q=0.5, image/jpeg", "image/jpeg"),
])
def test_rendered_single_part_accept(server, objs, accept, media_type):
    status, ctype, body = _get(server, _study(objs), accept)  # the representative image
    assert status == 200 and ctype == media_type
    status, ctype, body = _get(server, _inst(objs["native"]) + "/rendered", accept)
    assert status == 200 and ctype == media_type and body[:2] in (b"\xff\xd8", b"\x89P")


def test_rendered_accept_query_parameter_and_406(server, objs):
    path = _inst(objs["native"]) + "/rendered"
    status, ctype, _ = _get(server, path + "?accept=image/gif", "image/jpeg")
    assert status == 200 and ctype == "image/gif"  # PS3.18 8.3.3.1: the parameter wins
    status, _, body = _get(server, path, "application/dicom")
    assert status == 406 and b"image/jpeg" in body
    status, ctype, body = _get(server, _inst(objs["native"]) + "/rendered",
                               'multipart/related; type="image/jpeg"')
    assert status == 200 and ctype.startswith('multipart/related; type="image/jpeg"')
    assert len(decode_bytes(body, ctype)) == 1
    status, _, body = _get(server, _inst(objs["video"]) + "/rendered", "image/jpeg")
    assert status == 406 and body.strip()
