"""Patch: a fast C-STORE receive path inside pynetdicom's DUL thread (PS3.7 9.1.1, PS3.8 9.3.5 / Annex E).

pynetdicom spends ~2.5-3 ms of CPU per C-STORE: PDU decode, FSM, DIMSE message decode and
primitive conversion, pydicom validation, two thread hand-offs and a pydicom-encoded response.
Our server's own work (parse, encrypt, index, fsync) is ~1 ms. So on associations where we are
the acceptor, :func:`install` replaces ``DULServiceProvider._read_pdu_data`` (where a PDU is read
off the socket) with a reader that, in Sta6, takes P-DATA-TF PDUs apart itself:

- Each PDV item (PS3.8 9.3.5.1: item length, presentation context ID, message control header with
  bit 0 = command, bit 1 = last fragment) is handled in order. Command fragments of a new message
  are held until the command is complete, then the command set (Implicit VR LE group 0000,
  PS3.7 E.1) is decoded by hand (~10 us; pydicom took ~150 us).
- A C-STORE-RQ with a data set on an accepted *storage* context goes fast: the data set fragments
  are written to a :mod:`pacs.dimse.receive` spool (memory up to ``MEMORY_LIMIT``, then an encrypted
  file: plaintext never on disk) that already starts with the Part 10 preamble and File Meta
  (PS3.10 7.1, the same bytes pynetdicom writes, encoded by hand); on the last fragment the store
  function the server was built with is called synchronously in this thread, and the C-STORE-RSP
  (PS3.7 9.3.1.2) is written to the socket as one P-DATA-TF PDU (fragmented to the peer's maximum
  PDU if it is tiny). No thread hand-off, no pydicom.
- Every other message (C-ECHO, C-FIND, C-MOVE, C-GET, C-CANCEL, N-*, a C-STORE on a non-storage
  context) is handed to pynetdicom unchanged: its PDV items, in order, re-wrapped as a P-DATA-TF
  PDU, through ``_decode_pdu`` and the state machine exactly as the original reader does. The
  reader keeps following message boundaries while passing through, and gives up on the fast path
  for the rest of the association (everything to pynetdicom) at the first thing it does not
  expect there.
- Protocol errors in fast mode (a command PDV inside a data set, a context change mid-message, bad
  item lengths, an undecodable command) are an invalid PDU (Evt19): the state machine sends the
  A-ABORT pynetdicom would. The spool is dropped: nothing is stored.

Which function stores: the one given to :func:`pacs.dimse.server.make_server` as ``fast_store``,
``(function, [args])`` bound when the server is built, as pynetdicom binds a handler's arguments
(``pacs.scp.fast_store``: ``pacs.store.store`` bound to the archive, the function the EVT_C_STORE
handler calls too). A server built without one, or a process where the patches are off, leaves every
C-STORE to pynetdicom. C-STOREs on associations we requested (C-MOVE sub-associations) and C-GET's
are untouched.

Sending from the DUL thread is safe: pynetdicom sends every PDU from this thread as well.

What it changes: ``DULServiceProvider._read_pdu_data``, ``__init__`` and ``run_reactor`` (the reader
is per association and drops a half-received data set when the association ends).
Figures (bench/README.md, "Fast C-STORE receive path"): bare SCP small-1 316 -> 885/s with fsync
(server CPU 1.92 -> 0.48 ms per object), ct-4 163 -> 320/s (4.75 -> 1.70 ms); ``pacs serve`` CPU
per small object 4.2-7.0 -> 1.9-3.6 ms. Upstream: no; it bypasses pynetdicom's DIMSE layer for one
message type (a pynetdicom that decoded C-STOREs lazily and streamed data sets to the handler
would make it unnecessary).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom import dul as _dul
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from ..status import SOP_CLASS_NOT_SUPPORTED, UNABLE_TO_PROCESS
from . import receive
from .guard import require, source

log = logging.getLogger(__name__)

#: (status, error comment) answered for one C-STORE.
StoreOutcome = tuple[int, str]
#: fast(*handler_args, part10, actor, origin) -> StoreOutcome
FastStore = Callable[..., StoreOutcome]

WRONG_SOP_CLASS = "SOP class does not match the presentation context"

#: ``(fast, [args])``: what a server built with a fast C-STORE path calls, as ``fast(*args, ...)``.
FastStoreBinding = tuple[FastStore, list[Any]]

# Reader states.
_IDLE, _CMD, _FAST, _DISCARD, _PASS_DATA, _PASS_ALL = range(6)


# -- command set (PS3.7 E.1: Implicit VR Little Endian, group 0000) ---------------------------------

class CommandError(ValueError):
    """The command set cannot be decoded."""


_UID_ELEMS = {0x0002, 0x1000}


def decode_command(data: bytes | bytearray | memoryview) -> dict[int, int | str]:
    """Decode a command set into {element number: value}; US/UL as int, UIDs/text as str."""
    out: dict[int, int | str] = {}
    mv = memoryview(data)
    pos, n = 0, len(mv)
    while pos < n:
        if n - pos < 8:
            raise CommandError("truncated element header")
        group, elem, length = struct.unpack_from("<HHI", mv, pos)
        pos += 8
        if group != 0 or length > n - pos:
            raise CommandError("not a command element or bad length")
        raw = bytes(mv[pos : pos + length])
        pos += length
        if length == 2 and elem not in _UID_ELEMS:
            out[elem] = raw[0] | raw[1] << 8
        elif length == 4 and elem == 0x0000:
            out[elem] = int.from_bytes(raw, "little")
        else:
            out[elem] = raw.rstrip(b"\0 ").decode("ascii", "replace")
    return out


def _us(elem: int, value: int) -> bytes:
    return struct.pack("<HHIH", 0, elem, 2, value)


def _str(elem: int, value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    if len(raw) % 2:
        raw += pad
    return struct.pack("<HHI", 0, elem, len(raw)) + raw


def encode_store_rsp(msg_id: int, sop_class: str, sop_instance: str, status: int, comment: str = "") -> bytes:
    """A C-STORE-RSP command set (PS3.7 9.3.1.2), group length first."""
    body = b"".join((
        _str(0x0002, sop_class, b"\0"),
        _us(0x0100, 0x8001),
        _us(0x0120, msg_id),
        _us(0x0800, 0x0101),
        _us(0x0900, status),
        _str(0x0902, comment[:64], b" ") if comment else b"",
        _str(0x1000, sop_instance, b"\0"),
    ))
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


# -- Part 10 header (PS3.10 7.1) ---------------------------------------------------------------------

def _meta_elem(elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, "DICM" and File Meta Information as pynetdicom writes them for a received C-STORE."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    if len(version) % 2:
        version += b" "
    rest = b"".join((
        struct.pack("<HH2sHI", 2, 1, b"OB", 0, 2) + b"\0\1",
        _meta_elem(2, b"UI", _ui(sop_class)),
        _meta_elem(3, b"UI", _ui(sop_instance)),
        _meta_elem(0x10, b"UI", _ui(transfer_syntax)),
        _meta_elem(0x12, b"UI", _ui(str(PYNETDICOM_IMPLEMENTATION_UID))),
        _meta_elem(0x13, b"SH", version),
    ))
    return b"\0" * 128 + b"DICM" + _meta_elem(0, b"UL", struct.pack("<I", len(rest))) + rest


def pdata_pdus(context_id: int, command: bytes, max_pdu: int | None) -> bytes:
    """The P-DATA-TF PDU(s) carrying one command set (PS3.8 9.3.5), within the peer's max PDU."""
    room = len(command) if not max_pdu else max(1, max_pdu - 6)
    out = []
    for start in range(0, len(command), room):
        frag = command[start : start + room]
        last = start + room >= len(command)
        item = struct.pack(">IBB", len(frag) + 2, context_id, 0x03 if last else 0x01) + frag
        out.append(struct.pack(">BBI", 0x04, 0, len(item)) + item)
    return b"".join(out)


