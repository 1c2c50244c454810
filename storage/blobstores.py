"""Which blob store the archive writes to, built from the settings.

* ``blob_store = ""`` (the default): files under ``blob_dir`` (storage/blobstore.py);
* ``blob_store = "s3://bucket/prefix"``: an S3 bucket (storage/s3store.py), with ``s3_endpoint``,
  ``s3_region`` and credentials from ``s3_access_key_id`` / ``s3_secret_access_key`` (or its
  ``_file``), else the standard AWS chain (environment, ~/.aws, instance role);
* ``blob_store = "dispersal"``: k-of-n erasure coding over ``blob_locations`` (storage/dispersal/),
  each an absolute directory or ``s3://bucket/prefix?endpoint=URL&region=R&profile=P``.

While ``pacs blobs migrate`` moves a file archive into a bucket (storage/blobmigrate.py), the running
server's file store notices the switch file the migration writes and from then on stores into the
bucket, reading from the bucket first and from the old files second (:class:`SwitchingBlobStore`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Engine

from .blobstore import FileBlobStore
from .config import Settings
from .errors import BlobStoreMisconfigured, NotFound

log = logging.getLogger(__name__)

SWITCH_FILE = "blob-store-switch.json"  # in data_dir, written by pacs blobs migrate
_SWITCH_CHECK_SECONDS = 1.0


def s3_secret(settings: Settings) -> str:
    """The S3 secret key: the setting, else the file it names (never logged)."""
    if settings.s3_secret_access_key:
        return settings.s3_secret_access_key
    if settings.s3_secret_access_key_file:
        try:
            return Path(settings.s3_secret_access_key_file).read_text().strip()
        except OSError as exc:
            raise BlobStoreMisconfigured(
                f"s3_secret_access_key_file: cannot read {settings.s3_secret_access_key_file} "
                f"({exc.strerror or exc})") from None
    return ""


def s3_store(url: str, settings: Settings, setting: str = "blob_store") -> Any:
    """An S3BlobStore for ``s3://bucket/prefix[?endpoint=&region=&profile=]``."""
    from .s3store import S3BlobStore

    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise BlobStoreMisconfigured(f"{setting}: expected s3://bucket/prefix, got {url!r}")
    q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return S3BlobStore(parts.netloc, parts.path.strip("/"),
                       endpoint=q.get("endpoint", settings.s3_endpoint),
                       region=q.get("region", settings.s3_region) or "us-east-1",
                       access_key_id=settings.s3_access_key_id, secret_access_key=s3_secret(settings),
                       profile=q.get("profile", ""), timeout=settings.blob_timeout, setting=setting)


def location_store(spec: str, settings: Settings, setting: str) -> Any:
    """One dispersal location: a directory or an S3 bucket/prefix."""
    if spec.startswith("s3://"):
        return s3_store(spec, settings, setting)
    path = spec[len("file://"):] if spec.startswith("file://") else spec
    if not os.path.isabs(path):
        raise BlobStoreMisconfigured(f"{setting}: expected an absolute directory or s3://..., got {spec!r}")
    return FileBlobStore(Path(path))


def location_name(spec: str) -> str:
    """A location for logs and health: no credentials, no query string."""
    return spec.split("?", 1)[0]


def build(settings: Settings, engine: Engine | None = None) -> Any:
    """The archive's blob store for these settings."""
    kind = settings.blob_store
    if kind.startswith("s3://"):
        return s3_store(kind, settings)
    if kind == "dispersal":
        from .dispersal import DispersedBlobStore, RepairLog

        n = settings.dispersal_n or len(settings.blob_locations)
        stores = [location_store(spec, settings, f"blob_locations[{i}]")
                  for i, spec in enumerate(settings.blob_locations)]
        return DispersedBlobStore(stores, settings.dispersal_k, n,
                                  write_quorum=settings.write_quorum, timeout=settings.blob_timeout,
                                  repairs=RepairLog(engine) if engine is not None else None,
                                  names=[location_name(s) for s in settings.blob_locations])
    if kind not in ("", "files"):
        raise BlobStoreMisconfigured(f"blob_store: expected \"\", s3://bucket/prefix or dispersal, got {kind!r}")
    # blob_dir: set by Settings.resolved()
    return SwitchingBlobStore(FileBlobStore(settings.blob_dir), settings)  # type: ignore[arg-type]


class FallbackBlobStore:
    """Writes go to ``primary``; reads try ``primary``, then ``fallback`` (a migration's source)."""

    def __init__(self, primary: Any, fallback: Any):
        self.primary, self.fallback = primary, fallback

    def __getattr__(self, name: str) -> Any:
        return getattr(self.primary, name)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.primary.open(key)
        except NotFound:
            return self.fallback.open(key)

    def size(self, key: str) -> int:
        try:
            return self.primary.size(key)
        except NotFound:
            return self.fallback.size(key)

    def delete(self, key: str) -> None:
        self.primary.delete(key)
        self.fallback.delete(key)

    def keys(self, older_than: float | None = None) -> Iterator[str]:
        seen = set(self.primary.keys(older_than))
        yield from seen
        yield from (k for k in self.fallback.keys(older_than) if k not in seen)

    def __repr__(self) -> str:
        return f"FallbackBlobStore({self.primary!r}, then {self.fallback!r})"


class SwitchingBlobStore:
    """The file store, until ``pacs blobs migrate`` switches this archive to a bucket (checked at
    most once a second, one ``stat``); then a FallbackBlobStore(bucket, files)."""

    def __init__(self, files: FileBlobStore, settings: Settings):
        self.files = files
        self._settings = settings
        self._switch = settings.data_dir / SWITCH_FILE
        self._current: Any = files
        self._checked = 0.0
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> Any:
        now = time.monotonic()
        if force or now - self._checked >= _SWITCH_CHECK_SECONDS:
            self._checked = now
            if self._current is self.files and self._switch.exists():
                with contextlib.suppress(OSError, ValueError, KeyError):
                    url = json.loads(self._switch.read_text())["to"]
                    self._current = FallbackBlobStore(s3_store(url, self._settings), self.files)
                    log.info("blob store switched to %s by pacs blobs migrate", url.split("?")[0])
        return self._current

    def __getattr__(self, name: str) -> Any:  # path(), sweep_incomplete(), check(), ...
        return getattr(self._refresh(), name)

    def create(self, key: str) -> BinaryIO:
        return self._refresh().create(key)

    def commit(self, fh: Any, durable: bool = True) -> int:
        """By the store that created ``fh`` (the switch may have happened meanwhile)."""
        return (self.files if isinstance(fh, io.BufferedWriter) else self._current).commit(fh, durable)

    def sync(self, keys: list[str]) -> None:
        self.files.sync([k for k in keys if self.files.path(k).exists()])

    def open(self, key: str) -> BinaryIO:
        return self._refresh().open(key)

    def __repr__(self) -> str:
        return f"SwitchingBlobStore({self._current!r})"
