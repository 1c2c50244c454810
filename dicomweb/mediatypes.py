"""Media types and content negotiation for DICOMweb (PS3.18 8.7).

Pure functions, no Flask.  The web layer builds a list of :class:`Offer`
(what it can send for the resource, best first; the first one is the
default of PS3.18 8.7.3 / 8.7.4 for the resource category) and calls
:func:`negotiate` with the request's ``Accept`` header.

Why hand-written: werkzeug's ``MIMEAccept`` drops duplicate media types with
different parameters and knows nothing of ``multipart/related; type=...`` or
``transfer-syntax`` (PS3.18 8.7.3.5), which is the whole point here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydicom.uid import (
    HEVCM10P51,
    HEVCMP51,
    HTJ2K,
    JPEG2000MC,
    MPEG2MPHL,
    MPEG2MPHLF,
    MPEG2MPML,
    MPEG2MPMLF,
    MPEG4HP41,
    MPEG4HP41BD,
    MPEG4HP41BDF,
    MPEG4HP41F,
    MPEG4HP42STEREO,
    MPEG4HP42STEREOF,
    MPEG4HP422D,
    MPEG4HP422DF,
    MPEG4HP423D,
    MPEG4HP423DF,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.uid import JPEG2000 as JPEG2000_LOSSY

from storage.transfer_syntaxes import is_native

#: JPEG XL (PS3.5 A.4.12, 2023): no name in pydicom 3.0 yet.
JPEG_XL_LOSSLESS, JPEG_XL_RECOMPRESSION, JPEG_XL = (
    "1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112")

__all__ = [
    "AS_STORED",
    "BulkMediaType",
    "EXPLICIT_VR_LE",
    "MediaRange",
    "NotAcceptable",
    "Offer",
    "UnsupportedMediaType",
    "WEB_FORBIDDEN_TS",
    "bulk_media_type",
    "default_transfer_syntax",
    "frame_offers",
    "instance_offers",
    "is_native",
    "metadata_offers",
    "negotiate",
    "parse_accept",
    "parse_content_type",
    "rendered_offers",
]

EXPLICIT_VR_LE: UID = ExplicitVRLittleEndian
IMPLICIT_VR_LE: UID = ImplicitVRLittleEndian
EXPLICIT_VR_BE: UID = ExplicitVRBigEndian

#: An Offer's transfer syntax meaning "each instance as stored" (resources
#: that span instances, e.g. a study, answered with ``transfer-syntax=*``).
AS_STORED = "*"

#: PS3.18 8.7.3: these "shall not be used with Web Services".
WEB_FORBIDDEN_TS = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_BE})

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
JSON = "application/json"
MULTIPART_RELATED = "multipart/related"


class NotAcceptable(Exception):
    """No offer matches the Accept header (HTTP 406, PS3.18 8.7.5)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedMediaType(ValueError):
    """A Content-Type header is malformed or not the one expected (HTTP 415)."""


@dataclass(frozen=True)
class BulkMediaType:
    """One row of PS3.18 Table 8.7.3-5: a media type and its transfer syntaxes."""

    media_type: str
    default: str
    optional: tuple[str, ...] = ()


# PS3.18 Table 8.7.3-4 (uncompressed) and Table 8.7.3-5 (compressed bulk data),
# plus the later additions (fragmentable MPEG, HEVC, JPEG XL, HTJ2K) from the
# same table in recent editions.  The first listed UID is the RESTful default.
_BULK_TABLE: tuple[BulkMediaType, ...] = (
    BulkMediaType(OCTET_STREAM, EXPLICIT_VR_LE),
    BulkMediaType("image/jpeg", JPEGLosslessSV1, (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless)),
    BulkMediaType("image/dicom-rle", RLELossless),
    BulkMediaType("image/jls", JPEGLSLossless, (JPEGLSNearLossless,)),
    BulkMediaType("image/jp2", JPEG2000Lossless, (JPEG2000_LOSSY,)),
    BulkMediaType("image/jpx", JPEG2000MCLossless, (JPEG2000MC,)),
    BulkMediaType("image/jxl", JPEG_XL_LOSSLESS, (JPEG_XL_RECOMPRESSION, JPEG_XL)),
    BulkMediaType("image/jphc", HTJ2KLossless, (HTJ2KLosslessRPCL, HTJ2K)),
    BulkMediaType("video/mpeg2", MPEG2MPML, (MPEG2MPHL, MPEG2MPMLF, MPEG2MPHLF)),
    BulkMediaType(
        "video/mp4",
        MPEG4HP41,
        (MPEG4HP41BD, MPEG4HP422D, MPEG4HP423D, MPEG4HP42STEREO, HEVCMP51, HEVCM10P51,
         MPEG4HP41F, MPEG4HP41BDF, MPEG4HP422DF, MPEG4HP423DF, MPEG4HP42STEREOF),
    ),
)

