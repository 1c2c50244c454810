"""Tests for dicomweb.multipart: streaming multipart/related encode/decode."""

import email.parser
import email.policy
import io
import os

import pytest
from dicomweb_client.web import DICOMwebClient
from pydicom.data import get_testdata_file

from dicomweb.mediatypes import UnsupportedMediaType
from dicomweb.multipart import (
    MultipartError,
    Part,
    PayloadTooLarge,
    decode,
    decode_bytes,
    encode,
)

CT = 'multipart/related; type="application/dicom"; boundary=XyZ'
TS_JPEG = "1.2.840.10008.1.2.4.50"


def _dicom_bytes() -> list[bytes]:
    return [
        open(get_testdata_file(name), "rb").read()  # noqa: SIM115
        for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_jpeg_dcmtk.dcm")
    ]


def _decode_chunks(chunks: list[bytes], content_type: str, **kw: int) -> list[tuple[dict, bytes]]:
    limits = {"max_part_size": 10**8, "max_total": 10**9, **kw}
    return [(p.headers, p.read()) for p in decode(iter(chunks), content_type, **limits)]


def test_decode_dicomweb_client_body_every_split() -> None:
    bodies = [b"first \r\n-- part", b"", b"\r\n--XyZ-not-a-boundary\r\n", b"\x00\xff" * 10]
    body = DICOMwebClient._encode_multipart_message(bodies, CT)
    assert body.startswith(b"\r\n--XyZ") and body.endswith(b"--XyZ--")
    expected = [({"content-type": "application/dicom"}, b) for b in bodies]
    assert _decode_chunks([body], CT) == expected
    for k in range(len(body) + 1):
        assert _decode_chunks([body[:k], body[k:]], CT) == expected, k
    for j in range(0, len(body), 7):
        for k in range(j, len(body) + 1, 5):
            assert _decode_chunks([body[:j], body[j:k], body[k:]], CT) == expected, (j, k)
    assert _decode_chunks([body[i : i + 1] for i in range(len(body))], CT) == expected


def test_decode_curl_style_with_preamble_padding_and_epilogue() -> None:
    body = (
        b"This is the preamble.\r\n"
        b"--XyZ  \t\r\n"
        b"Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50\r\n"
        b"Content-Location: \r\n  http://x/studies/1\r\n"
        b"\r\n"
        b"ABC\r\n"
        b"--XyZ\r\n"
        b"\r\n"
        b"no headers\r\n"
        b"--XyZ--  \r\n"
        b"epilogue, ignored\r\n--XyZ\r\n"
    )
    parts = decode_bytes(body, 'multipart/related; type=application/dicom; boundary="XyZ"')
    assert len(parts) == 2
    assert parts[0].read() == b"ABC"
    assert parts[0].transfer_syntax == TS_JPEG
    assert parts[0].media_type == "application/dicom"
    assert parts[0].content_location == "http://x/studies/1"
    # RFC 2387 3.1: the type parameter is the default for a part without one.
    assert parts[1].content_type == "application/dicom"
    assert parts[1].read() == b"no headers"


def test_decode_bare_lf_line_breaks() -> None:
    body = b"--XyZ\nContent-Type: text/plain\n\nhello\n--XyZ--\n"
    (part,) = decode_bytes(body, CT)
    assert part.read() == b"hello" and part.content_type == "text/plain"


def test_decode_empty_multipart() -> None:
    assert decode_bytes(b"--XyZ--\r\n", CT) == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary at all",
        b"--XyZ\r\nContent-Type: a/b\r\n\r\ntruncated body",
        b"--XyZ\r\nContent-Type: a/b\r\n",
        b"--XyZ\r\nBad header line\r\n\r\nx\r\n--XyZ--",
        b"--XyZ\r\nContent-Type: a/b\r\n\r\nx\r\n--XyZ",
    ],
)
def test_decode_malformed(body: bytes) -> None:
    with pytest.raises(MultipartError):
        decode_bytes(body, CT)


