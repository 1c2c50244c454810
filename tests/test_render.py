"""Tests for dicomweb.render: rendered frames and thumbnails (PS3.18 8.3.5)."""

import io
import time

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dicomweb.render import FrameOutOfRange, RenderError, render, thumbnail

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


def test_render_512_is_fast() -> None:
    ds = _ds("liver_1frame.dcm")  # 512x512
    ct = _ds("CT_small.dcm")
    ct.Rows = ct.Columns = 512
    ct.PixelData = (np.arange(512 * 512, dtype=np.uint16) % 4096).tobytes()
    for d in (ds, ct):
        render(d)
        t = time.perf_counter()
        for _ in range(5):
            render(d)
        assert (time.perf_counter() - t) / 5 < 0.1
