"""The frame-index cache: where each frame of a stored object is, kept in memory and in the index."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

from sqlalchemy import (
    update,
)

from ..frames import FrameIndex, index_frames, read_frame
from ..index.models import (
    Instance,
)
from .records import CHUNK, InstanceInfo
from .state import ArchiveState
from .statements import _SQL

log = logging.getLogger(__name__)


class FrameCache(ArchiveState):
    """Frame indexes: this process's memory, the index column, or computed once (storage/frames.py).

    Calls on other rooms: ``open`` (:mod:`.reading`).
    """

    # -- frames ---------------------------------------------------------------------------------------

    def frame_index(self, info: InstanceInfo) -> FrameIndex:
        """Where each frame is in the stored object.

        An uncompressed object's index is stored at ingest (storage/frames.py,
        ``native_frame_index``); any other is computed on first use, then kept in the index.
        Keeping it is not on the request path: a viewer opening a series asks for each image once,
        and a commit (an fsync) per first frame cost ~3 ms of its ~8. New indexes are written in
        batches by a background thread (:meth:`_keep_frame_indexes`); until then, and after, this
        process answers from memory. A lost batch costs only a recomputation.
        """
        index = self._frame_indexes.get(info.blob_key)  # a stored object's own random name
        if index is not None:
            return index
        with self.engine.connect() as c:
            cached = c.execute(_SQL.frame_index, {"id": info.id}).scalar()
        if cached:
            index = FrameIndex.from_dict(json.loads(cached))
        else:
            with self.open(info) as r:
                index = index_frames(io.BufferedReader(r, CHUNK))
            self._frame_index_writes.put((info.id, info.blob_key, json.dumps(index.to_dict()).encode()))
            self._start_frame_index_writer()
        self._remember_frame_index(info.blob_key, index)
        return index

    def _remember_frame_index(self, blob_key: str, index: FrameIndex) -> None:
        if len(self._frame_indexes) > 10_000:
            self._frame_indexes.clear()
        self._frame_indexes[blob_key] = index

    def _start_frame_index_writer(self) -> None:
        with self._lock:
            if self._frame_index_writer is None:
                self._frame_index_writer = threading.Thread(
                    target=self._keep_frame_indexes, name="pacs-frame-index", daemon=True)
                self._frame_index_writer.start()

    def _keep_frame_indexes(self) -> None:
        """Write queued frame indexes, whatever has queued up in one transaction."""
        while True:
            batch = [self._frame_index_writes.get()]
            time.sleep(0.2)  # let a series' worth gather
            while not self._frame_index_writes.empty() and len(batch) < 1000:
                batch.append(self._frame_index_writes.get_nowait())
            try:
                with self.write_sessions.begin() as s:
                    for instance_id, blob_key, data in batch:  # the same object, not a reused id
                        s.execute(update(Instance)
                                  .where(Instance.id == instance_id, Instance.blob_key == blob_key)
                                  .values(frame_index=data))
            except Exception:  # a cache: recomputed on next use
                log.warning("could not keep %d frame index(es)", len(batch), exc_info=True)

    def read_frame(self, info: InstanceInfo, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: reads and decrypts only the segments it spans."""
        index = self.frame_index(info)
        with self.open(info) as r:
            return read_frame(r, index, number)
