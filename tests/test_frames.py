"""Tests for storage.frames: frame index and ranged frame reads on Part 10 files."""

import io
import json

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from storage.frames import (
    FrameIndex,
    FrameNotFound,
    FramesUnavailable,
    index_frames,
    iter_frames,
    read_frame,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

NATIVE = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
    "SC_rgb_small_odd.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_rgb_color.dcm",
    "liver_1frame.dcm",
    "rtdose.dcm",
]
ENCAPSULATED = [
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg.dcm",
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "rtdose_rle.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEGLSNearLossless_16.dcm",
    "examples_ybr_color.dcm",
]


class CountingReader(io.RawIOBase):
    """A seekable reader that counts bytes read (stands in for the decrypting reader)."""

    def __init__(self, data: bytes) -> None:
        self._bio = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._bio.read(n)
        self.bytes_read += len(data)
        return data

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._bio.seek(pos, whence)

    def tell(self) -> int:
        return self._bio.tell()


def _file_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def _reference_frames(data: bytes, index: FrameIndex) -> list[bytes]:
    ds = pydicom.dcmread(io.BytesIO(data))
    if index.encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=index.number_of_frames))
    n = index.frame_length
    return [ds.PixelData[i * n : (i + 1) * n] for i in range(index.number_of_frames)]


@pytest.mark.parametrize("name", NATIVE + ENCAPSULATED)
def test_frames_equal_pydicom(name: str) -> None:
    data = _file_bytes(name)
    ds = pydicom.dcmread(io.BytesIO(data))
    index = index_frames(io.BytesIO(data))
    assert index.number_of_frames == int(ds.get("NumberOfFrames", 1) or 1)
    assert index.transfer_syntax == ds.file_meta.TransferSyntaxUID
    frames = list(iter_frames(io.BytesIO(data), index))
    assert frames == _reference_frames(data, index)
    assert all(frames)


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm"])
def test_native_frame_matches_pixel_array(name: str) -> None:
    data = _file_bytes(name)
    ds = pydicom.dcmread(io.BytesIO(data))
    index = index_frames(io.BytesIO(data))
    arr = ds.pixel_array
    if index.number_of_frames == 1:
        arr = arr[np.newaxis]
    last = index.number_of_frames
    frame = read_frame(io.BytesIO(data), index, last)
    dtype = arr.dtype.newbyteorder("<")
    assert np.array_equal(np.frombuffer(frame, dtype=dtype).reshape(arr[last - 1].shape), arr[-1])


def test_index_is_json_serialisable() -> None:
    data = _file_bytes("SC_rgb_rle_2frame.dcm")
    index = index_frames(io.BytesIO(data))
    again = FrameIndex.from_dict(json.loads(json.dumps(index.to_dict())))
    assert again == index
    assert read_frame(io.BytesIO(data), again, 2) == read_frame(io.BytesIO(data), index, 2)


def test_reads_only_the_frame() -> None:
    data = _file_bytes("rtdose.dcm")
    index = index_frames(io.BytesIO(data))
    reader = CountingReader(data)
    frame = read_frame(reader, index, 7)  # type: ignore[arg-type]
    assert reader.bytes_read == len(frame) == index.frame_length == 400


def test_out_of_range_frames() -> None:
    data = _file_bytes("CT_small.dcm")
    index = index_frames(io.BytesIO(data))
    for n in (0, 2, -1):
        with pytest.raises(FrameNotFound):
            read_frame(io.BytesIO(data), index, n)
    assert issubclass(FrameNotFound, IndexError)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("image_dfl.dcm", "deflated"),
        ("MR_small_bigendian.dcm", "Big Endian"),
        ("test-SR.dcm", "no pixel data"),
        ("MR_truncated.dcm", "truncated"),
    ],
)
def test_frames_unavailable(name: str, why: str) -> None:
    with pytest.raises(FramesUnavailable, match=why):
        index_frames(io.BytesIO(_file_bytes(name)))


