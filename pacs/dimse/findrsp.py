"""Patch: a pending C-FIND response is one P-DATA-TF PDU, its command set encoded once per query.

What it changes: ``DIMSEServiceProvider.send_msg`` for a C-FIND response with status Pending
(0xFF00, 0xFF01) and an identifier. pynetdicom builds a command Dataset per response, encodes it
with pydicom twice (once to measure the group length, once to send) and queues the command and the
identifier as two P-DATA-TF PDUs, each a trip through the DUL's state machine and a socket write.
Here the command set's bytes are taken from pynetdicom's own encoding of the first pending
response of the query (the command set of every pending response of one query is the same: same
SOP class, message ID, status, no optional fields) and kept on the DIMSE provider; each response
is then one P_DATA primitive holding two PDVs, the command's last fragment and the identifier's
(PS3.8 9.3.5: a P-DATA-TF carries one or more PDV items; PS3.8 E.2: each PDV's message control
header says command or data set, and last fragment), sent as one PDU.

Falls back to pynetdicom's own path for anything else: other messages and statuses, a response
with an error comment or other optional fields, one that does not fit in the peer's maximum PDU
length (then pynetdicom fragments it), and when a handler is bound to ``EVT_DIMSE_SENT`` (that
event carries the DIMSE message object this path does not build).

And ``service_class.encode`` (what the Q/R service encodes each identifier with) sends a
:class:`PreEncoded` identifier as the bytes it brings (:mod:`pacs.find_encoding`; Little Endian
transfer syntaxes, not deflated), building and encoding its pydicom Dataset only otherwise.

Why: C-FIND with many matches spent most of its time per pending response in pynetdicom's
encoding and queueing, and in building and writing a pydicom Dataset per match. Figure: see bench/README.md ("C-FIND pending responses").

Upstream: yes in spirit (caching an identical command set and packing small messages into one PDU
are plain improvements).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt, service_class
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

from .guard import require, source

_PENDING = (0xFF00, 0xFF01)
#: Optional response fields; a pending response with any of them set takes pynetdicom's path.
_OPTIONAL = tuple(C_FIND.STATUS_OPTIONAL_KEYWORDS)
_CACHE = "_pacs_find_rsp_command"  # on the DIMSE provider: (key, encoded command set)
_INSTALLED: list[bool] = [False]


def is_installed() -> bool:
    """True once :class:`PreEncoded` identifiers are sent as their bytes (this process)."""
    return _INSTALLED[0]


class PreEncoded(Dataset):
    """A C-FIND response identifier that brings its own encoding.

    ``encoded(implicit_vr)`` returns its Little Endian bytes (None: not possible, then ``build()``
    returns the pydicom Dataset to encode). As a Dataset it is empty: only the patched ``encode``
    reads it, so yield one only while :func:`is_installed`.
    """

    def __init__(self, build: Callable[[], Dataset], encoded: Callable[[bool], bytes | None]):
        super().__init__()
        object.__setattr__(self, "_pacs_build", build)
        object.__setattr__(self, "_pacs_encoded", encoded)


def _encode_identifier(original: Callable[..., Any]) -> Callable[..., Any]:
    def encode(ds: Any, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> Any:
        if isinstance(ds, PreEncoded):
            if is_little_endian and not deflated:
                raw = object.__getattribute__(ds, "_pacs_encoded")(is_implicit_vr)
                if raw is not None:
                    return raw
            ds = object.__getattribute__(ds, "_pacs_build")()
        return original(ds, is_implicit_vr, is_little_endian, deflated)

    return encode


def command_set(primitive: C_FIND) -> bytes:
    """The command set of a C-FIND response as pynetdicom encodes it (Implicit VR Little Endian)."""
    msg = C_FIND_RSP()
    msg.primitive_to_message(primitive)
    return bytes(encode(msg.command_set, True, True))  # type: ignore[arg-type]


def _fast(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> P_DATA | None:
    """The one-PDU form of ``primitive``, or None when pynetdicom's own path must send it."""
    if not isinstance(primitive, C_FIND) or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.Status not in _PENDING or primitive.Identifier is None:
        return None
    if any(getattr(primitive, name, None) is not None for name in _OPTIONAL):
        return None
    if self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
        return None
    key = (primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo, primitive.Status)
    cached = getattr(self, _CACHE, None)
    if cached is None or cached[0] != key:
        cached = (key, command_set(primitive))
        setattr(self, _CACHE, cached)
    command = cached[1]
    identifier = primitive.Identifier.getvalue()
    max_pdu = self.maximum_pdu_size
    if not identifier or (max_pdu and 12 + len(command) + len(identifier) > max_pdu):
        return None
    pdata = P_DATA()
    # pynetdicom's setter wants lists at run time, typed as tuples: hence the ignore
    pdata.presentation_data_value_list = [[context_id, b"\x03" + command],  # type: ignore[list-item]
                                          [context_id, b"\x02" + identifier]]  # type: ignore[list-item]
    return pdata


def check() -> None:
    src = source(DIMSEServiceProvider.send_msg)
    for needle in ("dimse_msg.primitive_to_message(primitive)", "evt.EVT_DIMSE_SENT",
                   "dimse_msg.encode_msg(context_id, self.maximum_pdu_size)", "self.dul.send_pdu(pdata)"):
        require(needle in src, f"DIMSE send_msg changed ({needle!r})")
    require("b\"\\x03\" + next(cmd_fragments)" in source(C_FIND_RSP.encode_msg),
            "DIMSE message encoder changed")
    require(isinstance(C_FIND_RSP().command_set, Dataset), "C_FIND_RSP has no command_set")
    require(bool(getattr(C_FIND, "STATUS_OPTIONAL_KEYWORDS", None)), "C_FIND has no optional keywords")
    require(getattr(service_class, "encode", None) is encode, "the Q/R service's encode changed")
    require("enc = encode(\n                    dataset," in source(service_class.ServiceClass._c_find_scp),
            "the C-FIND service encodes identifiers otherwise")


def install() -> None:
    original = DIMSEServiceProvider.send_msg

    def send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
        pdata = _fast(self, primitive, context_id)
        if pdata is None:
            original(self, primitive, context_id)
        else:
            self.dul.send_pdu(pdata)

    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]
    service_class.encode = _encode_identifier(service_class.encode)  # type: ignore[attr-defined]
    _INSTALLED[0] = True
