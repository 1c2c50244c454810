"""Photos <-> VL Photographic Image Storage (PS3.3 A.32.4, VL Image module C.8.12.1).

JPEG bitstreams (baseline, extended sequential) are kept as they are, one
fragment per frame (PS3.5 A.4); other lossless images Pillow reads (PNG, GIF,
BMP, TIFF) and progressive JPEGs (whose transfer syntax is retired) are
stored as native 8-bit pixels in Explicit VR Little Endian; they come back as
PNG with the same pixel values.
"""

from __future__ import annotations

import io
import warnings
from datetime import datetime

from PIL import Image, UnidentifiedImageError
from pydicom import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit

from .common import Provenance, base_dataset, finish, record_provenance
from .errors import ArtifactTooLarge, InvalidArtifact, UnsupportedArtifact
from .jpeg import JpegInfo, parse_jpeg
from .model import Original, PatientInfo, StudyInfo

VL_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
_MAX_DIM = 0xFFFF  # Rows and Columns are US (PS3.3 C.7.6.3)


def _image_base(
    patient: PatientInfo, study: StudyInfo, series_description: str, when: datetime
) -> Dataset:
    ds = base_dataset(
        sop_class_uid=VL_PHOTOGRAPHIC_IMAGE_STORAGE,
        modality="XC",
        patient=patient,
        study=study,
        series_description=series_description,
        content_datetime=when,
    )
    ds.PatientOrientation = None  # General Image (C.7.6.1), type 2C
    ds.AcquisitionContextSequence = []  # Acquisition Context (C.7.6.14), type 2
    ds.Laterality = None  # General Series (C.7.3.1), type 2C: unknown
    ds.BurnedInAnnotation = "NO"
    return ds


def _pixel_module(ds: Dataset, rows: int, cols: int, samples: int, photometric: str) -> None:
    """Image Pixel (C.7.6.3) with the VL Image constraints (8 bits, C.8.12.1.1)."""
    if rows > _MAX_DIM or cols > _MAX_DIM:
        raise ArtifactTooLarge(f"image of {cols}x{rows} exceeds DICOM's 65535x65535")
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0


def encapsulate_jpeg(
    data: bytes,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str,
    title: str,
    series_description: str,
    content_datetime: datetime,
) -> Dataset:
    """A JPEG kept as is (sequential) or decoded to native pixels (progressive)."""
    info = parse_jpeg(data)
    if info.process == 2:
        return encapsulate_pillow_image(
            data,
            media_type="image/jpeg",
            patient=patient,
            study=study,
            filename=filename,
            title=title,
            series_description=series_description,
            content_datetime=content_datetime,
            lossy_source=True,
        )
    if info.process not in (0, 1) or info.precision != 8:
        raise UnsupportedArtifact(
            f"JPEG process SOF{info.process} with {info.precision}-bit samples is not supported "
            "(only 8-bit baseline, extended sequential and progressive JPEG)"
        )
    ds = _image_base(patient, study, series_description, content_datetime)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _pixel_module(ds, info.rows, info.columns, info.samples, info.photometric())
    _lossy(ds, info, len(data))
    _title(ds, title)
    ds.PixelData = encapsulate([data], has_bot=True)
    ds["PixelData"].VR = "OB"
    record_provenance(ds, Provenance("image/jpeg", filename, data))
    ts = JPEGBaseline8Bit if info.process == 0 else JPEGExtended12Bit
    return finish(ds, ts)


def _lossy(ds: Dataset, info: JpegInfo, size: int) -> None:
    ds.LossyImageCompression = "01"
    raw = info.rows * info.columns * info.samples
    ds.LossyImageCompressionRatio = f"{raw / size:.4g}"[:16]
    ds.LossyImageCompressionMethod = "ISO_10918_1"


