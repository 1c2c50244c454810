"""Settings: embedded defaults, an optional TOML file, then ``PACS_*`` environment variables.

Every setting is documented in ``conf/pacs.toml``; the defaults here are the same, so the server runs
with no file at all. Environment variables override a file: ``PACS_DICOM_PORT=4242``; lists are comma
separated (``PACS_ALLOWED_CALLING_AETS=CT1,MR2``); destinations are ``AE=host:port`` pairs.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Destination:
    """A C-MOVE destination: where to open the outgoing association."""

    ae_title: str
    host: str
    port: int


@dataclass
class Settings:
    """Everything the server can be told. Paths are resolved by :meth:`resolved`."""

    data_dir: Path = Path("data")
    database_url: str = ""  # default: SQLite file in data_dir
    blob_dir: Path | None = None  # default: data_dir / "blobs"
    master_key_file: Path | None = None  # default: data_dir / "master.key" (see conf/pacs.toml)
    master_key: str = ""  # base64 key(s) from the environment instead of a file: "1:<b64>,2:<b64>"
    encrypt: bool = True  # False only for benchmarks (PACS_BENCH_NO_ENCRYPTION=1)
    fsync: bool = True
    inline_blob_limit: int = 65536  # objects up to this size (bytes) are kept in the index database

    # DICOM networking
    ae_title: str = "PACS"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    allowed_calling_aets: list[str] = field(default_factory=list)  # empty: any calling AE
    max_associations: int = 32
    dimse_workers: int = 2  # SCP processes accepting on one shared listening socket
    dimse_fast_store: bool = True  # C-STOREs served by pacs/fastpath.py (False: pynetdicom's own path)
    dimse_max_pdu: int = 262144  # largest PDU we accept with the fast path (pynetdicom's default: 16382)
    destinations: dict[str, Destination] = field(default_factory=dict)
    duplicate_policy: str = "keep"  # keep | replace | reject  (a re-sent SOP Instance UID)
    network_timeout: float = 60.0
    shutdown_grace: float = 10.0  # seconds running transfers get to finish on SIGTERM

    # HTTP / DICOMweb
    http_host: str = "0.0.0.0"
    http_port: int = 8042
    http_workers: int = 2
    dicomweb_root: str = "/dicom-web"
    cors_origins: list[str] = field(default_factory=list)
    trust_proxy_headers: bool = False
    open_loopback: bool = True  # requests from this machine need no token (embedded default)
    max_upload_bytes: int = 4 * 1024**3
    public_url: str = ""  # base URL printed in patient letters; default from the request / http_port

    # Matching
    case_sensitive_person_names: bool = False

    # Patients
    retention_years: int = 7
    letter_max_failures: int = 10

    def resolved(self) -> Settings:
        """Fill the defaults that depend on data_dir."""
        s = dataclasses.replace(self)
        s.data_dir = Path(s.data_dir).expanduser().absolute()
        if not s.database_url:
            s.database_url = f"sqlite:///{s.data_dir / 'index.sqlite'}"
        s.blob_dir = Path(s.blob_dir).expanduser().absolute() if s.blob_dir else s.data_dir / "blobs"
        if s.master_key_file is None and not s.master_key:
            s.master_key_file = s.data_dir / "master.key"
        elif s.master_key_file is not None:
            s.master_key_file = Path(s.master_key_file).expanduser().absolute()
        return s


def _parse_destinations(value: Any) -> dict[str, Destination]:
    out: dict[str, Destination] = {}
    if isinstance(value, str):
        for item in filter(None, (v.strip() for v in value.split(","))):
            ae, _, hostport = item.partition("=")
            host, _, port = hostport.rpartition(":")
            out[ae.strip()] = Destination(ae.strip(), host or "127.0.0.1", int(port))
    elif isinstance(value, dict):
        for ae, d in value.items():
            out[ae] = Destination(ae, d.get("host", "127.0.0.1"), int(d["port"]))
    return out


def _coerce(name: str, value: Any) -> Any:
    f = {f.name: f for f in dataclasses.fields(Settings)}[name]
    t = str(f.type)
    if name == "destinations":
        return _parse_destinations(value)
    if "list" in t:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    if t.startswith("bool"):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if t.startswith("int"):
        return int(value)
    if t.startswith("float"):
        return float(value)
    if "Path" in t:
        return Path(value) if value not in ("", None) else None
    return value


def load_settings(path: str | os.PathLike | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """Defaults, then the TOML file (flat keys or ``[section]`` tables), then ``PACS_*``, then overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = path or env.get("PACS_CONFIG")
    if path:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
        for key, val in doc.items():
            if isinstance(val, dict) and key != "destinations":
                values.update(val)  # sections are for the reader only
            else:
                values[key] = val
    names = {f.name for f in dataclasses.fields(Settings)}
    for key, val in env.items():
        if key.startswith("PACS_") and key[5:].lower() in names:
            values[key[5:].lower()] = val
    if env.get("PACS_BENCH_NO_ENCRYPTION") in ("1", "true", "yes"):
        values["encrypt"] = False
    values.update(overrides)
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return Settings(**{k: _coerce(k, v) for k, v in values.items()}).resolved()
