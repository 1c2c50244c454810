"""Media type detection by magic bytes, cross-checked against name and label.

Hand-written rather than using libmagic (python-magic needs the C library and
its database, and answers far more types than we accept): the signatures of
the few formats we support are short and stable.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from .errors import InvalidArtifact, UnsupportedArtifact

SUPPORTED_MEDIA_TYPES: dict[str, str] = {
    "application/pdf": "PDF document",
    "image/jpeg": "JPEG image",
    "image/png": "PNG image",
    "image/gif": "GIF image (every frame)",
    "image/bmp": "BMP image",
    "image/tiff": "TIFF image (every page)",
    "image/heic": "HEIC photo",
    "image/heif": "HEIF photo",
    "video/mp4": "MP4 video",
    "video/quicktime": "QuickTime (MOV) video",
    "audio/wav": "WAV audio (PCM, 8 or 16 bit)",
    "audio/mpeg": "MP3 audio",
    "audio/mp4": "M4A (AAC) audio",
    "audio/aac": "AAC audio (ADTS)",
    "audio/ogg": "Ogg audio (Opus, Vorbis)",
    "text/plain": "plain text note",
    "text/rtf": "RTF note",
}

_EXTENSIONS: dict[str, str] = {
    ".pdf": "application/pdf",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".hif": "image/heif",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".qt": "video/quicktime",
    ".wav": "audio/wav",
    ".wave": "audio/wav",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".rtf": "text/rtf",
}

_ALIASES: dict[str, str] = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "application/rtf": "text/rtf",
    "application/x-rtf": "text/rtf",
    "application/x-pdf": "application/pdf",
    "audio/mp3": "audio/mpeg",
    "audio/x-mp3": "audio/mpeg",
    "audio/mpeg3": "audio/mpeg",
    "audio/x-mpeg": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "audio/m4a": "audio/mp4",
    "audio/x-aac": "audio/aac",
    "audio/aacp": "audio/aac",
    "audio/opus": "audio/ogg",
    "audio/vorbis": "audio/ogg",
    "application/ogg": "audio/ogg",
    "video/x-quicktime": "video/quicktime",
    "image/heic-sequence": "image/heic",
    "image/heif-sequence": "image/heif",
}

# ISO BMFF major brands (ISO/IEC 14496-12 4.3; HEIF: ISO/IEC 23008-12 Annex B).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs",
                b"mif1", b"msf1"}
_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P "}
# Pairs of labels that name the same container: (claimed, sniffed).
_SAME_CONTAINER = {("image/heif", "image/heic"), ("image/heic", "image/heif"),
                   ("audio/mp4", "video/mp4"), ("video/mp4", "audio/mp4"),
                   ("video/mp4", "video/quicktime"), ("video/quicktime", "video/mp4")}

# Labels that say nothing about the content.
_GENERIC = {"application/octet-stream", "binary/octet-stream", "application/unknown", ""}


def supported_list() -> str:
    """Human-readable list of the supported types, for error messages."""
    return ", ".join(f"{name} ({mt})" for mt, name in SUPPORTED_MEDIA_TYPES.items())


def normalize_media_type(media_type: str) -> str:
    """Lower-case, parameters dropped, common aliases mapped to one name."""
    base = media_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def _sniff_binary(data: bytes) -> str | None:
    head = data[:64]
    if data[:1024].find(b"%PDF-") != -1:
        return "application/pdf"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head.startswith(b"BM") and len(data) >= 26 and head[14] in (12, 40, 52, 56, 64, 108, 124):
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AUDIO_BRANDS:
            return "audio/mp4"
        if brand == b"qt  ":
            return "video/quicktime"
        if brand in _HEIF_BRANDS:
            return "image/heic" if brand.startswith((b"he", b"hev")) else "image/heif"
        return "video/mp4"
    if head[4:8] in (b"moov", b"wide", b"mdat") and head[:4] != b"\x00\x00\x00\x00":
        return "video/quicktime"  # QuickTime files older than the ftyp box
    if head.startswith(b"OggS"):
        return "audio/ogg"
    if head.startswith(b"ID3") or _mpeg_audio_sync(head) == "mp3":
        return "audio/mpeg"
    if _mpeg_audio_sync(head) == "adts":
        return "audio/aac"
    if head.lstrip(b"\xef\xbb\xbf").startswith(b"{\\rtf"):
        return "text/rtf"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "application/dicom"
    return None


def _mpeg_audio_sync(head: bytes) -> str | None:
    """'mp3' for an MPEG audio layer III frame header, 'adts' for an AAC ADTS one (11/12 sync bits)."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    layer = (head[1] >> 1) & 0x03
    if head[1] & 0xF6 == 0xF0:  # 12 sync bits, layer 00: ADTS (ISO/IEC 13818-7 6.2)
        return "adts"
    bitrate, rate = head[2] >> 4, (head[2] >> 2) & 0x03
    if layer == 1 and (head[1] >> 3) & 0x03 != 1 and bitrate not in (0, 15) and rate != 3:
        return "mp3"
    return None


def _looks_like_text(data: bytes) -> bool:
    sample = data[:65536]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        # A cut in the middle of a multi-byte character at the sample's end is fine.
        if exc.start >= len(sample) - 3 and len(data) > len(sample):
            return True
    controls = sum(1 for b in sample if b < 0x20 and b not in b"\t\r\n\f")
    return controls == 0


def sniff(data: bytes) -> str | None:
    """The media type the bytes say they are, or None if unrecognised."""
    found = _sniff_binary(data)
    if found is None and _looks_like_text(data):
        return "text/plain"
    return found


def detect_media_type(data: bytes, filename: str | None = None, declared: str | None = None) -> str:
    """Detect a supported media type from magic bytes, checked against name and label.

    Raises InvalidArtifact when the data is empty or contradicts the file
    extension or declared type (a ``.pdf`` that is a PNG), and
    UnsupportedArtifact when the type is not one of SUPPORTED_MEDIA_TYPES.
    """
    if not data:
        raise InvalidArtifact("the artifact is empty (0 bytes)")
    sniffed = sniff(data)
    claims: list[tuple[str, str]] = []
    if declared and normalize_media_type(declared) not in _GENERIC:
        claims.append((f"declared type {declared!r}", normalize_media_type(declared)))
    if filename:
        ext = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
        if ext in _EXTENSIONS:
            claims.append((f"file extension {ext!r}", _EXTENSIONS[ext]))
    for what, claimed in claims:
        if sniffed is None and claimed in SUPPORTED_MEDIA_TYPES:
            raise InvalidArtifact(
                f"{what} says {claimed} but the content is not recognisable as one"
            )
        if sniffed is not None and claimed != sniffed and not _compatible(claimed, sniffed):
            raise InvalidArtifact(f"{what} says {claimed} but the content is {sniffed}")
    if sniffed == "application/dicom":
        raise UnsupportedArtifact("the file is already DICOM (Part 10); store it as is")
    if sniffed is None or sniffed not in SUPPORTED_MEDIA_TYPES:
        what = sniffed or "an unrecognised format"
        raise UnsupportedArtifact(f"{what} is not supported; supported: {supported_list()}")
    return sniffed


def _compatible(claimed: str, sniffed: str) -> bool:
    # Any text/* label fits plain text; an RTF file is also text.
    if (claimed, sniffed) in _SAME_CONTAINER:
        return True
    return claimed.startswith("text/") and sniffed in ("text/plain", "text/rtf")
