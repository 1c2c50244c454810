"""Patch: P-DATA-TF PDUs queued one after another leave in one socket write.

What it changes: the state machine's action DT-1 (Sta6 + Evt9, "send P-DATA-TF PDU", PS3.8 9.2),
``fsm.ACTIONS["DT-1"]``. pynetdicom's takes one P-DATA primitive off the DUL's queue, encodes
it and writes it: one system call (and over TLS one record or more) per PDU, however many wait
behind it. Here DT-1 also takes the P-DATA primitives queued right behind the first (up to
:data:`MAX_PDUS` PDUs and :data:`MAX_BYTES`), and writes all their PDUs at once, in order.
Nothing else changes: each is still encoded by pynetdicom's ``P_DATA_TF``, ``EVT_PDU_SENT`` is
still triggered for each, and the state stays Sta6 as DT-1 leaves it; the primitives taken this
way had no event queued yet (the reactor queues Evt9 for the queue's head only).

Why: the association thread queues pending C-FIND responses (and C-GET/C-MOVE data PDUs) faster
than the DUL thread writes them one by one. Figure: bench/README.md (branch ``speed``).

Upstream: yes (coalescing queued writes is a plain improvement).
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import evt, fsm
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from .guard import require, source

log = logging.getLogger(__name__)

#: At most this many PDUs, and about this many bytes, per write.
MAX_PDUS = 32
MAX_BYTES = 1 << 20


def _dt_1(dul: Any) -> str:
    """DT-1, for the first queued P-DATA and those right behind it."""
    queue = dul.to_provider_queue
    pdus = [P_DATA_TF(queue.get(False))]
    data = [pdus[0].encode()]
    size = len(data[0])
    while len(pdus) < MAX_PDUS and size < MAX_BYTES:
        with queue.mutex:
            head = queue.queue[0] if queue.queue else None
        if not isinstance(head, P_DATA):
            break
        pdu = P_DATA_TF(queue.get(False))  # only this thread takes from the queue
        pdus.append(pdu)
        data.append(pdu.encode())
        size += len(data[-1])
    if dul.socket is None:
        log.warning("Attempted to send data over closed connection")
        return "Sta6"
    dul.socket.send(b"".join(data) if len(data) > 1 else data[0])
    for pdu in pdus:
        evt.trigger(dul.assoc, evt.EVT_PDU_SENT, {"pdu": pdu})
    return "Sta6"


def check() -> None:
    require(fsm.ACTIONS.get("DT-1", (None, None, None))[1] is fsm.DT_1, "fsm.ACTIONS['DT-1'] changed")
    src = source(fsm.DT_1)
    for needle in ("dul.to_provider_queue.get(False)", "dul._send(P_DATA_TF(primitive))", 'return "Sta6"'):
        require(needle in src, f"DT-1 changed ({needle!r})")
    from pynetdicom import dul as _dul

    send = source(_dul.DULServiceProvider._send)
    require("self.socket.send(pdu.encode())" in send and "evt.EVT_PDU_SENT" in send, "DUL _send changed")


def install() -> None:
    description, _, state = fsm.ACTIONS["DT-1"]
    fsm.ACTIONS["DT-1"] = (description, _dt_1, state)
