"""Settings: embedded defaults, an optional TOML file, then ``PACS_*`` environment variables.

Every setting is documented in ``conf/pacs.toml``; the defaults here are the same, so the server runs
with no file at all. Environment variables override a file: ``PACS_DICOM_PORT=4242``; lists are comma
separated (``PACS_ALLOWED_CALLING_AETS=CT1,MR2``); destinations are ``AE=host:port`` pairs.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_problems import _audit_problems, _blob_store_problems, _pkcs11_problems, _tls_problems
from .period import parse_limit, parse_period


@dataclass(frozen=True)
class Destination:
    """A C-MOVE destination: where to open the outgoing association."""

    ae_title: str
    host: str
    port: int
    tls: bool = False  # open associations to it over TLS (PS3.15 B.9)


@dataclass
class Settings:
    """Everything the server can be told. Paths are resolved by :meth:`resolved`."""

    data_dir: Path = Path("data")
    database_url: str = field(default="", repr=False)  # default: SQLite in data_dir (may hold a password)
    blob_dir: Path | None = None  # default: data_dir / "blobs"
    master_key_file: Path | None = None  # default: data_dir / "master.key" (see conf/pacs.toml)
    # base64 key(s) from the environment instead of a file: "1:<b64>,2:<b64>"; or a PKCS#11 URI
    # (RFC 7512) naming the key in an HSM: "pkcs11:token=pacs;object=pacs-master" (storage/hsm.py)
    master_key: str = field(default="", repr=False)
    pkcs11_module: str = ""  # the PKCS#11 module (.so) of the HSM
    pkcs11_pin: str = field(default="", repr=False)  # the token's user PIN (better: pkcs11_pin_file)
    pkcs11_pin_file: Path | None = None  # a file whose first line is the PIN
    key_cache_size: int = 0  # unwrapped patient data keys kept per process (LRU); 0: 4096
    encrypt: bool = True  # False only for benchmarks (PACS_BENCH_NO_ENCRYPTION=1)
    fsync: bool = True
    inline_blob_limit: int = 65536  # objects up to this size (bytes) are kept in the index database
    # Blob store (storage/blobstores.py): "" = files in blob_dir; "s3://bucket/prefix"; "dispersal"
    blob_store: str = ""
    s3_endpoint: str = ""  # e.g. http://127.0.0.1:8333 (SeaweedFS, MinIO); "" = AWS
    s3_region: str = ""
    s3_access_key_id: str = ""  # "" = the standard AWS credential chain
    s3_secret_access_key: str = field(default="", repr=False)
    s3_secret_access_key_file: Path | None = None
    blob_timeout: float = 10.0  # seconds a blob store request (or a dispersal location) may take
    blob_locations: list[str] = field(default_factory=list)  # dispersal: directories or s3:// URLs
    dispersal_k: int = 3  # shares needed to read an object
    dispersal_n: int = 0  # shares written per object (0: one per location)
    write_quorum: int = 0  # shares that must be confirmed before a store is acknowledged (0: n)
    # Several nodes on one index and bucket (storage/cluster.py)
    node_name: str = ""  # this pacs serve among several; its blob keys get a prefix from it
    cluster_poll_interval: float = 1.0  # seconds between polls of what other nodes changed; 0: off

    # DICOM networking
    ae_title: str = "PACS"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    allowed_calling_aets: list[str] = field(default_factory=list)  # empty: any calling AE
    max_associations: int = 32
    dimse_workers: int = 2  # SCP processes accepting on one shared listening socket
    dimse_fast_store: bool = True  # C-STOREs served by pacs/dimse/fastpath.py (False: pynetdicom's own path)
    dimse_max_pdu: int = 262144  # largest PDU we accept with the fast path (pynetdicom's default: 16382)
    dimse_patches: bool = True  # pacs/dimse patches pynetdicom (False: stock pynetdicom, slower)
    dimse_switch_interval: float = 0.0005  # GIL switch interval (s) while patched; 0: CPython's 5 ms
    destinations: dict[str, Destination] = field(default_factory=dict)
    # Tenancy (issue 19, pacs/tenancy.py): calling AE title -> provider name, client certificate
    # (SHA-256 fingerprint hex, or "CN=<name>") -> provider name; from [providers.NAME] tables
    provider_aets: dict[str, str] = field(default_factory=dict)
    provider_certificates: dict[str, str] = field(default_factory=dict)
    cross_tenant_aets: list[str] = field(default_factory=list)  # these see every provider
    duplicate_policy: str = "keep"  # keep | replace | reject  (a re-sent SOP Instance UID)
    network_timeout: float = 60.0
    connect_timeout: float = 10.0  # opening the connection to a C-MOVE destination
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
    http_tls: bool = False  # serve HTTPS on http_port (tls_cert_file / tls_key_file), with HSTS
    hsts_max_age: int = 31536000  # Strict-Transport-Security max-age when http_tls is on

    # TLS (both doors): this server's certificate chain and key, and the CAs it trusts for peers
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None  # client certificates (mutual TLS) and C-MOVE destinations
    dicom_tls: bool = False  # open the DICOM TLS port (PS3.15 B.9, BCP 195 profile)
    dicom_tls_port: int = 2762  # the port IANA registered for DICOM over TLS
    dicom_plain: bool = True  # keep the plain dicom_port as well (false: TLS only)
    dicom_tls_verify_client: bool = False  # mutual TLS: only peers with a certificate from tls_ca_file

    # Matching
    case_sensitive_person_names: bool = False
    phonetic_fuzzy_matching: bool = False  # fuzzy person names: also words that sound alike

    # Patients
    retention_years: float | str = 7  # years (fractions allowed) or a duration: "18 months" (storage/period.py)
    retention_clock: str = "latest"  # latest: later of last study date and last receipt | study_date
    retention_max_per_run: str = "1%"  # most patients an unconfirmed run shreds: "N%" (at least 10) or N
    retention_first_run_delay: float = 60.0  # seconds after `pacs serve` starts before the first run
    letter_max_failures: int = 10
    share_days: int = 30  # default life of a share a patient makes for another doctor (days)

    # Letters by email (pacs/mail.py): SMTP with STARTTLS
    smtp_host: str = ""  # empty: `pacs letter issue --email` is refused
    smtp_port: int = 587
    smtp_user: str = ""  # empty: no SMTP AUTH
    smtp_password: str = ""  # better PACS_SMTP_PASSWORD or smtp_password_file
    smtp_password_file: Path | None = None
    smtp_from: str = ""
    smtp_ca_file: Path | None = None  # CA certificates the server's must chain to; default: system's
    smtp_timeout: float = 30.0
    mail_codes: bool = False  # also put the access code and passcode in the mail (one channel)

    # Audit to an audit record repository (IHE ATNA, PS3.15 A.5; storage/atna, pacs/atna.py)
    audit_repository: str = ""  # "" off; "tls://host:6514" (RFC 5425) or "udp://host:514" (RFC 5426)
    audit_source_id: str = ""  # AuditSourceID of the messages; "" = ae_title

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
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_file", "pkcs11_pin_file"):
            if getattr(s, name) is not None:
                setattr(s, name, Path(getattr(s, name)).expanduser().absolute())
        return s


class ConfigError(ValueError):
    """A setting has a value the server cannot run with; the message names the setting."""


DUPLICATE_POLICIES = ("keep", "replace", "reject")
RETENTION_CLOCKS = ("latest", "study_date")

#: Secret settings that can also be read from a file named by ``PACS_<NAME>_FILE`` (e.g. a container
#: secret), so they need not sit in the configuration file or the process environment. The master
#: key and the PKCS#11 PIN have their own file settings (``master_key_file``, ``pkcs11_pin_file``).
#: None of these is ever logged: their fields are left out of ``repr(Settings)``.
SECRET_FROM_FILE = ("database_url",)


def _parse_destinations(value: Any) -> dict[str, Destination]:
    out: dict[str, Destination] = {}
    if isinstance(value, str):
        for item in filter(None, (v.strip() for v in value.split(","))):
            ae, _, hostport = item.partition("=")
            hostport, tls = (hostport[:-4], True) if hostport.endswith("/tls") else (hostport, False)
            host, _, port = hostport.rpartition(":")
            port = port.strip()
            if not ae.strip() or not (port.isascii() and port.isdigit()):
                raise ConfigError(f"destinations: {item!r} is not AE=host:port (or AE=host:port/tls)")
            out[ae.strip()] = Destination(ae.strip(), host or "127.0.0.1", int(port), tls)
    elif isinstance(value, dict):
        for ae, d in value.items():
            if not isinstance(d, dict) or "port" not in d:
                raise ConfigError(f"destinations: {ae!r} needs a port (and optionally a host)")
            try:
                out[ae] = Destination(ae, d.get("host", "127.0.0.1"), int(d["port"]),
                                      d.get("tls", False) is True)
            except (TypeError, ValueError):
                raise ConfigError(f"destinations: the port of {ae!r} is not a number") from None
    else:
        raise ConfigError("destinations: expected AE=host:port pairs or a [destinations] table")
    return out


def _parse_pairs(name: str, value: Any) -> dict[str, str]:
    """``KEY=provider`` pairs (comma separated) or a table of them."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in filter(None, (v.strip() for v in str(value).split(","))):
        key, sep, who = item.rpartition("=")
        if not sep or not key.strip() or not who.strip():
            raise ConfigError(f"{name}: {item!r} is not CREDENTIAL=provider")
        out[key.strip()] = who.strip()
    return out


