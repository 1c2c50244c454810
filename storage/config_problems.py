"""What is wrong with the settings of one subsystem each (blob stores, TLS, audit, PKCS#11).

Each checker returns its problems as lines that name the setting; ``storage.config.check`` joins
them into one ConfigError, so an administrator sees every mistake at once, before anything starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Settings


def _blob_store_problems(s: Settings) -> list[str]:
    """What is wrong with the blob store settings (storage/blobstores.py), each naming its setting."""
    out: list[str] = []
    if s.blob_timeout <= 0:
        out.append(f"blob_timeout: must be more than 0 seconds, got {s.blob_timeout!r}")
    kind = s.blob_store
    if kind.startswith("s3://"):
        if not kind[5:].split("/", 1)[0].split("?", 1)[0]:
            out.append(f"blob_store: s3://bucket/prefix needs a bucket, got {kind!r}")
    elif kind == "dispersal":
        n = s.dispersal_n or len(s.blob_locations)
        if not s.blob_locations:
            out.append("blob_locations: dispersal needs at least one location")
        if s.dispersal_n < 0 or n > 255:
            out.append(f"dispersal_n: must be 1..255 (0: one per location), got {s.dispersal_n!r}")
        elif len(s.blob_locations) < n:
            out.append(f"blob_locations: dispersal_n is {n} but only {len(s.blob_locations)} "
                       "location(s) are set")
        if not 1 <= s.dispersal_k <= max(n, 1):
            out.append(f"dispersal_k: must be 1..dispersal_n ({n}), got {s.dispersal_k!r}")
        if s.write_quorum and not s.dispersal_k <= s.write_quorum <= n:
            out.append(f"write_quorum: must be dispersal_k..dispersal_n ({s.dispersal_k}..{n}) "
                       f"or 0 (all n), got {s.write_quorum!r}")
        for i, loc in enumerate(s.blob_locations):
            if not (loc.startswith("s3://") and len(loc) > 5 or loc.startswith("file:///")
                    or os.path.isabs(loc)):
                out.append(f"blob_locations[{i}]: expected an absolute directory or s3://bucket/prefix, "
                           f"got {loc.split('?', 1)[0]!r}")
    elif kind not in ("", "files"):
        out.append(f"blob_store: expected \"\" (files), s3://bucket/prefix or dispersal, got {kind!r}")
    return out


def _tls_problems(s: Settings) -> list[str]:
    """TLS needs a certificate and its key; files that are not there are named (PS3.15 B.9)."""
    out = []
    wanted = s.http_tls or s.dicom_tls
    if wanted and (s.tls_cert_file is None or s.tls_key_file is None):
        out.append("tls_cert_file: http_tls or dicom_tls needs tls_cert_file and tls_key_file")
    if s.dicom_tls_verify_client and s.tls_ca_file is None:
        out.append("tls_ca_file: dicom_tls_verify_client needs the CA bundle of enrolled clients")
    if any(d.tls for d in s.destinations.values()) and s.tls_ca_file is None:
        out.append("tls_ca_file: a destination with tls = true needs tls_ca_file to check its certificate")
    if not s.dicom_plain and not s.dicom_tls:
        out.append("dicom_plain: false needs dicom_tls = true (else no DICOM port is open)")
    if s.dicom_tls and s.dicom_plain and s.dicom_tls_port == s.dicom_port:
        out.append(f"dicom_tls_port: the same as dicom_port ({s.dicom_port})")
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        path = getattr(s, name)
        if path is not None and (wanted or any(d.tls for d in s.destinations.values())) \
                and not Path(path).is_file():
            out.append(f"{name}: {path} is not a readable file")
    return out


def _audit_problems(s: Settings) -> list[str]:
    """audit_repository: a URL we can send to; over TLS, a CA to check the repository with."""
    if not s.audit_repository:
        return []
    from .atna.target import parse

    try:
        repo = parse(s.audit_repository)
    except ValueError as exc:
        return [f"audit_repository: {exc}, got {s.audit_repository!r}"]
    if repo.scheme == "tls" and s.tls_ca_file is None:
        return ["tls_ca_file: audit_repository over tls:// needs the CA bundle that the "
                "repository's certificate chains to"]
    if repo.scheme == "tls" and not Path(s.tls_ca_file).is_file():  # type: ignore[arg-type]
        return [f"tls_ca_file: {s.tls_ca_file} is not a readable file"]
    return []


def _pkcs11_problems(s: Settings) -> list[str]:
    """A PKCS#11 master key needs a well-formed URI, a module and a PIN (its value never shown)."""
    if not s.master_key.startswith("pkcs11:"):
        return []
    from .hsm import parse_uri

    try:
        uri = parse_uri(s.master_key)
    except ValueError as exc:
        return [f"master_key: {exc}"]
    out = []
    if not (s.pkcs11_module or uri.module_path):
        out.append("pkcs11_module: the PKCS#11 module path is needed for a pkcs11: master_key")
    if not (s.pkcs11_pin or s.pkcs11_pin_file or uri.pin_source or uri.pin_value):
        out.append("pkcs11_pin: a PIN (pkcs11_pin_file or PACS_PKCS11_PIN) is needed for a "
                   "pkcs11: master_key")
    return out
