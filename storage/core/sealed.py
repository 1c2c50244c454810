"""Encryption at rest, one layer above the blob stores: plaintext in, sealed blobs out, and back.

The blob stores below see ciphertext under random keys and nothing else (storage/blobstore.py
``BlobStore``: put = ``create`` + ``commit``, ``open`` (a byte range by seeking), ``delete``,
``keys``): files, S3 (storage/s3store.py), dispersal over either (storage/dispersal/), and the
small blobs kept in the index database (``DatabaseBlobStore``, keys ``db-...``). Only this layer
holds a data key (AES-256-GCM segments, storage/crypto.py), and only it chooses between the
configured store and the inline one, by size on the way in and by key on the way out.

An inline blob is sealed here like any other, but put by the transaction that indexes its object
(storage/core/index_rows.py): it is born with its index row, so it can never be an orphan.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from ..blobstore import DatabaseBlobStore, is_inline
from ..crypto import DecryptingReader, EncryptingWriter
from ..errors import ArchiveError, StorageFull, disk_full
from .records import CHUNK

log = logging.getLogger(__name__)


class SealedBlobs:
    """Seal objects into blobs and open them again; the configured store and the inline one."""

    def __init__(self, blobs: Any, inline: DatabaseBlobStore):
        self.blobs, self.inline = blobs, inline

    def store_of(self, key: str) -> Any:
        """The store that holds the blob ``key``."""
        return self.inline if is_inline(key) else self.blobs

    # -- in ------------------------------------------------------------------------------------------

    def seal_inline(self, fp: BinaryIO, dek: bytes | None) -> tuple[str, bytes, int]:
        """(key, ciphertext, plaintext size) of ``fp`` sealed for the index (put by the indexing)."""
        key, sink = self.inline.new_key(), io.BytesIO()
        writer = EncryptingWriter(sink, dek, key)
        copy_into(fp, writer)
        return key, sink.getvalue(), writer.plain_size

    def seal(self, fp: BinaryIO, dek: bytes | None) -> tuple[str, int, int]:
        """(key, blob size, plaintext size) of ``fp`` sealed into a new blob, committed but not yet
        durable (the caller syncs a batch). Nothing is left behind on failure; a full disk is
        StorageFull."""
        key = self.blobs.new_key()
        fh = self.blobs.create(key)
        full = False
        try:
            writer = EncryptingWriter(fh, dek, key)
            copy_into(fp, writer)
            size = self.blobs.commit(fh, durable=False)  # durable in store_many, one sync per batch
        except BaseException as exc:
            with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails again
                fh.close()
            self.discard(key)
            if not disk_full(exc):
                raise
            full = True
        if full:
            # raised here, not in the handler: the OSError's frames, and the views into the received
            # buffer they hold, go now (a receive spool cannot be closed while something views it)
            raise StorageFull("no space left in the blob store")
        return key, size, writer.plain_size

    def reseal_inline(self, data: bytes, key: str, size: int, old: bytes | None,
                      dek: bytes | None) -> tuple[str, bytes]:
        """An inline blob sealed under ``old`` sealed again under ``dek``: (new key, ciphertext)."""
        new_key, sink = self.inline.new_key(), io.BytesIO()
        with DecryptingReader(io.BytesIO(data), old, key, size) as source:
            copy_into(source, EncryptingWriter(sink, dek, new_key))  # type: ignore[arg-type]
        return new_key, sink.getvalue()

    def reseal(self, key: str, size: int, old: bytes | None, dek: bytes | None, *,
               durable: bool) -> tuple[str, int]:
        """A stored blob sealed under ``old`` written again under ``dek``: (new key, blob size).
        The old blob goes once the new one is committed; on failure the new one goes."""
        new_key = self.blobs.new_key()
        fh = self.blobs.create(new_key)
        try:
            with DecryptingReader(self.blobs.open(key), old, key, size) as source:
                copy_into(source, EncryptingWriter(fh, dek, new_key))  # type: ignore[arg-type]
            new_size = self.blobs.commit(fh, durable=durable)
        except BaseException:
            with contextlib.suppress(OSError):
                fh.close()
            self.discard(new_key)
            raise
        self.discard(key)
        return new_key, new_size

    # -- out -----------------------------------------------------------------------------------------

    def open(self, key: str, size: int, dek: bytes | None) -> DecryptingReader:
        """A seekable plaintext stream of a sealed blob: a read decrypts only the segments it spans."""
        return DecryptingReader(self.store_of(key).open(key), dek, key, size)

    def discard(self, key: str) -> None:
        """Delete a blob no index row names (any more); if the store cannot now, the orphan sweep will."""
        try:
            self.blobs.delete(key)
        except (ArchiveError, OSError) as exc:
            log.warning("a blob could not be deleted now (%s); the orphan sweep will remove it",
                        type(exc).__name__)

    def discard_stored(self, keys: Iterable[str]) -> None:
        """:meth:`discard` each blob of the configured store (inline ones went with their rows)."""
        for key in keys:
            if not is_inline(key):
                self.discard(key)

    def keys(self) -> Iterator[str]:
        """Every blob's key, in both stores."""
        yield from self.blobs.keys()
        yield from self.inline.keys()


def copy_into(fp: BinaryIO, writer: EncryptingWriter) -> None:
    """All of ``fp`` into ``writer``, which is then closed; an in-memory source goes in as one view."""
    if isinstance(fp, io.BytesIO):
        with fp.getbuffer() as view:
            writer.write_last(view)
        return
    fp.seek(0)
    shutil.copyfileobj(fp, writer, CHUNK)
    writer.close()
