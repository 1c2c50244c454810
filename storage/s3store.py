"""Blobs as objects of an S3 bucket (boto3): one more :class:`storage.blobstore.BlobStore`.

* Keys are the archive's random ids under a configured prefix (``prefix/<32 hex>``); no UID, name or
  date in a key, and no object metadata at all.
* Writes stream: bytes gather in a buffer of ``part_size``; a blob that stays under it goes up as one
  PUT on commit, a larger one as a multipart upload, one part per full buffer, so memory stays bounded
  whatever the object's size. ``commit`` returns once the object store has confirmed the object
  (PUT or CompleteMultipartUpload answered 200): S3 writes are durable on confirmation, so ``sync`` is
  a no-op. A writer closed without commit aborts its multipart upload; uploads a crash left behind
  are aborted by :meth:`S3BlobStore.sweep_incomplete`, with the orphan sweep.
* Reads are ranged GETs: a frame or bulk-data read asks for the encrypted segments it needs (and a
  small read-ahead), never the whole object.
* Failures to reach the store raise BlobStoreUnavailable (Out of Resources for that one object);
  the client keeps no state between requests, so storing resumes when the store answers again.
* One boto3 session per process (and per profile), one client per endpoint and credentials
  (:func:`_client`): a dispersal over five locations of one endpoint uses one client, and making a
  client does not load and keep botocore's S3 model again (~0.1 s of CPU and ~11 MB each: with a
  session per location, a worker of a 3-of-5 store over S3 took seconds to start on a loaded
  machine, and the benchmark's pushes ran beside the start-up). Clients are thread-safe; they
  are never shared across a fork (their connection pools hold sockets), sessions are.
"""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from typing import Any

from .errors import BlobStoreMisconfigured, BlobStoreUnavailable, NotFound

log = logging.getLogger(__name__)

PART_SIZE = 8 << 20  # S3's smallest part is 5 MiB (except the last)
READ_AHEAD = 64 << 10  # a small read brings some of what follows
FIRST_READ = (1 << 20) + (64 << 10)  # a read at 0 (the encryption header) brings the first segment:
# a small object (a CT slice) is then one GET, not two
_KEY = re.compile(r"[0-9a-f]{32}")
_GONE = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_REFUSED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
_NO_BUCKET = {"NoSuchBucket", "404", "NotFound"}

_LOCK = threading.Lock()
_SESSIONS: dict[str, Any] = {}
_CLIENTS: dict[tuple[str | float, ...], Any] = {}


def _after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()
    _CLIENTS.clear()  # their connection pools belong to the parent


os.register_at_fork(after_in_child=_after_fork)


def _client(profile: str, endpoint: str, region: str, access_key_id: str, secret_access_key: str,
            timeout: float) -> Any:
    """The process's S3 client for these parameters, made once (see the module docstring)."""
    key = (profile, endpoint, region, access_key_id, secret_access_key, timeout)
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            session = _SESSIONS.get(profile)
            if session is None:
                session = _SESSIONS[profile] = boto3.session.Session(profile_name=profile or None)
            client = _CLIENTS[key] = session.client(
                "s3", endpoint_url=endpoint or None, region_name=region or None,
                aws_access_key_id=access_key_id or None,
                aws_secret_access_key=secret_access_key or None,
                config=Config(connect_timeout=timeout, read_timeout=timeout,
                              retries={"max_attempts": 2, "mode": "standard"},
                              max_pool_connections=32,
                              s3={"addressing_style": "path"} if endpoint else None))
        return client


