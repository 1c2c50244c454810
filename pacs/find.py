"""C-FIND SCP (PS3.4 C.4.1). Placeholder until the query/retrieve work lands."""

from __future__ import annotations

from collections.abc import Iterator

from pynetdicom.events import Event

from storage.archive import Archive
from storage.config import Settings

from .status import UNABLE_TO_PROCESS, status


def handle_find(event: Event, archive: Archive, settings: Settings) -> Iterator:
    yield status(UNABLE_TO_PROCESS, "C-FIND not implemented yet"), None
