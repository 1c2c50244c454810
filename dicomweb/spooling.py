"""Uploaded form files spooled encrypted: werkzeug's default keeps a ``multipart/form-data`` file
over 500 KB in a ``SpooledTemporaryFile``, i.e. in clear in the system temporary directory. A
phone video sent to ``/upload`` must never be on disk unencrypted (docs: security), so the app's
request class hands werkzeug an :class:`~storage.spool.EncryptedSpool` in ``<data_dir>/tmp``
instead (memory up to 1 MiB, then an unlinked file encrypted under a key only this process has).
"""

from __future__ import annotations

from typing import BinaryIO

from flask import Request, current_app

from storage.spool import EncryptedSpool


class SpoolingRequest(Request):
    """Flask's request, with every uploaded file parsed into an encrypted spool."""

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None,
                         ) -> BinaryIO:
        spool_dir = current_app.config["PACS_SETTINGS"].data_dir / "tmp"
        spool_dir.mkdir(parents=True, exist_ok=True)
        return EncryptedSpool(dir=spool_dir)  # type: ignore[return-value]