def _fingerprint(value: str) -> str:
    """A certificate key as the server compares it: lowercase hex without colons, or CN=..."""
    if value[:3].upper() == "CN=":
        return "CN=" + value[3:]
    v = value.lower().removeprefix("sha256:").replace(":", "")
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ConfigError(f"providers: certificate {value!r} is neither a SHA-256 fingerprint "
                          "(64 hex digits, colons allowed) nor CN=<common name>")
    return v


def _providers_table(doc: Any) -> dict[str, Any]:
    """``[providers.NAME] calling_aets = [...]; certificates = [...]`` -> the two mappings."""
    if not isinstance(doc, dict):
        raise ConfigError("providers: expected [providers.NAME] tables")
    aets: dict[str, str] = {}
    certs: dict[str, str] = {}
    for name, table in doc.items():
        if not isinstance(table, dict) or set(table) - {"calling_aets", "certificates"}:
            raise ConfigError(f"providers.{name}: expected calling_aets = [...] and/or "
                              "certificates = [...]")
        for ae in table.get("calling_aets", []):
            if aets.setdefault(str(ae), name) != name:
                raise ConfigError(f"providers: calling AE title {ae!r} is listed for two providers")
        for cert in table.get("certificates", []):
            if certs.setdefault(str(cert), name) != name:
                raise ConfigError(f"providers: certificate {cert!r} is listed for two providers")
    return {"provider_aets": aets, "provider_certificates": certs}


