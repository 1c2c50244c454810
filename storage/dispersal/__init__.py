"""Dispersal: every blob erasure-coded k-of-n over n independent blob stores (files or S3).

The blob (already ciphertext: storage/crypto.py sits above every store) is cut into *stripes* of
``k * block`` bytes; each stripe's k data blocks are Reed–Solomon coded into n blocks, and block i
of every stripe goes to share i, kept by location i under the blob's own random key. So byte range
[a, b) of a blob is stripes ``a // (k*block)`` .. ``(b-1) // (k*block)``, one contiguous byte range in
each share: a frame read fetches only those stripes from k shares.

Share format (integers big-endian)::

    header  "PACSSHR1" | version u8 | k u8 | n u8 | share u8 | block u32 | crc32 of these u32  (24 B)
    stripe  block bytes (the last stripe's blocks are ceil(rest / k) long) | crc32 u32, per stripe
    footer  object length u64 | stripes u32 | crc32 of all stripe records u32 | crc32 u32 | "PACSSEND"

Each block's CRC is seeded with (share, stripe), so a block moved to another place fails too; the
footer's digest is the whole share's checksum (``pacs blobs scrub``). The object length is in the
footer, not the header, because a blob streams in before its length is known (S3 objects cannot be
rewritten in place). A corrupt block is never fed to the decoder: its share is skipped for that read
and queued for repair.

Each location alone holds 1/k of the ciphertext (zfec is systematic: shares 0..k-1 carry the data
blocks as they are, shares k.. parity), never a whole object, and nothing that is readable without
the patient's key.

Library: zfec (Tahoe-LAFS's Reed–Solomon over GF(2^8)), a manylinux wheel with no system library.
pyeclib 1.8 (OpenStack Swift's, its wheel bundles liberasurecode and ISA-L) was measured beside it on
this machine, 3-of-5, one core: zfec ~0.9 GB/s encode and decode on 64 KiB blocks; pyeclib
liberasurecode_rs_vand ~0.7/0.6 GB/s, isa_l_rs_vand ~3.5/4.3 GB/s on 1.5 MB calls. zfec is chosen:
its systematic block API is exactly our stripe (k blocks in, n blocks out, any k back), where
pyeclib's fragments carry their own headers and sizes per call, which per 64 KiB stripe we would
wrap and check again. Our whole share encoding, CRCs and copies included, costs ~3 ms of CPU per
MB (AES-GCM: ~0.25 ms/MB; bench/objectstores.py), ~1.5 ms for a CT slice, small beside the round
trips to five locations a store makes. ISA-L through pyeclib is the upgrade if coding shows.

Writes go to all n locations in parallel (a shared thread pool) and are acknowledged once
``write_quorum`` shares are committed (default n; k+1 lets one location be down: the missing shares
are recorded in ``blob_repairs`` for ``pacs blobs repair``). Reads ask the k fastest healthy
locations and fall back to others on an error, a bad checksum or ``timeout``; a location that hangs
costs at most ``timeout``, never a hung store or re

The rooms: :mod:`.shares` (the format and the code), :mod:`.store` (:class:`DispersedBlobStore`,
locations, :class:`RepairLog`), :mod:`.streams` (the share writer and the range reader).
"""

from __future__ import annotations

from .shares import (
    BATCH_STRIPES,
    BLOCK,
    CRC,
    END,
    FOOTER_SIZE,
    HEADER_SIZE,
    MAGIC,
    READ_AHEAD,
    VERSION,
    CorruptShare,
    Geometry,
    _Encoder,
    decode_object,
    encode_object,
    fetch_key,
    parse_footer,
    parse_header,
    share_header,
    stripe_layout,
    verify_share,
)
from .store import DispersedBlobStore, RepairLog

__all__ = ["BATCH_STRIPES", "BLOCK", "CRC", "END", "FOOTER_SIZE", "HEADER_SIZE", "MAGIC", "READ_AHEAD",
           "VERSION", "CorruptShare", "DispersedBlobStore", "Geometry", "RepairLog", "_Encoder",
           "decode_object", "encode_object", "fetch_key", "parse_footer", "parse_header", "share_header",
           "stripe_layout", "verify_share"]
