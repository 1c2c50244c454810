"""Tests for dicomweb.mediatypes: Accept parsing and PS3.18 8.7 negotiation."""

import pytest

from dicomweb.mediatypes import (
    AS_STORED,
    EXPLICIT_VR_LE,
    NotAcceptable,
    Offer,
    UnsupportedMediaType,
    bulk_media_type,
    default_transfer_syntax,
    frame_offers,
    instance_offers,
    metadata_offers,
    negotiate,
    parse_accept,
    parse_content_type,
    rendered_offers,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
RLE = "1.2.840.10008.1.2.5"
J2K = "1.2.840.10008.1.2.4.90"
OHIF_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OHIF_UNQUOTED = "multipart/related; type=application/octet-stream; transfer-syntax=*"


@pytest.mark.parametrize(
    ("uid", "media_type"),
    [
        ("1.2.840.10008.1.2.4.50", "image/jpeg"),
        ("1.2.840.10008.1.2.4.70", "image/jpeg"),
        ("1.2.840.10008.1.2.4.80", "image/jls"),
        ("1.2.840.10008.1.2.4.81", "image/jls"),
        ("1.2.840.10008.1.2.4.90", "image/jp2"),
        ("1.2.840.10008.1.2.4.91", "image/jp2"),
        ("1.2.840.10008.1.2.4.100", "video/mpeg2"),
        ("1.2.840.10008.1.2.4.101", "video/mpeg2"),
        ("1.2.840.10008.1.2.4.102", "video/mp4"),
        ("1.2.840.10008.1.2.4.106", "video/mp4"),
        ("1.2.840.10008.1.2.5", "image/dicom-rle"),
        ("1.2.840.10008.1.2.1", "application/octet-stream"),
        ("1.2.840.10008.1.2", "application/octet-stream"),
    ],
)
def test_bulk_media_type_table(uid: str, media_type: str) -> None:
    assert bulk_media_type(uid) == media_type


def test_default_transfer_syntaxes() -> None:
    assert default_transfer_syntax("application/dicom") == EXPLICIT_VR_LE
    assert default_transfer_syntax("image/jpeg") == JPEG_LOSSLESS_SV1
    assert default_transfer_syntax("image/jp2") == J2K
    assert default_transfer_syntax("application/dicom+json") is None


def test_parse_content_type_quoted_and_unquoted() -> None:
    mt, params = parse_content_type(
        'Multipart/Related; type="application/dicom"; Boundary="a b;c"'
    )
    assert mt == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a b;c"}
    mt, params = parse_content_type("multipart/related;type=application/dicom;boundary=xyz")
    assert params["boundary"] == "xyz" and params["type"] == "application/dicom"
    with pytest.raises(UnsupportedMediaType):
        parse_content_type("")
    with pytest.raises(UnsupportedMediaType):
        parse_content_type("not a type")


def test_parse_accept_several_with_q() -> None:
    ranges = parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=*;q=0.5, '
        "application/dicom+json, image/*;q=0.1"
    )
    assert [r.media_type for r in ranges] == [
        "multipart/related",
        "application/dicom+json",
        "image/*",
    ]
    assert ranges[0].q == 0.5 and ranges[0].inner_type == "application/dicom"
    assert ranges[0].transfer_syntax == "*"
    assert "q" not in ranges[0].params
    assert ranges[2].q == 0.1


def test_parse_accept_comma_inside_quotes() -> None:
    ranges = parse_accept('multipart/related; type="a/b, c", text/plain')
    assert len(ranges) == 2 and ranges[0].inner_type == "a/b, c"


def test_parse_accept_bad_q() -> None:
    with pytest.raises(NotAcceptable):
        parse_accept("image/jpeg;q=2")
    with pytest.raises(NotAcceptable):
        parse_accept("image/jpeg;q=high")


@pytest.mark.parametrize("accept", [OHIF_QUOTED, OHIF_UNQUOTED])
def test_ohif_frames_of_jpeg_instance_get_stored_bytes(accept: str) -> None:
    chosen = negotiate(accept, frame_offers(JPEG_BASELINE))
    assert chosen == Offer("application/octet-stream", True, JPEG_BASELINE, False)
    assert chosen.part_content_type() == (
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    )


def test_octet_stream_without_ts_means_decoded() -> None:
    chosen = negotiate(
        'multipart/related; type="application/octet-stream"', frame_offers(JPEG_BASELINE)
    )
    assert chosen.transfer_syntax == EXPLICIT_VR_LE and chosen.transcode
    with pytest.raises(NotAcceptable):
        negotiate(
            "multipart/related; type=application/octet-stream",
            frame_offers(JPEG_BASELINE, can_decode=False),
        )