def _ae_problem(value: str) -> str | None:
    """Why ``value`` is not a usable AE title (PS3.5 6.2, VR AE), or None."""
    if not value.strip():
        return "is empty"
    if len(value) > 16:
        return f"{value!r} is longer than 16 characters"
    if "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        return f"{value!r} holds a backslash or a character outside printable ASCII"
    return None


def check(s: Settings) -> Settings:
    """Refuse values the server cannot run with, all at once, each naming its setting."""
    problems: list[str] = []

    def need(ok: bool, name: str, what: str) -> None:
        if not ok:
            problems.append(f"{name}: {what}, got {getattr(s, name)!r}")

    for name in ("dicom_port", "http_port", "dicom_tls_port"):
        need(1 <= getattr(s, name) <= 65535, name, "a port is 1-65535")
    for name in ("dimse_workers", "http_workers", "max_associations", "letter_max_failures",
                 "max_upload_bytes"):
        need(getattr(s, name) >= 1, name, "must be at least 1")
    for name in ("inline_blob_limit", "shutdown_grace", "retention_first_run_delay", "dimse_switch_interval",
                 "hsts_max_age", "key_cache_size", "cluster_poll_interval"):
        need(getattr(s, name) >= 0, name, "must not be negative")
    _check_retention(s, problems, need)
    need(1 <= s.share_days <= 365, "share_days", "1 to 365 days")
    need(s.network_timeout > 0, "network_timeout", "must be more than 0 seconds")
    need(s.connect_timeout > 0, "connect_timeout", "must be more than 0 seconds")
    need(s.dimse_max_pdu == 0 or s.dimse_max_pdu >= 4096, "dimse_max_pdu",
         "0 (no limit) or at least 4096 bytes")
    need(s.duplicate_policy in DUPLICATE_POLICIES, "duplicate_policy",
         "one of " + ", ".join(DUPLICATE_POLICIES))
    need(s.dicomweb_root.startswith("/"), "dicomweb_root", "a path starting with /")
    need(1 <= s.smtp_port <= 65535, "smtp_port", "a port is 1-65535")
    need(s.smtp_timeout > 0, "smtp_timeout", "must be more than 0 seconds")
    need(not s.smtp_host or "@" in s.smtp_from, "smtp_from", "an address is needed with smtp_host")
    need(not (s.smtp_password and s.smtp_password_file), "smtp_password",
         "give smtp_password or smtp_password_file, not both")
    if (why := _ae_problem(s.ae_title)) is not None:
        problems.append(f"ae_title: {why}")
    for ae in s.allowed_calling_aets:
        if (why := _ae_problem(ae)) is not None:
            problems.append(f"allowed_calling_aets: {why}")
    for name, aes in (("provider_aets", list(s.provider_aets)),
                      ("cross_tenant_aets", s.cross_tenant_aets)):
        for ae in aes:
            if (why := _ae_problem(ae)) is not None:
                problems.append(f"{name}: {why}")
    both = sorted(set(s.cross_tenant_aets) & set(s.provider_aets))
    if both:
        problems.append(f"cross_tenant_aets: {', '.join(both)} also listed for a provider")
    for ae, d in s.destinations.items():
        if (why := _ae_problem(ae)) is not None:
            problems.append(f"destinations: {why}")
        if not 1 <= d.port <= 65535:
            problems.append(f"destinations: the port of {ae} is {d.port}; a port is 1-65535")
    problems += _blob_store_problems(s)
    problems += _pkcs11_problems(s) + _tls_problems(s) + _audit_problems(s)
    if problems:
        raise ConfigError("; ".join(problems))
    return s


