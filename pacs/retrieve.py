"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3). Placeholder until the query/retrieve work lands."""

from __future__ import annotations

from collections.abc import Iterator

from pynetdicom.events import Event

from storage.archive import Archive
from storage.config import Settings

from .status import UNABLE_TO_PROCESS, status


def handle_move(event: Event, archive: Archive, settings: Settings) -> Iterator:
    yield status(UNABLE_TO_PROCESS, "C-MOVE not implemented yet"), None


def handle_get(event: Event, archive: Archive, settings: Settings) -> Iterator:
    yield status(UNABLE_TO_PROCESS, "C-GET not implemented yet"), None