_TS_TO_BULK: dict[str, str] = {
    uid: row.media_type for row in _BULK_TABLE[1:] for uid in (row.default, *row.optional)
}
_BULK_DEFAULT: dict[str, str] = {row.media_type: row.default for row in _BULK_TABLE}


def bulk_media_type(transfer_syntax: str) -> str:
    """Frame / bulk data media type for a transfer syntax (PS3.18 Table 8.7.3-5).

    Native transfer syntaxes map to ``application/octet-stream``; unknown
    compressed ones too (the part's ``transfer-syntax`` parameter says what it is).
    """
    return _TS_TO_BULK.get(transfer_syntax, OCTET_STREAM)


def default_transfer_syntax(media_type: str) -> str | None:
    """RESTful default transfer syntax of a DICOM or bulk media type (PS3.18 8.7.3).

    ``None`` for media types that carry no transfer syntax (JSON, rendered).
    """
    media_type = media_type.lower()
    if media_type == DICOM:
        return EXPLICIT_VR_LE  # PS3.18 Table 8.7.3-2
    return _BULK_DEFAULT.get(media_type)


# ---------------------------------------------------------------- parsing

# RFC 9110 5.6: token, quoted-string (with quoted-pair), parameters.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# Values: token or quoted-string; also bare values with "/" (OHIF sends
# ``type=application/octet-stream`` unquoted, which RFC 9110 does not allow).
_PARAM_RE = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*({_QUOTED}|[^;,\s"]+)\s*', re.S)
_TYPE_RE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})\s*")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _split_outside_quotes(header: str, sep: str) -> list[str]:
    items: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in header:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            items.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    items.append("".join(buf))
    return items


def _parse_one(text: str) -> tuple[str, dict[str, str]]:
    """Parse ``type/subtype *(; name=value)``; names lower-cased, values unquoted."""
    m = _TYPE_RE.match(text)
    if m is None:
        raise ValueError(f"not a media type: {text.strip()!r}")
    media_type = f"{m.group(1)}/{m.group(2)}".lower()
    params: dict[str, str] = {}
    pos = m.end()
    while pos < len(text):
        pm = _PARAM_RE.match(text, pos)
        if pm is None:
            rest = text[pos:].strip()
            if rest in ("", ";"):
                break
            raise ValueError(f"bad media type parameter in {text.strip()!r} at {rest!r}")
        params[pm.group(1).lower()] = _unquote(pm.group(2))
        pos = pm.end()
    return media_type, params


