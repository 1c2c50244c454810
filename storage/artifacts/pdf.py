"""PDF <-> Encapsulated PDF Storage (PS3.3 A.45.1, Encapsulated Document module C.24.2).

The PDF goes byte for byte into EncapsulatedDocument (0042,0011), padded to
even length with a NUL as PS3.5 7.1.1 requires; EncapsulatedDocumentLength
(0042,0015), the standard attribute for the length before padding, tells the
extractor whether to strip that pad. pypdf checks the PDF is one.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from .common import Provenance, base_dataset, finish, record_provenance
from .errors import InvalidArtifact
from .model import Original, PatientInfo, StudyInfo

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
MEDIA_TYPE = "application/pdf"


def validate_pdf(data: bytes) -> int:
    """Check ``data`` is a complete, parseable PDF; return its page count."""
    if b"%%EOF" not in data[-2048:]:
        raise InvalidArtifact("the PDF is truncated (no %%EOF marker at its end)")
    # pypdf logs recoverable problems of the file, not PHI, but quieten it here.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        pages = len(reader.pages)
        if pages:
            reader.pages[0].mediabox  # noqa: B018 - forces the first page to parse
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise InvalidArtifact(f"the PDF cannot be parsed: {type(exc).__name__}") from exc
    if reader.is_encrypted:
        # Stored as is; a viewer asks for the password. Nothing else to check.
        return pages
    if pages == 0:
        raise InvalidArtifact("the PDF has no pages")
    return pages


def encapsulate_pdf(
    data: bytes,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    filename: str,
    title: str,
    series_description: str,
    content_datetime: datetime,
) -> Dataset:
    """Build an Encapsulated PDF object (PS3.3 A.45.1)."""
    validate_pdf(data)
    ds = base_dataset(
        sop_class_uid=ENCAPSULATED_PDF_STORAGE,
        modality="DOC",
        patient=patient,
        study=study,
        series_description=series_description,
        content_datetime=content_datetime,
    )
    # SC Equipment (C.8.6.1): converted on a workstation, as dcmtk's pdf2dcm says.
    ds.ConversionType = "WSD"
    # Encapsulated Document (C.24.2)
    ds.AcquisitionDateTime = content_datetime.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = MEDIA_TYPE
    ds.EncapsulatedDocument = data + b"\x00" if len(data) % 2 else data
    ds.EncapsulatedDocumentLength = len(data)
    record_provenance(ds, Provenance(MEDIA_TYPE, filename, data))
    return finish(ds, ExplicitVRLittleEndian)


def extract_pdf(ds: Dataset, filename: str) -> Original:
    """The original PDF bytes from an Encapsulated PDF object."""
    doc = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    if length is not None:
        if length > len(doc):
            raise InvalidArtifact("EncapsulatedDocumentLength exceeds the encapsulated data")
        doc = doc[:length]
    elif doc.endswith(b"\x00"):
        # Older objects have no length: a PDF never ends with NUL.
        doc = doc[:-1]
    media_type = str(ds.get("MIMETypeOfEncapsulatedDocument", MEDIA_TYPE))
    return Original(doc, media_type, filename)
