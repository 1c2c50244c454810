"""Photos and scans <-> VL Photographic Image Storage (PS3.3 A.32.4, VL Image module C.8.12.1).

JPEG bitstreams (baseline, extended sequential) without an EXIF rotation are kept as they are,
one fragment per frame (PS3.5 A.4). Everything else Pillow reads -- PNG, GIF, BMP, TIFF, HEIC/HEIF
(pillow-heif), progressive JPEGs (whose transfer syntax is retired) and JPEGs whose EXIF
Orientation says the camera was turned -- is decoded and stored as native 8-bit pixels in
Explicit VR Little Endian, turned upright as the EXIF Orientation (0x0112) says (a viewer shows
DICOM pixels as they are), and the original file is kept in the private "original" block
(``common``, xx05), so it comes back byte for byte; objects made before that come back as PNG.

Multi-page TIFF scans, animated GIFs and HEIF files with several images become **one object per
page**, in one series (Instance Number = page number), rather than one multi-frame object: the VL
Photographic Image IOD has no Multi-frame module (dciodvfy calls Number of Frames "not present in
standard DICOM IOD" there), and the pages of a scan may differ in size and colour, which the
frames of one object cannot. The first page carries the original file; the others carry their
page number and come back as PNG.
"""

from __future__ import annotations

import io
import warnings
from datetime import datetime

from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError
from pydicom import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit

from .common import (
    EL_FILENAME,
    EL_MEDIA_TYPE,
    EL_ORIGINAL_BYTES,
    EL_SIZE,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    Provenance,
    base_dataset,
    finish,
    private_value,
    record_provenance,
)
from .errors import ArtifactTooLarge, InvalidArtifact, UnsupportedArtifact
from .jpeg import JpegInfo, parse_jpeg
from .model import Original, PatientInfo, StudyInfo

VL_PHOTOGRAPHIC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
_MAX_DIM = 0xFFFF  # Rows and Columns are US (PS3.3 C.7.6.3)
MAX_PAGES = 500
_EXIF_ORIENTATION = 0x0112
_heif_registered = False


def _register_heif() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif), once, when first needed."""
    global _heif_registered
    if not _heif_registered:
        from pillow_heif import register_heif_opener

        register_heif_opener()
        _heif_registered = True


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
    if info.process == 2 or _exif_rotated(data):
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


def _exif_rotated(data: bytes) -> bool:
    """Whether a JPEG's EXIF Orientation asks for a turn or flip (values 2..8)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1)
    except (OSError, SyntaxError, ValueError):
        return False


def _pages(data: bytes, what: str = "image") -> list[Image.Image]:
    """Every page/frame, decoded, turned upright by its EXIF Orientation."""
    _register_heif()
    pages: list[Image.Image] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            count = getattr(img, "n_frames", 1)
            if count > MAX_PAGES:
                raise ArtifactTooLarge(f"the image has {count} pages; the limit is {MAX_PAGES}")
            for frame in ImageSequence.Iterator(img):
                frame.load()
                page = ImageOps.exif_transpose(frame.copy()) or frame.copy()
                if "icc_profile" in frame.info:
                    page.info["icc_profile"] = frame.info["icc_profile"]
                pages.append(page)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ArtifactTooLarge(f"the image has too many pixels: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidArtifact(f"the {what} cannot be read (truncated or corrupt?)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidArtifact(f"the {what} is truncated or corrupt: {exc}") from exc
    if not pages:
        raise InvalidArtifact(f"the {what} has no pages")
    return pages


def _open(data: bytes) -> Image.Image:
    """The first page (see :func:`_pages`)."""
    return _pages(data)[0]


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
    """A single-page image as native pixels (see :func:`encapsulate_pages`)."""
    pages = encapsulate_pages(data, media_type=media_type, patient=patient, study=study,
                              filename=filename, title=title,
                              series_description=series_description,
                              content_datetime=content_datetime, lossy_source=lossy_source)
    if len(pages) != 1:
        raise UnsupportedArtifact(f"the image has {len(pages)} pages: store each (encapsulate_all)")
    return pages[0]


def encapsulate_pages(
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
) -> list[Dataset]:
    """One VL Photographic object per page, native pixels, upright, in one series."""
    pages = [_to_dicom_mode(p) for p in _pages(data, f"{media_type} image")]
    out: list[Dataset] = []
    for number, img in enumerate(pages, start=1):
        ds = _image_base(patient, study, series_description, content_datetime)
        if out:
            ds.SeriesInstanceUID = out[0].SeriesInstanceUID
            ds.StudyInstanceUID = out[0].StudyInstanceUID
            ds.StudyDate, ds.StudyTime = out[0].StudyDate, out[0].StudyTime
        ds.InstanceNumber = number
        ds.ImageType = ["DERIVED" if lossy_source else "ORIGINAL", "PRIMARY"]
        samples = 3 if img.mode == "RGB" else 1
        _pixel_module(ds, img.height, img.width, samples, "RGB" if samples == 3 else "MONOCHROME2")
        if lossy_source:
            _lossy(ds, parse_jpeg(data), len(data))
        elif media_type in ("image/heic", "image/heif"):
            ds.LossyImageCompression = "01"  # HEVC-coded photo (ISO/IEC 23008-12)
            ds.LossyImageCompressionMethod = "ISO_23008_2"
        else:
            ds.LossyImageCompression = "00"
        page_title = title if len(pages) == 1 else f"{title} (page {number} of {len(pages)})"
        _title(ds, page_title.strip())
        pixels = img.tobytes()
        ds.PixelData = pixels + b"\x00" if len(pixels) % 2 else pixels
        ds["PixelData"].VR = "OB"
        icc = img.info.get("icc_profile")
        if icc and samples == 3:
            ds.ICCProfile = icc  # ICC Profile module (C.11.15)
        if number == 1:
            record_provenance(ds, Provenance(media_type, filename, data, keep_bytes=True, after_pixels=True))
        else:
            stem = filename.rsplit(".", 1)[0] if "." in filename else filename
            block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
            block.add_new(EL_MEDIA_TYPE, "LO", "image/png")
            block.add_new(EL_FILENAME, "UT", f"{stem}-page{number}.png")
        out.append(finish(ds, ExplicitVRLittleEndian))
    return out


def extract_image(ds: Dataset, filename: str, size: int | None) -> Original:
    """JPEG bitstream back as is; the kept original; else native pixels back as a PNG."""
    ts = ds.file_meta.TransferSyntaxUID
    kept = private_value(ds, EL_ORIGINAL_BYTES)
    declared = private_value(ds, EL_MEDIA_TYPE)
    if isinstance(kept, bytes) and declared:
        kept_size = private_value(ds, EL_SIZE)
        return Original(kept[:kept_size] if isinstance(kept_size, int) else kept, str(declared),
                        filename)
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