# -- per-association reader ---------------------------------------------------------------------------

class _Protocol(Exception):
    """A protocol error: abort the association."""


class _Reader:
    """Follows DIMSE message boundaries on one association and serves C-STOREs itself."""

    def __init__(self, dul: Any, fast: FastStore, args: list[Any]) -> None:
        assoc = dul.assoc
        self.dul = dul
        self.fast = fast
        self.args = args
        self.actor = assoc.requestor.ae_title
        self.origin = f"{assoc.requestor.address}:{assoc.requestor.port}"
        self.peer_max = assoc.requestor.maximum_length
        self.storage: dict[int, tuple[str, str]] = {}
        for cx in assoc.accepted_contexts:
            try:
                is_storage = uid_to_service_class(cx.abstract_syntax) is StorageServiceClass
            except Exception:  # unknown UID: not ours to serve fast
                is_storage = False
            if is_storage and cx.as_scp:
                self.storage[cx.context_id] = (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        self.state = _IDLE
        self.cmd = bytearray()
        self.cmd_ctx = 0
        self.held: list[memoryview] = []
        self.spool: Any = None
        self.req: tuple[int, int, str, str] = (0, 0, "", "")  # ctx, message id, class, instance
        self.status: StoreOutcome = (0, "")

    def close(self) -> None:
        """Drop a half-received data set."""
        if self.spool is not None:
            self.spool.discard()
            self.spool = None

    # One P-DATA-TF PDU's variable field (everything after the 6-byte header).
    def feed(self, body: bytearray) -> list[memoryview]:
        """Consume one PDU; return the PDV items (raw, with their length) meant for pynetdicom."""
        out: list[memoryview] = []
        mv = memoryview(body)
        pos, n = 0, len(body)
        while pos < n:
            if n - pos < 6:
                raise _Protocol("truncated PDV item")
            length = int.from_bytes(mv[pos : pos + 4], "big")
            if length < 2 or length > n - pos - 4:
                raise _Protocol("bad PDV item length")
            item = mv[pos : pos + 4 + length]
            ctx, mch = body[pos + 4], body[pos + 5]
            pos += 4 + length
            self._pdv(ctx, mch, item, out)
        return out

    def _pdv(self, ctx: int, mch: int, item: memoryview, out: list[memoryview]) -> None:
        is_cmd, last = mch & 1, mch & 2
        state = self.state
        if state in (_FAST, _DISCARD):
            if is_cmd or ctx != self.req[0]:
                raise _Protocol("command or context change inside a data set")
            if state == _FAST:
                try:
                    self.spool.write(item[6:])
                except OSError as exc:  # the spool's disk is full or failing: refuse this one
                    self._drop_spool(exc)
            if last:
                self._finish(out)
            return
        if state == _PASS_ALL:
            out.append(item)
            return
        if state == _PASS_DATA:
            out.append(item)
            if is_cmd:  # pynetdicom decides what this means; we stop following
                self.state = _PASS_ALL
            elif last:
                self.state = _IDLE
            return
        # _IDLE or _CMD: a command set is expected
        if not is_cmd:
            raise _Protocol("data set without a command")
        if state == _IDLE:
            self.cmd = bytearray()
            self.cmd_ctx = ctx
            self.held = []
            self.state = _CMD
        elif ctx != self.cmd_ctx:
            raise _Protocol("context change inside a command")
        self.cmd += item[6:]
        self.held.append(item)
        if last:
            self._command(out)

    def _drop_spool(self, exc: OSError) -> None:
        """Stop spooling the data set being received; it will be answered with a failure."""
        self.spool.discard()
        self.spool = None
        self.state = _DISCARD
        self.status = receive.refusal(exc, self.actor)

    def _command(self, out: list[memoryview]) -> None:
        try:
            cs = decode_command(self.cmd)
        except CommandError as exc:
            raise _Protocol(str(exc)) from None
        has_data = cs.get(0x0800, 0x0101) != 0x0101
        cx = self.storage.get(self.cmd_ctx)
        if cs.get(0x0100) == 0x0001 and has_data and cx is not None and isinstance(cs.get(0x1000), str):
            sop_class, sop_instance = str(cs.get(0x0002, "")), str(cs[0x1000])
            msg_id = int(cs.get(0x0110, 0))
            self.req = (self.cmd_ctx, msg_id, sop_class, sop_instance)
            self.held = []
            if sop_class != cx[0]:
                self.state = _DISCARD
                self.status = (SOP_CLASS_NOT_SUPPORTED, WRONG_SOP_CLASS)
                return
            self.spool = receive.new_spool()
            self.spool.write(part10_header(sop_class, sop_instance, cx[1]))
            self.state = _FAST
            return
        out.extend(self.held)
        self.held = []
        self.state = _PASS_DATA if has_data else _IDLE

    def _finish(self, out: list[memoryview]) -> None:
        """The data set is complete: store it and answer."""
        if out:  # a message for pynetdicom preceded this one in the same PDU: keep the order
            self.dul._pacs_forward(out)
            out.clear()
        ctx, msg_id, sop_class, sop_instance = self.req
        if self.state == _FAST:
            spool, self.spool = self.spool, None
            # pynetdicom's association thread aborts when the DUL's idle timer (network timeout)
            # expires; a long store here is not idleness: hold the timer (the reactor restarts it).
            self.dul._idle_timer.restart()
            self.dul._idle_timer.stop()
            try:
                with spool.open() as source:
                    code, comment = self._store(source)
            except OSError as exc:  # the spool's last segment could not be written (a full disk)
                code, comment = receive.refusal(exc, self.actor)
            finally:
                spool.discard()
        else:
            code, comment = self.status
        self.state = _IDLE
        rsp = encode_store_rsp(msg_id, sop_class, sop_instance, code, comment)
        self.dul.socket.send(pdata_pdus(ctx, rsp, self.peer_max))

    def _store(self, source: BinaryIO) -> StoreOutcome:
        try:
            return self.fast(*self.args, source, self.actor, self.origin)
        except Exception:  # the registered function should not raise; never a traceback to the peer
            log.exception("fast C-STORE from %s failed", self.actor)
            return (UNABLE_TO_PROCESS, "internal error; see the server log")


def _reader_for(dul: Any) -> _Reader | None:
    """The fast reader for this association, or None (pynetdicom does everything)."""
    assoc = dul.assoc
    if not assoc.is_acceptor:
        return None
    binding: FastStoreBinding | None = getattr(assoc._server, "fast_store", None)
    if binding is None:
        return None
    fast, args = binding
    return _Reader(dul, fast, list(args))


# -- the DUL patch ------------------------------------------------------------------------------------

def _read_pdu_data(self: Any) -> None:
    """``DULServiceProvider._read_pdu_data`` with the fast path (same events as the original)."""
    sock = self.socket
    try:
        head = sock.recv(6)
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")
        return
    if len(head) != 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, pdu_length = head[0], int.from_bytes(head[2:6], "big")
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        log.error("Unknown PDU type received '0x%02X'", pdu_type)
        self.event_queue.put("Evt19")
        return
    try:
        body = sock.recv(pdu_length)
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")
        return
    if len(body) != pdu_length:
        log.error("The received PDU is shorter than expected")
        self.event_queue.put("Evt17")
        return

    if pdu_type == 0x04 and self.state_machine.current_state == "Sta6":
        reader = self._pacs_fast
        if reader is None:
            reader = self._pacs_fast = _reader_for(self) or False
        if reader:
            try:
                items = reader.feed(body)
            except _Protocol as exc:
                log.warning("DIMSE protocol error from %s: %s; aborting", reader.actor, exc)
                reader.close()
                reader.state = _PASS_ALL
                self.event_queue.put("Evt19")  # AA-8: A-ABORT, as pynetdicom does for an invalid PDU
                return
            if items:
                self._pacs_forward(items)
            return

    _decode(self, head + body)


def _decode(dul: Any, bytestream: bytearray | bytes) -> None:
    """What the original reader does with a complete PDU."""
    try:
        pdu, event = dul._decode_pdu(bytearray(bytestream))
        dul.event_queue.put(event)
    except Exception:  # as pynetdicom: an undecodable PDU is Evt19
        log.error("Unable to decode the received PDU data")
        dul.event_queue.put("Evt19")
        return
    dul._recv_pdu.put(pdu)


def _forward(self: Any, items: list[memoryview]) -> None:
    """Hand PDV items to pynetdicom as one P-DATA-TF PDU."""
    size = sum(len(i) for i in items)
    _decode(self, b"".join((struct.pack(">BBI", 0x04, 0, size), *items)))


_INSTALLED: list[bool] = [False]


def is_installed() -> bool:
    """True once the DUL's PDU reader is ours (this process)."""
    return _INSTALLED[0]


def check() -> None:
    cls = _dul.DULServiceProvider
    src = source(cls._read_pdu_data) + source(_dul)
    for needle in ("self._decode_pdu(bytestream)", "self._recv_pdu.put(pdu)", "self.socket.recv(6)",
                   "self._idle_timer.restart()", "self._idle_timer = Timer("):
        require(needle in src, f"the DUL's PDU reader changed ({needle!r})")
    from pynetdicom import association

    require("self._server" in source(association.Association.__init__), "Association has no _server")


def install() -> None:
    cls = _dul.DULServiceProvider
    orig_init, orig_run = cls.__init__, cls.run_reactor

    def __init__(self: Any, assoc: Any) -> None:
        orig_init(self, assoc)
        self._pacs_fast = None

    def run_reactor(self: Any) -> None:
        try:
            orig_run(self)
        finally:
            if self._pacs_fast:
                self._pacs_fast.close()

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.run_reactor = run_reactor  # type: ignore[method-assign]
    cls._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]
    cls._pacs_forward = _forward  # type: ignore[attr-defined]
    _INSTALLED[0] = True
