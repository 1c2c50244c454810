"""Patch: a C-MOVE to a destination we know but cannot reach is A702 with a comment, not A801.

What it changes: ``DIMSEServiceProvider.send_msg``. When the C-MOVE handler noted the association's
destination (:func:`note_destination`) and pynetdicom is about to answer the C-MOVE with A801 "Move
Destination unknown" (what it answers whenever the sub-association cannot be opened), the status
becomes A702 "Refused: Out of resources - unable to perform sub-operations" with an error comment
naming the destination.

Why: A801 sends whoever reads it to check a configuration that is right. A702 is what OsiriX's SCP
answers when it cannot reach a destination, and dcmtk's dcmqrscp when every sub-operation of a move
failed. No speed figure: a behaviour fix.

Upstream: yes, a bug fix pynetdicom could take (its Q/R service class would tell "unknown" from
"could not connect").
"""

from __future__ import annotations

from typing import Any

from pynetdicom import service_class
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_MOVE

from ..status import MOVE_DESTINATION_UNKNOWN, MOVE_OUT_OF_RESOURCES_SUBOPS
from .guard import require, source

_MOVING_TO = "_pacs_moving_to"  # on the association: the known destination of its running C-MOVE


def note_destination(assoc: Any, ae_title: str | None) -> None:
    """The C-MOVE running on ``assoc`` goes to the known ``ae_title`` (None: an unknown one)."""
    setattr(assoc, _MOVING_TO, ae_title)


def check() -> None:
    require("def send_msg(self, primitive" in source(DIMSEServiceProvider), "DIMSE send_msg changed")
    require("0xA801" in source(service_class),
            "the Q/R service no longer answers A801 for an unreachable destination")


def install() -> None:
    original = DIMSEServiceProvider.send_msg

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        known = getattr(self.assoc, _MOVING_TO, None)
        if known and isinstance(primitive, C_MOVE) and primitive.Status == MOVE_DESTINATION_UNKNOWN:
            reply: Any = primitive  # pynetdicom's C_MOVE declares ErrorComment as None only
            reply.Status = MOVE_OUT_OF_RESOURCES_SUBOPS
            reply.ErrorComment = f"could not connect to move destination {known}"[:64]
        original(self, primitive, context_id)

    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
