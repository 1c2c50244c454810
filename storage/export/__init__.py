"""A patient's take-home record: DICOM media layout zip, encrypted with OpenPGP or age.

See security.md "Exports a patient can open anywhere" and PS3.10/PS3.12 for the layout.
"""

from storage.export.age import AgeScryptWriter
from storage.export.encryptor import EncryptingWriter
from storage.export.errors import EncryptionStateError, ExportError
from storage.export.openpgp import OpenPGPSymmetricWriter
from storage.export.writer import (
    ExportFormat,
    ExportItem,
    ExportSummary,
    OriginalFile,
    encrypting_writer,
    is_export_format,
    write_export,
    write_zip,
)

__all__ = [
    "AgeScryptWriter",
    "EncryptingWriter",
    "EncryptionStateError",
    "ExportError",
    "ExportFormat",
    "ExportItem",
    "ExportSummary",
    "OpenPGPSymmetricWriter",
    "OriginalFile",
    "encrypting_writer",
    "is_export_format",
    "write_export",
    "write_zip",
]