class S3BlobStore:
    """Blobs in ``bucket`` under ``prefix``. ``setting`` names the setting in error messages."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str = "", region: str = "",
                 access_key_id: str = "", secret_access_key: str = "", profile: str = "",
                 timeout: float = 10.0, part_size: int = PART_SIZE, setting: str = "blob_store"):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint = endpoint
        self.setting = setting
        self.part_size = max(part_size, 5 << 20)
        self._client = _client(profile, endpoint, region, access_key_id, secret_access_key, timeout)
        from botocore.exceptions import BotoCoreError, ClientError

        self._client_error, self._boto_error = ClientError, BotoCoreError

    def name(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _object(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise NotFound("no such blob")
        return f"{self.prefix}/{key}" if self.prefix else key

    def call(self, op: str, **kwargs: Any) -> Any:
        """One S3 request; NotFound for a missing object, BlobStoreUnavailable for any other failure."""
        try:
            return getattr(self._client, op)(Bucket=self.bucket, **kwargs)
        except self._client_error as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _GONE and op in ("get_object", "head_object", "abort_multipart_upload"):
                raise NotFound("stored object is missing from the object store") from None
            log.warning("object store %s: %s failed (%s)", self.name(), op, code)
            raise BlobStoreUnavailable(f"the object store refused a request ({code})") from None
        except self._boto_error as exc:
            log.warning("object store %s: %s failed (%s)", self.name(), op, type(exc).__name__)
            raise BlobStoreUnavailable("the object store cannot be reached") from None

    # -- writing ------------------------------------------------------------------------------------

    def new_key(self) -> str:
        return secrets.token_hex(16)

    def create(self, key: str) -> _S3Writer:
        return _S3Writer(self, self._object(key))

    def commit(self, fh: _S3Writer, durable: bool = True) -> int:
        """Upload what is left and complete the object; returns its size once the store confirmed it."""
        return fh.commit()

    def sync(self, keys: list[str]) -> None:
        """Nothing to do: a confirmed S3 write is durable."""

    # -- reading ------------------------------------------------------------------------------------

    def open(self, key: str) -> _S3Reader:
        return _S3Reader(self, self._object(key))

    def size(self, key: str) -> int:
        return int(self.call("head_object", Key=self._object(key))["ContentLength"])

    def delete(self, key: str) -> None:
        self.call("delete_object", Key=self._object(key))

    def keys(self, older_than: float | None = None) -> Iterator[str]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("list_objects_v2", **kwargs)
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix):]
                if _KEY.fullmatch(name) and (
                        older_than is None or obj["LastModified"].timestamp() < older_than):
                    yield name
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def sweep_incomplete(self, older_than: float) -> int:
        """Abort multipart uploads begun before ``older_than`` and never completed (a crash, a kill)."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        n = 0
        page = self.call("list_multipart_uploads", Prefix=prefix)
        for up in page.get("Uploads", []):
            if up["Initiated"].timestamp() < older_than:
                try:
                    self.call("abort_multipart_upload", Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
                except NotFound:
                    pass
        return n

    # -- start and health ---------------------------------------------------------------------------

    def check(self) -> None:
        """The bucket exists and takes, returns and deletes an object with these credentials."""
        probe = (f"{self.prefix}/" if self.prefix else "") + f"probe-{secrets.token_hex(8)}"
        try:
            self._client.head_bucket(Bucket=self.bucket)
            self._client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            self._client.delete_object(Bucket=self.bucket, Key=probe)
        except self._client_error as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NO_BUCKET:
                raise BlobStoreMisconfigured(
                    f"{self.setting}: the bucket {self.bucket!r} does not exist at "
                    f"{self.endpoint or 'the default endpoint'}") from None
            if code in _REFUSED:
                raise BlobStoreMisconfigured(
                    f"{self.setting}: the object store refused our credentials for bucket "
                    f"{self.bucket!r} (check s3_access_key_id and s3_secret_access_key, or the "
                    "AWS credential chain)") from None
            raise BlobStoreMisconfigured(f"{self.setting}: the object store answered {code} "
                                         f"for bucket {self.bucket!r}") from None
        except self._boto_error as exc:
            raise BlobStoreUnavailable(
                f"{self.setting}: cannot reach the object store at "
                f"{self.endpoint or 'the default endpoint'} ({type(exc).__name__})") from None

    def health(self) -> dict[str, str]:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return {"": "ok"}
        except self._client_error as exc:
            return {"": f"refused ({exc.response.get('Error', {}).get('Code', '')})"}
        except self._boto_error as exc:
            return {"": f"unreachable ({type(exc).__name__})"}

    def __repr__(self) -> str:
        return f"S3BlobStore({self.name()})"


class _S3Writer(io.RawIOBase):
    """A write-only stream into one S3 object: one PUT, or a multipart upload past ``part_size``."""

    def __init__(self, store: S3BlobStore, name: str):
        super().__init__()
        self._store, self._name = store, name
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload: str | None = None
        self.size = 0
        self._done = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self._buf += data
        self.size += n
        if len(self._buf) >= self._store.part_size:
            self._send_part()
        return n

    def _send_part(self) -> None:
        call = self._store.call
        if self._upload is None:
            self._upload = call("create_multipart_upload", Key=self._name)["UploadId"]
        number = len(self._parts) + 1
        answer = call("upload_part", Key=self._name, UploadId=self._upload, PartNumber=number,
                      Body=bytes(self._buf))
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})
        self._buf = bytearray()

    def commit(self) -> int:
        call = self._store.call
        try:
            if self._upload is None:
                call("put_object", Key=self._name, Body=bytes(self._buf))
            else:
                if self._buf or not self._parts:
                    self._send_part()
                call("complete_multipart_upload", Key=self._name, UploadId=self._upload,
                     MultipartUpload={"Parts": self._parts})
            self._done = True
        finally:
            self.close()
        return self.size

    def close(self) -> None:
        if not self.closed and not self._done and self._upload is not None:
            try:  # abandoned: the parts go; if this fails too, sweep_incomplete aborts it later
                self._store.call("abort_multipart_upload", Key=self._name, UploadId=self._upload)
            except Exception:  # noqa: BLE001 - best effort
                log.debug("could not abort a multipart upload", exc_info=True)
        self._buf = bytearray()
        super().close()