def _multiframe_jpeg(*, bot: bool, fragments_per_frame: int, extended: bool = False) -> bytes:
    """A 3-frame JPEG Baseline object built from a real JPEG codestream."""
    src = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    jpeg = next(generate_frames(src.PixelData, number_of_frames=1))
    # Three distinguishable frames: same codestream plus a different COM segment.
    frames = [jpeg[:2] + b"\xff\xfe\x00\x04F" + bytes([48 + i]) + jpeg[2:] for i in range(3)]
    ds = src.copy()
    ds.NumberOfFrames = 3
    if extended:
        pixel, offsets, lengths = encapsulate_extended(frames)
        ds.ExtendedOffsetTable = offsets
        ds.ExtendedOffsetTableLengths = lengths
    else:
        pixel = encapsulate(frames, fragments_per_frame=fragments_per_frame, has_bot=bot)
    ds.PixelData = pixel
    ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), frames


@pytest.mark.parametrize(
    ("bot", "per_frame", "extended"),
    [(True, 1, False), (True, 3, False), (False, 1, False), (False, 2, False), (False, 1, True)],
)
def test_multiframe_jpeg_offset_tables_and_eoi_scan(
    bot: bool, per_frame: int, extended: bool
) -> None:
    data, frames = _multiframe_jpeg(bot=bot, fragments_per_frame=per_frame, extended=extended)
    index = index_frames(io.BytesIO(data))
    assert index.number_of_frames == 3
    assert all(len(f) == (1 if extended else per_frame) for f in index.fragments)
    assert list(iter_frames(io.BytesIO(data), index)) == frames
    assert read_frame(io.BytesIO(data), index, 2) == frames[1]


def test_rle_without_bot_one_fragment_per_frame() -> None:
    data = _file_bytes("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    ds.PixelData = encapsulate(frames, has_bot=False)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    index = index_frames(io.BytesIO(out.getvalue()))
    assert index.transfer_syntax == RLELossless
    assert list(iter_frames(io.BytesIO(out.getvalue()), index)) == frames


def _bit_packed(rows: int, cols: int, nframes: int) -> tuple[bytes, np.ndarray]:
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 2, size=(nframes, rows, cols), dtype=np.uint8)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, nframes
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    packed = np.packbits(arr.ravel(), bitorder="little").tobytes()
    ds.PixelData = packed + (b"\x00" if len(packed) % 2 else b"")
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), arr


@pytest.mark.parametrize(("rows", "cols", "nframes"), [(3, 5, 4), (8, 8, 3), (7, 9, 5)])
def test_bits_allocated_1_frames_unaligned(rows: int, cols: int, nframes: int) -> None:
    data, arr = _bit_packed(rows, cols, nframes)
    index = index_frames(io.BytesIO(data))
    assert index.frame_bits == rows * cols
    for n in range(1, nframes + 1):
        frame = read_frame(io.BytesIO(data), index, n)
        assert len(frame) == (rows * cols + 7) // 8
        bits = np.unpackbits(np.frombuffer(frame, np.uint8), bitorder="little")[: rows * cols]
        assert np.array_equal(bits.reshape(rows, cols), arr[n - 1])
    # pydicom agrees on the whole volume.
    assert np.array_equal(pydicom.dcmread(io.BytesIO(data)).pixel_array, arr)


def test_native_multiframe_index_and_reads_touch_no_other_pixels() -> None:
    """Indexing reads the header only, each frame read reads that frame only (timings: bench/pixels.py)."""
    rows = cols = 512
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, 20
    pixels = np.arange(rows * cols * 20, dtype=np.uint16).tobytes()
    ds.PixelData = pixels
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    reader = CountingReader(data)
    index = index_frames(reader)  # type: ignore[arg-type]
    assert reader.bytes_read <= len(data) - len(pixels)  # no pixel data read
    frame_length = rows * cols * 2
    for n in range(1, 21):
        before = reader.bytes_read
        frame = read_frame(reader, index, n)  # type: ignore[arg-type]
        assert frame == pixels[(n - 1) * frame_length: n * frame_length]
        assert reader.bytes_read - before == frame_length


def test_jpeg_baseline_constant_is_what_we_index() -> None:
    data = _file_bytes("SC_rgb_jpeg_dcmtk.dcm")
    assert index_frames(io.BytesIO(data)).transfer_syntax == JPEGBaseline8Bit