def parse_content_type(header: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into (lower-case media type, parameters).

    Parameter names are lower-cased, values unquoted (RFC 9110 8.3.1).
    Raises :class:`UnsupportedMediaType` when absent or malformed.
    """
    if not header or not header.strip():
        raise UnsupportedMediaType("missing Content-Type")
    try:
        return _parse_one(header)
    except ValueError as exc:
        raise UnsupportedMediaType(f"malformed Content-Type: {exc}") from None


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header (RFC 9110 12.5.1, PS3.18 8.7.5)."""

    media_type: str  # e.g. "multipart/related", "image/*", "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0
    position: int = 0

    @property
    def inner_type(self) -> str | None:
        """For ``multipart/related`` the ``type`` parameter, lower case."""
        t = self.params.get("type")
        return t.strip().lower() if t else None

    @property
    def transfer_syntax(self) -> str | None:
        ts = self.params.get("transfer-syntax")
        return ts.strip() if ts is not None else None


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into media ranges, in header order.

    Absent or empty header means ``*/*``.  Elements that cannot be parsed are
    skipped (RFC 9110 lets a server ignore them) unless nothing is left, in
    which case :class:`NotAcceptable` is raised.  ``q`` outside 0..1 is an error.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    bad: list[str] = []
    for pos, item in enumerate(_split_outside_quotes(header, ",")):
        if not item.strip():
            continue
        try:
            media_type, params = _parse_one(item)
        except ValueError:
            bad.append(item.strip())
            continue
        q = 1.0
        if "q" in params:
            try:
                q = float(params.pop("q"))
            except ValueError:
                raise NotAcceptable(f"bad q-value in Accept element {item.strip()!r}") from None
            if not 0.0 <= q <= 1.0:
                raise NotAcceptable(f"q-value out of range in Accept element {item.strip()!r}")
        ranges.append(MediaRange(media_type, params, q, pos))
    if not ranges:
        raise NotAcceptable(f"no valid media range in Accept header: {bad!r}")
    return ranges


# ---------------------------------------------------------------- offers


@dataclass(frozen=True)
class Offer:
    """A response the server can produce for the requested resource.

    ``media_type`` is the type of the payload (of each part when
    ``multipart``); ``transfer_syntax`` is a UID, :data:`AS_STORED`, or None
    for types without one (JSON, rendered); ``transcode`` says producing it
    means decoding/re-encoding rather than sending stored bytes.
    """

    media_type: str
    multipart: bool = False
    transfer_syntax: str | None = None
    transcode: bool = False

    def part_content_type(self, transfer_syntax: str | None = None) -> str:
        """Content-Type of one part (or the single-part body), PS3.18 8.7.3.5.

        ``transfer_syntax`` overrides :data:`AS_STORED` with the real UID.
        """
        ts = transfer_syntax or self.transfer_syntax
        if ts and ts != AS_STORED:
            return f"{self.media_type}; transfer-syntax={ts}"
        return self.media_type

    def content_type(self, boundary: str | None = None) -> str:
        """Content-Type of the whole response (PS3.18 8.6.1.2)."""
        if not self.multipart:
            return self.part_content_type()
        value = f'{MULTIPART_RELATED}; type="{self.media_type}"'
        if boundary:
            value += f"; boundary={boundary}"
        return value


def _type_matches(pattern: str, media_type: str) -> int:
    """0 = no match; 1 = */*; 2 = type/*; 3 = exact."""
    if pattern == "*/*":
        return 1
    ptype, _, psub = pattern.partition("/")
    mtype, _, msub = media_type.partition("/")
    if ptype != mtype:
        return 0
    if psub == "*":
        return 2
    return 3 if psub == msub else 0


def _match(r: MediaRange, o: Offer, strict: bool) -> tuple[int, int] | None:
    """(specificity, exactness) when range ``r`` admits offer ``o``, else None.

    Transfer syntax rules, PS3.18 8.7.3.5: an explicit UID must be equal;
    ``*`` admits any (as stored preferred later); no parameter means the
    RESTful default for the media type, or -- for compressed image/video types,
    whose family the media type already fixes -- whatever is available, ranked
    below the default.
    """
    otype = o.media_type.lower()
    if r.media_type == MULTIPART_RELATED:
        if strict and not o.multipart:
            return None
        inner = r.inner_type
        spec = _type_matches(inner, otype) + 1 if inner else 1
        if inner and spec == 1:
            return None
    else:
        spec = _type_matches(r.media_type, otype)
        if spec == 0:
            return None
        if spec == 1:
            return (1, -1)  # */*: anything, server order decides
        if strict and o.multipart:
            return None
    ts = r.transfer_syntax
    if o.transfer_syntax is None:
        return (spec, 1)
    if ts == "*":
        return (spec + 1, 0)
    if ts:
        return (spec + 1, 2) if ts == o.transfer_syntax else None
    default = default_transfer_syntax(otype)
    if default is None or default == o.transfer_syntax:
        return (spec, 1)
    if otype in (DICOM, OCTET_STREAM) and o.transfer_syntax != AS_STORED:
        return None
    return (spec, 0)


def negotiate(accept: str | None, offers: Sequence[Offer], *, lenient: bool = True) -> Offer:
    """Choose the offer to send for an Accept header (PS3.18 8.7.5, RFC 9110 12.5.1).

    Each offer gets the q-value of the most specific range admitting it;
    the winner has the highest q, then the closest transfer-syntax match,
    then needs no transcoding, then comes earliest in the header, then in
    ``offers``.  With no Accept header the first offer (the default) wins.

    ``lenient``: if nothing matches strictly, a single-part range (e.g. bare
    ``application/dicom`` for a study) may select a multipart offer of the
    same type, and ``multipart/related`` may select a single-part one, as
    many clients expect.  Raises :class:`NotAcceptable` when nothing matches.
    """
    if not offers:
        raise NotAcceptable("nothing to offer for this resource")
    key = (accept, tuple(offers), lenient)
    chosen = _NEGOTIATED.get(key)
    if chosen is None:
        chosen = _negotiate(accept, offers, lenient)
        if len(_NEGOTIATED) < 4096:  # a viewer sends the same few headers for every frame
            _NEGOTIATED[key] = chosen
    return chosen


_NEGOTIATED: dict[tuple[str | None, tuple[Offer, ...], bool], Offer] = {}


def _negotiate(accept: str | None, offers: Sequence[Offer], lenient: bool) -> Offer:
    ranges = parse_accept(accept)
    for strict in (True, False) if lenient else (True,):
        best: tuple[float, int, int, int, int] | None = None
        chosen: Offer | None = None
        for oi, offer in enumerate(offers):
            found: tuple[tuple[int, int], MediaRange] | None = None
            for r in ranges:
                m = _match(r, offer, strict)
                if m is not None and (found is None or m[0] > found[0][0]):
                    found = (m, r)
            if found is None or found[1].q <= 0.0:
                continue
            (_, exact), r = found
            cheap = 0 if exact < 0 else int(not offer.transcode)
            key = (r.q, max(exact, 0), cheap, -r.position, -oi)
            if best is None or key > best:
                best, chosen = key, offer
        if chosen is not None:
            return chosen
    wanted = ", ".join(sorted({o.content_type() for o in offers}))
    raise NotAcceptable(f"cannot satisfy Accept {accept!r}; available: {wanted}")


# ---------------------------------------------------------------- offer builders


def instance_offers(
    stored: str | None = None,
    *,
    transcodable: Sequence[str] = (EXPLICIT_VR_LE,),
) -> list[Offer]:
    """Offers for instance/series/study retrieval (PS3.18 10.4, Table 8.7.3-2).

    ``stored`` is the stored transfer syntax for a single instance, or None
    for resources spanning instances (then "as stored" is :data:`AS_STORED`).
    ``transcodable`` lists what the server can convert to; the default
    (Explicit VR Little Endian) comes first.
    """
    offers = []
    for ts in transcodable:
        offers.append(Offer(DICOM, True, ts, transcode=ts != stored))
    if stored is None:
        # Callers must still rewrite instances stored in WEB_FORBIDDEN_TS.
        offers.append(Offer(DICOM, True, AS_STORED, transcode=False))
    elif stored not in WEB_FORBIDDEN_TS and stored not in transcodable:
        offers.append(Offer(DICOM, True, stored, transcode=False))
    return offers


def frame_offers(stored: str, *, can_decode: bool = True) -> list[Offer]:
    """Offers for frames and pixel bulk data (PS3.18 Tables 8.7.3-4/-5).

    Native data: ``application/octet-stream`` as Explicit VR Little Endian.
    Compressed ``stored``: the stored bytes under their own media type and
    under ``application/octet-stream`` (what OHIF asks with
    ``transfer-syntax=*``), plus decoded octets if ``can_decode``.
    """
    if is_native(stored):
        return [Offer(OCTET_STREAM, True, EXPLICIT_VR_LE, False)]
    offers = [Offer(OCTET_STREAM, True, EXPLICIT_VR_LE, True)] if can_decode else []
    offers.append(Offer(bulk_media_type(stored), True, stored, False))
    offers.append(Offer(OCTET_STREAM, True, stored, False))
    return offers


def metadata_offers() -> list[Offer]:
    """Offers for metadata and QIDO results (PS3.18 8.7.3.4): DICOM JSON first."""
    return [Offer(DICOM_JSON), Offer(JSON)]


RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")  # PS3.18 Table 8.7.4-1, default first


def rendered_offers(images: int = 1) -> list[Offer]:
    """Offers for a rendered resource of ``images`` images (PS3.18 8.7.4): single-part first for
    one image, multipart (``multipart/related; type="image/jpeg"``...) first for several."""
    single = [Offer(t) for t in RENDERED_TYPES]
    multi = [Offer(t, True) for t in RENDERED_TYPES]
    return single + multi if images == 1 else multi + single
