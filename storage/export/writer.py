"""Write a patient's take-home record: a zip in PS3.10/PS3.12 media layout, optionally encrypted.

Zip members, in order: every DICOM file under ``DICOM/...`` (stored bytes, unchanged), every
original under ``ORIGINALS/``, then ``DICOMDIR``, ``INDEX.HTM`` and ``README.txt`` (these need
all records, and a zip's members may come in any order). The zip goes to a non-seekable stream
(data descriptors, ZIP64 forced per member), so nothing is buffered beyond one chunk.
"""

from __future__ import annotations

import io
import struct
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, BinaryIO, Literal, TypeGuard

from pydicom import dcmread
from pydicom.dataset import Dataset

from storage.export.age import DEFAULT_WORK_FACTOR, AgeScryptWriter
from storage.export.catalog import Catalog
from storage.export.dicomdir import build_dicomdir
from storage.export.encryptor import EncryptingWriter
from storage.export.errors import ExportError
from storage.export.openpgp import DEFAULT_S2K_COUNT_BYTE, OpenPGPSymmetricWriter
from storage.export.pages import index_html, readme_text
from storage.transfer_syntaxes import is_native_uncompressed  # deflates well; JPEG, MPEG... do not

ExportFormat = Literal["gpg", "age", "zip"]


def is_export_format(fmt: str) -> TypeGuard[ExportFormat]:
    """Whether ``fmt`` names one of the formats :func:`write_export` writes."""
    return fmt in ("gpg", "age", "zip")
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class OriginalFile:
    """A non-DICOM artifact as it was received (e.g. the PDF a DICOM Encapsulated PDF wraps)."""

    filename: str
    media_type: str
    open: Callable[[], BinaryIO]


@dataclass(frozen=True)
class ExportItem:
    """One thing to export: a stored DICOM instance, its original file, or both.

    ``header`` is the instance's dataset without pixel data (``file_meta`` helps but is not
    required); ``open`` returns the stored Part 10 bytes as a stream.
    """

    header: Dataset | None = None
    open: Callable[[], BinaryIO] | None = None
    original: OriginalFile | None = None


@dataclass(frozen=True)
class ExportSummary:
    """What was written (for the audit log; carries no PHI)."""

    instances: int
    originals: int
    payload_bytes: int


class _Sink:
    """Write-only view of ``out`` with no ``tell``: makes zipfile stream (data descriptors)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out: BinaryIO | None = out

    def write(self, data: bytes) -> int:
        if self._out is not None:
            self._out.write(data)
        return len(data)

    def abort(self) -> None:
        """Drop everything from now on: a failed export must not end with a central directory."""
        self._out = None

    def flush(self) -> None:
        if self._out is not None and hasattr(self._out, "flush"):
            self._out.flush()

    def close(self) -> None:
        """Nothing to close: ``out`` is the caller's (zipfile never closes a file it was given)."""