class _S3Reader(io.RawIOBase):
    """A seekable view of one S3 object; each read is a ranged GET (with a small read-ahead)."""

    def __init__(self, store: S3BlobStore, name: str):
        super().__init__()
        self._store, self._name = store, name
        self._pos = 0
        self._size: int | None = None
        self._cache_at, self._cache = 0, b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    @property
    def size(self) -> int:
        if self._size is None:
            self._size = int(self._store.call("head_object", Key=self._name)["ContentLength"])
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos}.get(whence)
        self._pos = max(0, (self.size if base is None else base) + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        start = self._pos
        if self._size is not None and start >= self._size:
            return b""
        c0, c1 = self._cache_at, self._cache_at + len(self._cache)
        if c0 <= start < c1 and (size is not None and 0 <= size <= c1 - start):
            out = self._cache[start - c0: start - c0 + size]
        else:
            out = self._fetch(start, size)
        self._pos += len(out)
        return out

    def _fetch(self, start: int, size: int | None) -> bytes:
        ahead = FIRST_READ if start == 0 else READ_AHEAD
        want = None if size is None or size < 0 else max(size, ahead)
        rng = f"bytes={start}-" if want is None else f"bytes={start}-{start + want - 1}"
        try:
            answer = self._store.call("get_object", Key=self._name, Range=rng)
        except BlobStoreUnavailable:
            if self._size is None and start > 0 and start >= self.size:  # a range past the end
                return b""
            raise
        total = _total(answer.get("ContentRange", ""))
        if total is not None:
            self._size = total
        try:
            data: bytes = answer["Body"].read()
        except self._store._boto_error:
            raise BlobStoreUnavailable("the object store cannot be reached") from None
        self._cache_at, self._cache = start, data
        return data if size is None or size < 0 else data[:size]

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _total(content_range: str) -> int | None:
    """The object's size from a ``Content-Range: bytes a-b/total`` answer."""
    _, _, total = content_range.rpartition("/")
    return int(total) if total.isdigit() else None

