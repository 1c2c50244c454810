"""Just enough JPEG (ITU-T T.81) marker parsing to describe a bitstream in DICOM.

Hand-written because Pillow does not report the SOF process or the component
identifiers, which decide the transfer syntax (PS3.5 8.2.1, 10.2) and the
Photometric Interpretation (PS3.5 8.2.1, PS3.3 C.7.6.3.1.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import InvalidArtifact, UnsupportedArtifact

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}


@dataclass(frozen=True)
class JpegInfo:
    """What the frame header says about a JPEG bitstream."""

    process: int  # SOF marker minus 0xC0: 0 baseline, 1 extended, 2 progressive, 3 lossless...
    precision: int
    rows: int
    columns: int
    component_ids: tuple[int, ...]
    sampling: tuple[tuple[int, int], ...]
    adobe_transform: int | None

    @property
    def samples(self) -> int:
        return len(self.component_ids)

    def photometric(self) -> str:
        """Photometric Interpretation for the bitstream as is (PS3.5 8.2.1)."""
        if self.samples == 1:
            return "MONOCHROME2"
        if self.samples != 3:
            raise UnsupportedArtifact(
                f"JPEG with {self.samples} components (e.g. CMYK) is not supported"
            )
        if self.adobe_transform == 0 or self.component_ids == (ord("R"), ord("G"), ord("B")):
            return "RGB"
        subsampled = len(set(self.sampling)) > 1
        return "YBR_FULL_422" if subsampled else "YBR_FULL"


def parse_jpeg(data: bytes) -> JpegInfo:
    """Parse markers up to the first scan; check the stream ends with EOI."""
    if not data.startswith(b"\xff\xd8"):
        raise InvalidArtifact("not a JPEG stream (no SOI marker)")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InvalidArtifact("the JPEG is truncated (no EOI marker at its end)")
    pos = 2
    sof: tuple[int, bytes] | None = None
    adobe: int | None = None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise InvalidArtifact(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            raise InvalidArtifact("the JPEG is truncated inside a marker segment")
        if marker in _SOF_MARKERS and sof is None:
            sof = (marker, segment)
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe = segment[11]
        elif marker == 0xDA:
            break
        pos += 2 + length
    if sof is None:
        raise InvalidArtifact("the JPEG has no frame header (SOF)")
    marker, seg = sof
    if len(seg) < 6:
        raise InvalidArtifact("the JPEG frame header is truncated")
    precision, rows, cols, ncomp = struct.unpack(">BHHB", seg[:6])
    comps = seg[6 : 6 + 3 * ncomp]
    if len(comps) != 3 * ncomp or rows == 0 or cols == 0:
        raise InvalidArtifact("the JPEG frame header is invalid")
    ids = tuple(comps[i * 3] for i in range(ncomp))
    sampling = tuple((comps[i * 3 + 1] >> 4, comps[i * 3 + 1] & 0x0F) for i in range(ncomp))
    return JpegInfo(marker - 0xC0, precision, rows, cols, ids, sampling, adobe)