def _title(ds: Dataset, title: str) -> None:
    if title:
        ds.ImageComments = title  # General Image (C.7.6.1): free-text description


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if getattr(img, "n_frames", 1) > 1:
                raise UnsupportedArtifact(
                    "multi-frame images (animated GIF, multi-page TIFF) are not supported"
                )
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ArtifactTooLarge(f"the image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidArtifact("the image cannot be read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidArtifact(f"the image is truncated or corrupt: {exc}") from exc
    return img


def _to_dicom_mode(img: Image.Image) -> Image.Image:
    """Map a Pillow image to L or RGB without changing any visible pixel value."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA"):
        alpha = img.getchannel("A").getextrema()
        if alpha != (255, 255):
            raise UnsupportedArtifact(
                "images with transparency are not supported (DICOM has no alpha)"
            )
        img = img.convert("RGB" if img.mode == "RGBA" else "L")
    if img.mode not in ("L", "RGB"):
        raise UnsupportedArtifact(
            f"image mode {mode} is not supported (8-bit grey, palette or RGB only)"
        )
    return img


def encapsulate_pillow_image(
    data: bytes,
    *,
    media_type: str,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str,
    title: str,
    series_description: str,
    content_datetime: datetime,
    lossy_source: bool = False,
) -> Dataset:
    """A lossless image (or a decoded progressive JPEG) as native pixels."""
    img = _to_dicom_mode(_open(data))
    ds = _image_base(patient, study, series_description, content_datetime)
    ds.ImageType = ["DERIVED" if lossy_source else "ORIGINAL", "PRIMARY"]
    samples = 3 if img.mode == "RGB" else 1
    _pixel_module(ds, img.height, img.width, samples, "RGB" if samples == 3 else "MONOCHROME2")
    if lossy_source:
        _lossy(ds, parse_jpeg(data), len(data))
    else:
        ds.LossyImageCompression = "00"
    _title(ds, title)
    pixels = img.tobytes()
    ds.PixelData = pixels + b"\x00" if len(pixels) % 2 else pixels
    ds["PixelData"].VR = "OB"
    icc = img.info.get("icc_profile")
    if icc and samples == 3:
        ds.ICCProfile = icc  # ICC Profile module (C.11.15)
    record_provenance(ds, Provenance(media_type, filename, data))
    return finish(ds, ExplicitVRLittleEndian)


def extract_image(ds: Dataset, filename: str, size: int | None) -> Original:
    """JPEG bitstream back as is; native pixels back as a PNG."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed:
        if ts not in (JPEGBaseline8Bit, JPEGExtended12Bit):
            raise UnsupportedArtifact(f"cannot extract an image in transfer syntax {ts.name}")
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        if size is not None:
            frame = frame[:size]
        elif frame.endswith(b"\xff\xd9\x00"):
            frame = frame[:-1]  # the even-length pad after EOI (PS3.5 A.4)
        return Original(frame, "image/jpeg", filename)
    photometric = ds.PhotometricInterpretation
    if ds.BitsAllocated != 8 or photometric not in ("MONOCHROME2", "RGB"):
        raise UnsupportedArtifact(
            f"cannot export {photometric} {ds.BitsAllocated}-bit pixels as PNG"
        )
    if ds.get("PlanarConfiguration", 0) != 0:
        raise UnsupportedArtifact("cannot export planar (colour-by-plane) pixels as PNG")
    mode = "RGB" if photometric == "RGB" else "L"
    n = ds.Rows * ds.Columns * (3 if mode == "RGB" else 1)
    pixels = bytes(ds.PixelData)[:n]
    if len(pixels) != n:
        raise InvalidArtifact("the pixel data is shorter than Rows x Columns says")
    img = Image.frombytes(mode, (ds.Columns, ds.Rows), pixels)
    out = io.BytesIO()
    icc = ds.get("ICCProfile")
    img.save(out, format="PNG", icc_profile=bytes(icc) if icc else None)
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    return Original(out.getvalue(), "image/png", f"{stem}.png")