def test_native_frames() -> None:
    chosen = negotiate(OHIF_QUOTED, frame_offers(EXPLICIT_VR_LE))
    assert chosen.transfer_syntax == EXPLICIT_VR_LE and not chosen.transcode
    with pytest.raises(NotAcceptable):
        negotiate('multipart/related; type="image/jpeg"', frame_offers(EXPLICIT_VR_LE))


def test_image_jpeg_without_ts_falls_back_to_stored_jpeg_family() -> None:
    chosen = negotiate('multipart/related; type="image/jpeg"', frame_offers(JPEG_BASELINE))
    assert chosen.media_type == "image/jpeg" and chosen.transfer_syntax == JPEG_BASELINE
    with pytest.raises(NotAcceptable):
        negotiate(
            f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_LOSSLESS_SV1}',
            frame_offers(JPEG_BASELINE),
        )


def test_rle_media_type_and_q_preference() -> None:
    accept = (
        'multipart/related; type="image/dicom-rle";q=0.9, '
        'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
    )
    assert negotiate(accept, frame_offers(RLE)).transfer_syntax == EXPLICIT_VR_LE
    accept = accept.replace("q=0.9", "q=1").replace("1.2.1", "1.2.1;q=0.2")
    assert negotiate(accept, frame_offers(RLE)).media_type == "image/dicom-rle"


def test_q_zero_excludes() -> None:
    offers = metadata_offers()
    assert negotiate("application/dicom+json;q=0, */*", offers).media_type == "application/json"


def test_metadata() -> None:
    offers = metadata_offers()
    assert negotiate(None, offers).media_type == "application/dicom+json"
    assert negotiate("application/json", offers).media_type == "application/json"
    assert negotiate("application/dicom+json; charset=utf-8", offers).media_type == (
        "application/dicom+json"
    )
    with pytest.raises(NotAcceptable) as ei:
        negotiate("application/dicom+xml", offers)
    assert "available" in ei.value.reason


def test_study_retrieval_as_stored_and_explicit() -> None:
    offers = instance_offers()
    any_ts = negotiate('multipart/related; type="application/dicom"; transfer-syntax=*', offers)
    assert any_ts.transfer_syntax == AS_STORED and not any_ts.transcode
    default = negotiate('multipart/related; type="application/dicom"', offers)
    assert default.transfer_syntax == EXPLICIT_VR_LE
    assert negotiate("*/*", offers) == offers[0]
    assert default.content_type("BOUND") == (
        'multipart/related; type="application/dicom"; boundary=BOUND'
    )
    with pytest.raises(NotAcceptable):
        negotiate(f'multipart/related; type="application/dicom"; transfer-syntax={J2K}', offers)


def test_single_instance_stored_ts_requested() -> None:
    offers = instance_offers(JPEG_BASELINE)
    chosen = negotiate(
        f"multipart/related; type=application/dicom; transfer-syntax={JPEG_BASELINE}", offers
    )
    assert chosen.transfer_syntax == JPEG_BASELINE and not chosen.transcode


def test_implicit_vr_stored_is_not_advertised() -> None:
    offers = instance_offers("1.2.840.10008.1.2")
    stored = negotiate('multipart/related; type="application/dicom"; transfer-syntax=*', offers)
    assert stored.transfer_syntax == EXPLICIT_VR_LE


def test_lenient_bare_application_dicom_for_study() -> None:
    offers = instance_offers()
    assert negotiate("application/dicom", offers).transfer_syntax == EXPLICIT_VR_LE
    with pytest.raises(NotAcceptable):
        negotiate("application/dicom", offers, lenient=False)


def test_rendered() -> None:
    offers = rendered_offers()
    assert negotiate(None, offers).media_type == "image/jpeg"
    assert negotiate("image/png", offers).media_type == "image/png"
    assert negotiate("image/*;q=0.5, image/gif", offers).media_type == "image/gif"
    assert negotiate("image/*", offers).media_type == "image/jpeg"
    assert negotiate("text/html, image/webp;q=0.9, */*;q=0.1", offers).media_type == "image/jpeg"
    with pytest.raises(NotAcceptable):
        negotiate("text/html", offers)


def test_most_specific_range_sets_q() -> None:
    offers = rendered_offers()
    # image/jpeg is excluded even though image/* admits it with q=1.
    assert negotiate("image/*, image/jpeg;q=0", offers).media_type == "image/png"
