"""The audit sender: audit events to the audit record repository over syslog (IHE ATNA ITI-20).

``pacs serve`` starts one sender process (:func:`start`) beside gunicorn and the SCP workers; with
several nodes on one database each starts one, and the lease in ``audit_delivery`` lets one of them
send (storage/atna/queue.py). The sender reads the events after the delivered-up-to marker in id
order, builds each one's PS3.15 A.5 message (storage/atna/messages.py), frames it as RFC 5424
syslog and sends the batch:

* ``tls://`` (RFC 5425): TLS 1.2+ with the BCP 195 suites (pacs/tls.py), the repository's
  certificate checked against ``tls_ca_file`` and its host name, ours presented when
  ``tls_cert_file`` is set; octet-counted framing. Syslog over TLS has no acknowledgement, so a
  batch counts as delivered once the repository's TCP has acknowledged every byte (the socket's
  send queue is empty, ``TIOCOUTQ``), and a connection the repository closed (it restarted) is
  noticed before the next batch is written, not after.
* ``udp://`` (RFC 5426): one datagram per message on a connected socket; a repository that is not
  listening answers ICMP port unreachable, seen as a refused send, and the batch waits. A datagram
  lost on the way is lost: UDP has no acknowledgement at all (use tls:// for that).

What "delivered" can mean: RFC 5425 has no acknowledgement by the application, so a repository that
is killed after its TCP took a batch and before it wrote it loses that batch (rsyslog's RELP would
close that gap, but audit record repositories speak RFC 5425, not RELP). A repository that is down
before the batch, or closes the connection while we send, loses nothing.

Only when a batch went out does the marker move; else the sender waits (1 s, doubling up to 60 s)
and tries again, so a repository that is down loses nothing, and events arrive in order.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime
from typing import Any

from storage.atna import messages, syslog
from storage.atna.queue import DeliveryQueue
from storage.atna.target import Repository, parse
from storage.config import Settings

from . import tls

log = logging.getLogger("pacs.atna")

BATCH = 200
POLL_SECONDS = 0.5  # how often the audit table is asked for new events while idle
MAX_BACKOFF = 60.0
CERT_VERDICT_WAIT = 0.2  # seconds to wait after a handshake for the repository's verdict on our certificate
ACK_TIMEOUT = 10.0  # seconds the repository's TCP may take to acknowledge a batch
UDP_MAX = 65000


class Unavailable(OSError):
    """The repository did not take the batch (down, refused, TLS failure, not acknowledged)."""


class TlsTransport:
    """RFC 5425: syslog over TLS, octet-counted, one connection kept open."""

    def __init__(self, repo: Repository, settings: Settings):
        self.repo = repo
        self._ctx = tls.client_context(settings)
        self._timeout = settings.connect_timeout
        self._sock: ssl.SSLSocket | None = None

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.repo.host, self.repo.port), timeout=self._timeout)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._ctx.wrap_socket(raw, server_hostname=self.repo.host)
        except BaseException:
            raw.close()
            raise
        # TLS 1.3: the repository judges our certificate after our side of the handshake is done;
        # a refusal is an alert that follows at once. Wait for it before anything is sent.
        end = time.monotonic() + CERT_VERDICT_WAIT
        while (left := end - time.monotonic()) > 0:
            select.select([sock], [], [], left)  # session tickets come first, a refusal after them
            if not self._alive(sock):
                sock.close()
                raise Unavailable("the repository closed the connection after the handshake "
                                  "(our certificate refused?)")
        return sock

    def _alive(self, sock: ssl.SSLSocket) -> bool:
        """False when the repository closed (or reset) the connection since the last batch."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            sock.setblocking(False)
            try:
                return sock.recv(4096) != b""  # a syslog receiver sends nothing; EOF: closed
            finally:
                sock.setblocking(True)
                sock.settimeout(self._timeout)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        except OSError:
            return False

    def send(self, frames: list[bytes]) -> None:
        if self._sock is not None and not self._alive(self._sock):
            self.close()
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.sendall(b"".join(syslog.octet_counted(f) for f in frames))
            self._wait_acknowledged(self._sock)
            if not self._alive(self._sock):  # taken by its TCP, then closed: send the batch again
                raise Unavailable("the repository closed the connection during the batch")
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise Unavailable(str(exc)) from None

    def _wait_acknowledged(self, sock: socket.socket) -> None:
        deadline = time.monotonic() + ACK_TIMEOUT
        buf = bytearray(4)
        while True:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
            if struct.unpack("i", buf)[0] == 0:
                return
            if time.monotonic() > deadline:
                raise Unavailable("the repository did not acknowledge the batch")
            time.sleep(0.005)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class UdpTransport:
    """RFC 5426: one message per datagram."""

    def __init__(self, repo: Repository, settings: Settings):
        self.repo = repo
        self._sock: socket.socket | None = None

    def send(self, frames: list[bytes]) -> None:
        try:
            if self._sock is None:
                info = socket.getaddrinfo(self.repo.host, self.repo.port, type=socket.SOCK_DGRAM)[0]
                self._sock = socket.socket(info[0], socket.SOCK_DGRAM)
                self._sock.connect(info[4])
            self._pending_error()
            for frame in frames:
                self._sock.send(frame[:UDP_MAX])
            time.sleep(0.01)  # an ICMP port unreachable for the batch arrives at once on a LAN
            self._pending_error()
        except OSError as exc:
            self.close()
            raise Unavailable(str(exc)) from None

    def _pending_error(self) -> None:
        assert self._sock is not None
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise ConnectionRefusedError(err, os.strerror(err))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def transport(repo: Repository, settings: Settings) -> TlsTransport | UdpTransport:
    return TlsTransport(repo, settings) if repo.scheme == "tls" else UdpTransport(repo, settings)


