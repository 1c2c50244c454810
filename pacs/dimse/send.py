"""Patch: stored objects sent as they are stored, streamed: C-STORE sub-operations of C-GET and C-MOVE.

pynetdicom's Q/R service sends what the handler yields with ``Association.send_c_store``, and that
encodes a whole Dataset in memory (a 1 GB object took 4.2 GB). pynetdicom can instead send a Part 10
*file* in PDU-sized reads (``_config.STORE_SEND_CHUNKED_DATASET``), but our objects are encrypted
blobs, never plaintext files. So:

* :class:`StoredObject` is a Dataset (so the Q/R service accepts it) that only names a stored
  instance;
* :func:`install` wraps ``Association.send_c_store`` so that a StoredObject is sent as a virtual path,
  and gives pynetdicom's two readers of such paths (``dsutils.split_dataset`` and the DIMSE message
  encoder, pynetdicom 3.0) an ``open`` that returns the archive's decrypting reader for it.

Memory per send: one decrypted 1 MiB segment and one PDU. Figure (bench/README.md): C-GET of a
1 GiB object +11 MB RSS, was +4.1 GB (with the send queue's back-pressure, pacs.dimse.reactors);
the data set a peer receives is the one stored, byte for byte. Without this patch
(:func:`is_installed` false) ``pacs.scu`` sends a decoded Dataset, which pynetdicom re-encodes.

Upstream: yes in spirit: ``send_c_store`` taking any binary stream (not only a path) would make
this patch unnecessary.
"""

from __future__ import annotations

import builtins
import itertools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset
from pynetdicom import _config, dimse_messages, dsutils
from pynetdicom.association import Association

from .guard import require, source

_PREFIX = "/pacs-stored-object/"
_OPENERS: dict[str, Callable[[], BinaryIO]] = {}
_LOCK = threading.Lock()
_COUNTER = itertools.count()
_ENABLED: list[bool] = [False]


class StoredObject(Dataset):
    """A stored instance to send as stored: ``opener`` returns its plaintext Part 10 stream."""

    def __init__(self, opener: Callable[[], BinaryIO], sop_class_uid: str, sop_instance_uid: str):
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        object.__setattr__(self, "_opener", opener)


def _open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    name = str(file)
    if name.startswith(_PREFIX):
        with _LOCK:
            opener = _OPENERS.get(name)
        if opener is None:
            raise FileNotFoundError(name)
        return opener()
    return builtins.open(file, mode, *args, **kwargs)


def is_installed() -> bool:
    """True once StoredObjects can be sent (this process)."""
    return _ENABLED[0]


def check() -> None:
    require(hasattr(dsutils, "split_dataset") and "open(path" in source(dsutils.split_dataset),
            "dsutils.split_dataset changed")
    require("open(self._data_set_path[0]" in source(dimse_messages), "DIMSE message encoder changed")
    require(hasattr(_config, "STORE_SEND_CHUNKED_DATASET"), "no _config.STORE_SEND_CHUNKED_DATASET")


def install() -> None:
    """Install the wrapper (once per process; thread-safe)."""
    with _LOCK:
        if not _ENABLED[0]:
            _install()


def _install() -> None:
    for module in (dimse_messages, dsutils):
        module.open = _open  # type: ignore[attr-defined]  # module global shadows the builtin
    original = Association.send_c_store

    def send_c_store(self: Association, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(dataset, StoredObject):
            return original(self, dataset, *args, **kwargs)
        name = f"{_PREFIX}{next(_COUNTER)}"
        with _LOCK:
            _OPENERS[name] = object.__getattribute__(dataset, "_opener")
        try:
            return original(self, Path(name), *args, **kwargs)
        finally:
            with _LOCK:
                _OPENERS.pop(name, None)

    Association.send_c_store = send_c_store  # type: ignore[method-assign]
    _config.STORE_SEND_CHUNKED_DATASET = True  # only changes how *paths* are sent
    _ENABLED[0] = True