def _read_exact(src: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = src.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _read_part10_head(src: BinaryIO) -> tuple[bytes, str]:
    """Read preamble and File Meta Information (PS3.10 7.1); return those bytes and the TS UID."""
    head = _read_exact(src, 144)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise ExportError("a stored instance is not a DICOM Part 10 file (no DICM prefix)")
    if head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        raise ExportError("a stored instance lacks (0002,0000) File Meta Information Group Length")
    (group_len,) = struct.unpack("<I", head[140:144])
    head += _read_exact(src, group_len)
    try:
        meta = dcmread(io.BytesIO(head)).file_meta
        ts = str(meta.TransferSyntaxUID)
    except Exception as exc:
        raise ExportError("a stored instance has unreadable File Meta Information") from exc
    return head, ts


def _copy(src: IO[bytes], dst: IO[bytes]) -> int:
    n = 0
    while chunk := src.read(COPY_CHUNK):
        dst.write(chunk)
        n += len(chunk)
    return n


def _member(name: str, deflate: bool, compresslevel: int | None) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    if deflate and compresslevel is not None:
        info.compress_type = zipfile.ZIP_DEFLATED
        # what ZipFile.open(name, "w") itself sets on 3.11/3.12 (3.13 keeps it as an alias)
        info._compresslevel = compresslevel  # type: ignore[attr-defined]  # private in typeshed
    return info


def write_zip(
    out: BinaryIO,
    items: Iterable[ExportItem],
    *,
    patient_label: str,
    compresslevel: int | None = 1,
) -> ExportSummary:
    """Stream the export zip to ``out``.

    DICOM files in a native (uncompressed) transfer syntax and ``text/*`` originals are
    deflated at ``compresslevel``; everything else is stored, as deflating JPEG or PDF data
    costs CPU for nothing. ``compresslevel=None`` stores everything.
    """
    catalog = Catalog()
    payload = 0
    compression = zipfile.ZIP_STORED if compresslevel is None else zipfile.ZIP_DEFLATED
    sink = _Sink(out)
    zf = zipfile.ZipFile(sink, "w", compression=compression, compresslevel=compresslevel, allowZip64=True)
    try:
        for item in items:
            if item.open is not None:
                if item.header is None:
                    raise ExportError("an export item with DICOM data needs its header")
                with item.open() as src:
                    head, ts = _read_part10_head(src)
                    file_id = catalog.add_instance(item.header, ts)
                    member = _member("/".join(file_id), is_native_uncompressed(ts), compresslevel)
                    with zf.open(member, "w", force_zip64=True) as dst:
                        dst.write(head)
                        payload += len(head) + _copy(src, dst)
            if item.original is not None:
                path = catalog.add_original(item.original.filename, item.original.media_type)
                member = _member(path, item.original.media_type.startswith("text/"), compresslevel)
                with item.original.open() as src, zf.open(member, "w", force_zip64=True) as dst:
                    payload += _copy(src, dst)
            if item.open is None and item.original is None:
                raise ExportError("an export item has neither DICOM data nor an original file")
        zf.writestr("DICOMDIR", build_dicomdir(catalog))
        zf.writestr("INDEX.HTM", index_html(catalog, patient_label))
        zf.writestr("README.txt", readme_text(catalog, patient_label))
    except BaseException:
        sink.abort()
        raise
    finally:
        zf.close()
    return ExportSummary(catalog.instance_count, len(catalog.originals), payload)


def encrypting_writer(
    fmt: Literal["gpg", "age"],
    out: BinaryIO,
    passcode: str,
    *,
    filename: str = "export.zip",
    age_work_factor: int = DEFAULT_WORK_FACTOR,
    s2k_count_byte: int = DEFAULT_S2K_COUNT_BYTE,
) -> EncryptingWriter:
    """Return the streaming encryptor for ``fmt`` writing into ``out``."""
    if fmt == "gpg":
        return OpenPGPSymmetricWriter(out, passcode, filename=filename, s2k_count_byte=s2k_count_byte)
    if fmt == "age":
        return AgeScryptWriter(out, passcode, work_factor=age_work_factor)
    raise ExportError(f"unknown encryption format {fmt!r}")


def write_export(
    out: BinaryIO,
    items: Iterable[ExportItem],
    *,
    passcode: str | None,
    fmt: ExportFormat,
    patient_label: str,
    compresslevel: int | None = 1,
    age_work_factor: int = DEFAULT_WORK_FACTOR,
    s2k_count_byte: int = DEFAULT_S2K_COUNT_BYTE,
) -> ExportSummary:
    """Write the export to ``out``: ``zip`` in clear, or that zip encrypted (``gpg``/``age``).

    On any error the encrypted stream is left without its trailer, so it never decrypts to a
    partial record; the caller should discard ``out``.
    """
    if fmt == "zip":
        if passcode:
            raise ExportError("format 'zip' is not encrypted; do not pass a passcode")
        return write_zip(out, items, patient_label=patient_label, compresslevel=compresslevel)
    if fmt not in ("gpg", "age"):
        raise ExportError(f"unknown export format {fmt!r}")
    if not passcode:
        raise ExportError(f"format {fmt!r} needs a passcode")
    with encrypting_writer(
        fmt, out, passcode, age_work_factor=age_work_factor, s2k_count_byte=s2k_count_byte
    ) as enc:
        return write_zip(enc, items, patient_label=patient_label, compresslevel=compresslevel)  # type: ignore[arg-type]  # a RawIOBase writer


__all__ = [
    "ExportFormat",
    "ExportItem",
    "ExportSummary",
    "OriginalFile",
    "encrypting_writer",
    "write_export",
    "write_zip",
]