def check(settings: Settings) -> None:
    """At start: the TLS context for the repository loads (tls.CannotUseTLS otherwise)."""
    if settings.audit_repository and parse(settings.audit_repository).scheme == "tls":
        try:
            tls.client_context(settings)
        except ssl.SSLError as exc:
            raise tls.CannotUseTLS(f"tls_ca_file / tls_cert_file for audit_repository do not load: "
                                   f"{exc.reason or exc}") from None
        except OSError as exc:
            raise tls.CannotUseTLS(f"tls_ca_file for audit_repository: {exc.strerror or exc}") from None


class Sender:
    """Delivers the audit table to one repository, in order, until :meth:`stop`."""

    def __init__(self, settings: Settings, read_sessions: Any, write_sessions: Any, *,
                 start_after: datetime | None = None, gap_wait: float = 30.0, owner: str = ""):
        self.repo = parse(settings.audit_repository)
        hostname = socket.gethostname()
        self.source = messages.AuditSource(settings.audit_source_id or settings.ae_title,
                                           settings.ae_title, hostname)
        self.queue = DeliveryQueue(read_sessions, write_sessions, self.repo.name,
                                   owner or f"{hostname}:{os.getpid()}", gap_wait=gap_wait)
        self.transport = transport(self.repo, settings)
        self._read = read_sessions
        self._start_after = start_after
        self._hostname = hostname
        self._stopping = False
        self._down_since: float | None = None
        self.holding = False  # this sender holds the lease (else another node sends)

    def stop(self) -> None:
        self._stopping = True

    def frames(self, rows: list[Any]) -> list[bytes]:
        classes = self._sop_classes([r.detail for r in rows if r.action == "store"])
        return [syslog.message(messages.build(r, self.source, classes.get(r.detail, "")), at=r.at,
                               hostname=self._hostname, app_name="pacs", procid=str(os.getpid()))
                for r in rows]

    def _sop_classes(self, sop_uids: list[str]) -> dict[str, str]:
        """SOP Class UIDs of stored instances (by SOP Instance UID) still in the index, one query."""
        if not sop_uids:
            return {}
        from sqlalchemy import select

        from storage.index.models import Instance

        with self._read() as s:
            return dict(s.execute(select(Instance.sop_uid, Instance.sop_class_uid)
                                  .where(Instance.sop_uid.in_(sorted(set(sop_uids))))).all())

    def step(self) -> int:
        """Deliver one batch; the number of events delivered (0: none pending, or not our turn)."""
        self.holding = self.queue.claim(self._start_after)
        if not self.holding:
            return 0
        rows = self.queue.pending(BATCH)
        if not rows:
            return 0
        self.transport.send(self.frames(rows))  # Unavailable: the marker stays
        if self._down_since is not None:
            log.warning("audit repository %s reachable again after %.0f s", self.repo.name,
                        time.monotonic() - self._down_since)
            self._down_since = None
        if not self.queue.delivered(rows[-1].id):
            log.warning("audit delivery: another sender took over")
        return len(rows)

    def run(self, parent: int | None = None) -> None:
        backoff = 1.0
        while not self._stopping:
            if parent is not None and os.getppid() != parent:
                return
            try:
                sent = self.step()
                backoff = 1.0
            except Unavailable as exc:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("audit repository %s unavailable (%s); events wait in the index",
                                self.repo.name, exc)
                self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            except Exception:  # the database away for a moment: try again, never exit
                log.exception("audit delivery failed; trying again")
                self._sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            if not self.holding:  # another node sends: ask again now and then
                self._sleep(self.queue.lease.total_seconds() / 3)
            elif sent < BATCH:
                self._sleep(POLL_SECONDS)
        self.drain()

    def drain(self, seconds: float = 5.0) -> None:
        """On stop: what is pending (the Application Stop) goes out if the repository takes it."""
        deadline = time.monotonic() + seconds
        with contextlib.suppress(Exception):
            while time.monotonic() < deadline and self.step():
                pass
        with contextlib.suppress(Exception):
            self.queue.release()
        self.transport.close()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < end:
            time.sleep(min(0.1, end - time.monotonic()))


def start(settings: Settings, env: dict[str, str], since: datetime) -> subprocess.Popen[bytes] | None:
    """The sender process of ``pacs serve`` (None when no repository is set)."""
    if not settings.audit_repository:
        return None
    cmd = [sys.executable, "-c", "from pacs.atna import main; main()", since.isoformat(), str(os.getpid())]
    return subprocess.Popen(cmd, env=env)


def main() -> None:
    """Entry of the sender process: ``python -c ... <since ISO time> <parent pid>``."""
    from storage.archive import Archive
    from storage.config import load_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    since, parent = datetime.fromisoformat(sys.argv[1]), int(sys.argv[2])
    settings = load_settings()
    archive = Archive(settings)
    sender = Sender(settings, archive.sessions, archive.write_sessions, start_after=since)
    signal.signal(signal.SIGTERM, lambda *_: sender.stop())
    signal.signal(signal.SIGINT, lambda *_: sender.stop())
    try:
        sender.run(parent)
    finally:
        archive.close()


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def record_lifecycle(settings: Settings, action: str, detail: str) -> None:
    """The Application Start / Stop of ``pacs serve`` in the audit trail (PS3.15 A.5.3.1)."""
    from storage.archive import Archive

    try:
        archive = Archive(settings)
    except Exception:
        log.exception("could not record %s in the audit trail", action)
        return
    try:
        archive.audit.record(action, actor="pacs serve", source=socket.gethostname(), detail=detail)
    finally:
        archive.close()
