"""The transfer syntax sets the archive decides by: one of each, from ``pydicom.uid`` (PS3.5 A, 10).

- :data:`NATIVE`: pixel data (if any) is not encapsulated: Implicit and Explicit VR Little Endian,
  Explicit VR Big Endian, Deflated Explicit VR Little Endian (``pydicom.uid.UncompressedTransferSyntaxes``).
- :data:`VIDEO`: MPEG-2, MPEG-4 and HEVC bitstreams (``pydicom.uid.MPEGTransferSyntaxes``).
- :data:`JPEG`: the JPEG processes a photograph may be kept in as it came (baseline, extended,
  lossless process 14), i.e. given back as ``image/jpeg``.
"""

from __future__ import annotations

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    MPEGTransferSyntaxes,
    UncompressedTransferSyntaxes,
)

NATIVE = frozenset(str(ts) for ts in UncompressedTransferSyntaxes)
VIDEO = frozenset(str(ts) for ts in MPEGTransferSyntaxes)
JPEG = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless})


def is_native(transfer_syntax: str) -> bool:
    """Pixel data in this syntax is native (not encapsulated), including Deflated Explicit VR LE."""
    return transfer_syntax in NATIVE


def is_native_uncompressed(transfer_syntax: str) -> bool:
    """Native and not deflated: the bytes as they are would still compress (e.g. in a zip)."""
    return transfer_syntax in NATIVE and transfer_syntax != DeflatedExplicitVRLittleEndian


def is_video(transfer_syntax: str) -> bool:
    """An MPEG or HEVC bitstream (video objects: nothing decodes them to frames here)."""
    return transfer_syntax in VIDEO