def _check_retention(s: Settings, problems: list[str], need: Any) -> None:
    """Retention settings (issue 13): a period under 30 days is a typo that would shred everything."""
    for name, parse in (("retention_years", parse_period), ("retention_max_per_run", parse_limit)):
        try:
            parse(getattr(s, name))
        except ValueError as exc:
            problems.append(f"{name}: {exc}, got {getattr(s, name)!r}")
    need(s.retention_clock in RETENTION_CLOCKS, "retention_clock", "one of " + ", ".join(RETENTION_CLOCKS))


def _coerce(name: str, value: Any) -> Any:
    f = {f.name: f for f in dataclasses.fields(Settings)}[name]
    t = str(f.type)
    if name == "destinations":
        return _parse_destinations(value)
    if name == "provider_aets":
        return _parse_pairs(name, value)
    if name == "provider_certificates":
        try:
            return {_fingerprint(k): v for k, v in _parse_pairs(name, value).items()}
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("providers:", "provider_certificates:", 1)) from None
    if name in ("retention_years", "retention_max_per_run"):  # checked (and parsed) by check()
        return value if isinstance(value, (int, float)) and name == "retention_years" else str(value)
    if "list" in t:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    if t.startswith("bool"):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if t.startswith("int"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if t.startswith("float"):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if "Path" in t:
        return Path(value) if value not in ("", None) else None
    return value


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Defaults, then the TOML file (flat keys or ``[section]`` tables), then ``PACS_*``, then overrides."""
    if env is None:
        env = os.environ
    values: dict[str, Any] = {}
    path = path or env.get("PACS_CONFIG")
    if path:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
        for key, val in doc.items():
            if key == "providers":
                values.update(_providers_table(val))
            elif isinstance(val, dict) and key != "destinations":
                values.update(val)  # sections are for the reader only
            else:
                values[key] = val
    names = {f.name for f in dataclasses.fields(Settings)}
    for key, val in env.items():
        if key.startswith("PACS_") and key[5:].lower() in names:
            values[key[5:].lower()] = val
    for name in SECRET_FROM_FILE:  # PACS_<NAME>_FILE: the secret is the file's first line
        path_value = env.get(f"PACS_{name.upper()}_FILE")
        if path_value:
            try:
                lines = Path(path_value).read_text().splitlines()
            except OSError as exc:
                raise ConfigError(f"PACS_{name.upper()}_FILE: cannot read {path_value}: "
                                  f"{exc.strerror or exc}") from None
            values[name] = lines[0] if lines else ""
    if env.get("PACS_BENCH_NO_ENCRYPTION") in ("1", "true", "yes"):
        values["encrypt"] = False
    values.update(overrides)
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return check(Settings(**{k: _coerce(k, v) for k, v in values.items()}).resolved())