def test_decode_bad_content_type() -> None:
    with pytest.raises(MultipartError, match="boundary"):
        decode_bytes(b"--x--", 'multipart/related; type="application/dicom"')
    with pytest.raises(UnsupportedMediaType):
        decode_bytes(b"--x--", "application/dicom")
    with pytest.raises(MultipartError, match="invalid"):
        decode_bytes(b"--x--", "multipart/related; boundary=" + "a" * 71)


def test_limits() -> None:
    content_type, chunks = encode([Part.make(b"x" * 1000, "application/dicom")], "B")
    body = b"".join(chunks)
    with pytest.raises(PayloadTooLarge):
        list(decode(io.BytesIO(body), content_type, max_part_size=999, max_total=10**6))
    with pytest.raises(PayloadTooLarge):
        list(decode(io.BytesIO(body), content_type, max_part_size=10**6, max_total=len(body) - 1))
    parts = list(decode(io.BytesIO(body), content_type, max_part_size=1000, max_total=len(body)))
    assert parts[0].read() == b"x" * 1000


def test_large_part_spools_to_disk_and_streams() -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    content_type, chunks = encode([Part.make(big, "application/octet-stream")] * 2)
    body = b"".join(chunks)
    parts = decode(io.BytesIO(body), content_type, max_part_size=len(big), max_total=len(body),
                   spool_size=1 << 20)
    for p in parts:
        assert p.body.rolled  # type: ignore[union-attr]  # went to an encrypted temporary file
        assert p.read() == big
        p.close()


def test_encode_roundtrip_dicom_with_lazy_bodies() -> None:
    files = _dicom_bytes()
    consumed: list[int] = []

    def lazy(i: int, data: bytes):
        consumed.append(i)
        for k in range(0, len(data), 1000):
            yield data[k : k + 1000]

    parts = (
        Part.make(lazy(i, d), f"application/dicom; transfer-syntax={TS_JPEG}", f"/i/{i}")
        for i, d in enumerate(files)
    )
    content_type, chunks = encode(parts)
    assert consumed == []  # nothing read before the response is iterated
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    body = b"".join(chunks)
    decoded = decode_bytes(body, content_type)
    assert [p.read() for p in decoded] == files
    assert [p.content_location for p in decoded] == ["/i/0", "/i/1", "/i/2"]
    assert all(p.transfer_syntax == TS_JPEG for p in decoded)


def test_encode_readable_by_email_parser() -> None:
    files = _dicom_bytes()[:2]
    content_type, chunks = encode(
        (Part.make(io.BytesIO(d), "application/dicom") for d in files), "b0und"
    )
    raw = f"Content-Type: {content_type}\r\n\r\n".encode() + b"".join(chunks)
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    payloads = [p.get_payload(decode=True) for p in msg.iter_parts()]
    assert payloads == files
    assert msg.get_content_type() == "multipart/related"


def test_encode_rejects_bad_boundary_and_header_injection() -> None:
    with pytest.raises(ValueError):
        encode([], "bad boundary ")
    _, chunks = encode([Part(b"x", {"X-Note": "a\r\nX: y"})], "B", media_type="a/b")
    with pytest.raises(ValueError):
        list(chunks)


def test_encode_empty() -> None:
    content_type, chunks = encode([], "B", media_type="application/dicom")
    assert content_type == 'multipart/related; type="application/dicom"; boundary=B'
    assert b"".join(chunks) == b"--B--\r\n"


def test_small_parts_stay_in_memory_large_ones_spool() -> None:
    """Parts up to spool_size come back as in-memory files (no spool pass); larger ones are
    spooled encrypted, also when the small and the large ones arrive in one read."""
    small, big = os.urandom(5000), os.urandom(70_000)
    content_type, chunks = encode([Part.make(small, "application/dicom"),
                                   Part.make(big, "application/dicom"),
                                   Part.make(small, "application/dicom")], "B")
    body = b"".join(chunks)
    parts = list(decode(io.BytesIO(body), content_type, max_part_size=10**6, max_total=len(body),
                        spool_size=1 << 16))
    assert [type(p.body).__name__ for p in parts] == ["BytesIO", "EncryptedSpool", "BytesIO"]
    assert [p.read() for p in parts] == [small, big, small]
    for p in parts:
        p.close()
