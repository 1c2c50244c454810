"""Tests for dicomweb.render: rendered frames and thumbnails (PS3.18 8.3.5)."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dicomweb.render import (
    FrameOutOfRange,
    RenderError,
    Viewport,
    Window,
    parse_quality,
    parse_viewport,
    parse_window,
    render,
    thumbnail,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _ds(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _img(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("CT_small.dcm", "L"),
        ("MR_small.dcm", "L"),
        ("MR_small_RLE.dcm", "L"),
        ("MR_small_jpeg_ls_lossless.dcm", "L"),
        ("JPEG2000.dcm", "L"),
        ("SC_rgb_small_odd.dcm", "RGB"),
        ("SC_rgb_jpeg_dcmtk.dcm", "RGB"),
        ("SC_ybr_full_422_uncompressed.dcm", "RGB"),
        ("examples_palette.dcm", "RGB"),
        ("liver_1frame.dcm", "L"),
    ],
)
def test_render_size_mode_not_blank(name: str, mode: str) -> None:
    ds = _ds(name)
    img = _img(render(ds))
    assert img.format == "JPEG"
    assert img.size == (ds.Columns, ds.Rows)
    assert img.mode == mode
    arr = np.asarray(img)
    assert arr.std() > 5  # not a flat image


def test_rgb_colours_survive_jpeg_decode() -> None:
    ds = _ds("SC_rgb_jpeg_dcmtk.dcm")  # YBR_FULL in JPEG, red band at the top
    rendered = np.asarray(_img(render(ds, media_type="image/png"))).astype(int)
    reference = ds.pixel_array.astype(int)  # pydicom converts to RGB
    assert np.abs(rendered - reference).mean() < 2
    assert rendered[5, 50, 0] > 200 and rendered[5, 50, 1] < 50  # red


def test_png_is_lossless_window_of_mr() -> None:
    ds = _ds("MR_small.dcm")
    arr = np.asarray(_img(render(ds, media_type="image/png", window=(600.0, 1201.0))))
    raw = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    expected = np.clip((raw - 599.5) / 1200 + 0.5, 0, 1) * 255
    assert np.abs(arr - expected).max() <= 1


def test_windowing_changes_output() -> None:
    ds = _ds("CT_small.dcm")
    wide = np.asarray(_img(render(ds, media_type="image/png", window=(40, 4000))))
    narrow = np.asarray(_img(render(ds, media_type="image/png", window=(40, 80))))
    assert not np.array_equal(wide, narrow)
    # A narrow window saturates more pixels.
    assert ((narrow == 0) | (narrow == 255)).sum() > ((wide == 0) | (wide == 255)).sum()


def test_monochrome1_is_inverted() -> None:
    ds = _ds("MR_small.dcm")
    m2 = np.asarray(_img(render(ds, media_type="image/png"))).astype(int)
    ds.PhotometricInterpretation = "MONOCHROME1"
    m1 = np.asarray(_img(render(ds, media_type="image/png"))).astype(int)
    assert np.array_equal(m1, 255 - m2)


def test_multiframe_frames_differ_and_range() -> None:
    ds = _ds("SC_rgb_rle_2frame.dcm")
    f1 = np.asarray(_img(render(ds, 1, media_type="image/png")))
    f2 = np.asarray(_img(render(ds, 2, media_type="image/png")))
    assert np.array_equal(f1, ds.pixel_array[0])
    assert np.array_equal(f2, ds.pixel_array[1])
    with pytest.raises(FrameOutOfRange):
        render(ds, 3)
    with pytest.raises(FrameOutOfRange):
        render(ds, 0)


def test_rtdose_multiframe_selects_the_frame() -> None:
    ds = _ds("rtdose.dcm")
    frames = [np.asarray(_img(render(ds, n, media_type="image/png"))) for n in (1, 15)]
    assert frames[0].shape == (10, 10)
    assert not np.array_equal(frames[0], frames[1])


def test_viewport_keeps_aspect_ratio() -> None:
    ds = _ds("JPEG2000.dcm")  # 256 wide x 1024 high
    img = _img(render(ds, viewport=(256, 256)))
    assert img.size == (64, 256)


def test_gif_and_bad_media_type() -> None:
    assert _img(render(_ds("CT_small.dcm"), media_type="image/gif")).format == "GIF"
    with pytest.raises(RenderError, match="cannot render"):
        render(_ds("CT_small.dcm"), media_type="image/webp")
    with pytest.raises(RenderError):
        render(_ds("CT_small.dcm"), quality=0)
    with pytest.raises(RenderError):
        render(_ds("CT_small.dcm"), window=(40, 0))


def test_quality_changes_size() -> None:
    ds = _ds("CT_small.dcm")
    assert len(render(ds, quality=20)) < len(render(ds, quality=95))


def test_sr_and_pdf_raise() -> None:
    with pytest.raises(RenderError, match="no pixel data"):
        render(_ds("test-SR.dcm"))
    pdf = pydicom.Dataset()
    pdf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    pdf.EncapsulatedDocument = b"%PDF-1.4"
    with pytest.raises(RenderError, match="PDF"):
        render(pdf)


def test_thumbnail() -> None:
    img = _img(thumbnail(_ds("JPEG2000.dcm"), 128))
    assert max(img.size) == 128 and img.format == "JPEG"
    img = _img(thumbnail(_ds("SC_rgb_rle_2frame.dcm"), 64))
    assert img.size == (64, 64) and img.mode == "RGB"


def test_render_512() -> None:
    """512 x 512 CTs render at full size, not blank (timings: bench/pixels.py)."""
    ds = _ds("liver_1frame.dcm")  # 512x512
    ct = _ds("CT_small.dcm")
    ct.Rows = ct.Columns = 512
    ct.PixelData = (np.arange(512 * 512, dtype=np.uint16) % 4096).tobytes()
    for d in (ds, ct):
        img = _img(render(d))
        assert img.format == "JPEG" and img.size == (512, 512) and img.mode == "L"
        assert np.asarray(img).std() > 5


# ------------------------------------------------ query parameters (PS3.18 8.3.5.1, Table 8.3.5-1)


def test_parse_window_functions_and_errors() -> None:
    assert parse_window("40,400") == Window(40.0, 400.0, "LINEAR")
    assert parse_window("40,400,linear-exact") == Window(40.0, 400.0, "LINEAR_EXACT")
    assert parse_window(" -600.5 , 1500 , SIGMOID ") == Window(-600.5, 1500.0, "SIGMOID")
    for bad, reason in [("40", "expected"), ("40,400,gamma", "not supported"),
                        ("a,400,linear", "not a number"), ("40,0,linear", "width"),
                        ("40,0.5,linear", ">= 1"), ("40,0,sigmoid", "> 0"), ("nan,4", "bad"),
                        ("1,2,3,4", "expected")]:
        with pytest.raises(RenderError, match=reason):
            parse_window(bad)


def test_parse_viewport_and_quality() -> None:
    assert parse_viewport("256,128") == Viewport(256, 128)
    assert parse_viewport(",512") == Viewport(None, 512)
    assert parse_viewport("64,64,10,20,-30,40") == Viewport(64, 64, 10, 20, -30, 40)
    assert parse_viewport("64,64,,,,") == Viewport(64, 64)
    for bad in ("0,10", "10", "1,2,3", "a,b", ",", "99999,10", "10,10,-1,0,5,5", "10,10,0,0,0,5",
                "10.5,10"):
        with pytest.raises(RenderError):
            parse_viewport(bad)
    assert parse_quality("1") == 1 and parse_quality("100") == 100
    for bad in ("0", "101", "x", "-5", "50.5", "", "\u00b2", "\u0665\u0660"):  # ², Arabic-Indic 50
        with pytest.raises(RenderError, match="quality"):
            parse_quality(bad)


def _modality(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0))


def test_linear_exact_and_sigmoid_follow_ps3_3() -> None:
    ds = _ds("CT_small.dcm")
    values = _modality(ds)
    c, w = 40.0, 400.0
    exact = np.asarray(_img(render(ds, media_type="image/png", window=(c, w, "LINEAR_EXACT"))))
    expected = np.clip((values - c) / w + 0.5, 0, 1) * 255  # C.11.2.1.3.2
    assert np.abs(exact - expected).max() <= 1
    sigmoid = np.asarray(_img(render(ds, media_type="image/png", window=(c, w, "SIGMOID"))))
    expected = 255 / (1 + np.exp(-4 * (values - c) / w))  # C.11.2.1.3.1
    assert np.abs(sigmoid - expected).max() <= 1
    linear = np.asarray(_img(render(ds, media_type="image/png", window=(c, w))))
    assert not np.array_equal(linear, sigmoid)


def test_dataset_voi_lut_function_is_used() -> None:
    ds = _ds("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.VOILUTFunction = "SIGMOID"
    from_ds = np.asarray(_img(render(ds, media_type="image/png")))
    asked = np.asarray(_img(render(ds, media_type="image/png", window=Window(40, 400, "SIGMOID"))))
    assert np.array_equal(from_ds, asked)


def test_viewport_source_region_and_flips() -> None:
    ds = _ds("CT_small.dcm")  # 128 x 128
    full = np.asarray(_img(render(ds, media_type="image/png")))
    crop = np.asarray(_img(render(ds, media_type="image/png",
                                  viewport=Viewport(40, 30, 10, 20, 40, 30))))
    assert np.array_equal(crop, full[20:50, 10:50])
    flipped = np.asarray(_img(render(ds, media_type="image/png",
                                     viewport=Viewport(40, 30, 10, 20, -40, -30))))
    assert np.array_equal(flipped, full[20:50, 10:50][::-1, ::-1])
    # scaled to fit, aspect kept; a missing side follows from the other
    assert _img(render(ds, viewport=Viewport(None, 64, 0, 0, 64, 32))).size == (128, 64)
    assert _img(render(ds, viewport=Viewport(32, 500))).size == (32, 32)
    with pytest.raises(RenderError, match="outside"):
        render(ds, viewport=Viewport(10, 10, 500, 0))


def test_tuple_viewport_side_beyond_limit_is_unbounded() -> None:
    ds = _ds("CT_small.dcm")  # 128 x 128
    assert _img(render(ds, viewport=(1 << 16, 16))).size == (16, 16)  # WADO-URI rows only
    assert _img(render(ds, viewport=(1 << 16, 1 << 16))).size == (128, 128)
