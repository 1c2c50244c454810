"""A real rsyslog receiver for the audit tests: TLS (RFC 5425, gtls driver) and UDP (RFC 5426).

rsyslogd runs in the foreground with a private configuration (``-n -f CONF -i PIDFILE``) on loopback
ports, and writes each message it takes to a file as ``PRI|VERSION|APP-NAME|MSGID|HOSTNAME|MSG``.
Over TLS it asks for the client's certificate and checks it against the test CA (``x509/certvalid``:
mutual node authentication, as ATNA wants). Debian packages ``rsyslog`` and ``rsyslog-gnutls``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port
from tests.tlscerts import Pki

BOM = "\ufeff"


class Rsyslog:
    def __init__(self, base: Path, pki: Pki):
        if shutil.which("rsyslogd") is None:
            raise RuntimeError("rsyslogd is missing: scripts/test installs rsyslog and rsyslog-gnutls")
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.pki = pki
        self.tls_port, self.udp_port = free_port(), free_port()
        self.out = base / "received.log"
        self.conf = base / "rsyslog.conf"
        self.pidfile = base / "rsyslogd.pid"
        self.proc: subprocess.Popen | None = None
        (base / "work").mkdir(exist_ok=True)
        self.conf.write_text(f"""
global(workDirectory="{base / 'work'}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{pki.ca}"
       defaultNetstreamDriverCertFile="{pki.server_cert}"
       defaultNetstreamDriverKeyFile="{pki.server_key}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="x509/certvalid")
module(load="imudp")
template(name="atna" type="string"
         string="%pri%|%protocol-version%|%app-name%|%msgid%|%hostname%|%msg%\\n")
ruleset(name="atna") {{
  action(type="omfile" file="{self.out}" template="atna")
}}
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}" ruleset="atna")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}" ruleset="atna")
""")

    def start(self) -> None:
        log = open(self.base / "rsyslogd.out", "ab")  # noqa: SIM115 - rsyslogd writes to it while it runs
        self.proc = subprocess.Popen(["rsyslogd", "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.base / 'rsyslogd.out').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.tls_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("rsyslogd did not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.pidfile.exists():
            self.pidfile.unlink()

    def lines(self) -> list[dict[str, str]]:
        """Every message received so far: pri, version, app, msgid, hostname, msg (BOM removed)."""
        if not self.out.exists():
            return []
        out = []
        for line in self.out.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split("|", 5)
            if len(parts) == 6:
                pri, version, app, msgid, host, msg = parts
                out.append({"pri": pri, "version": version, "app": app, "msgid": msgid, "hostname": host,
                            "msg": msg.strip().removeprefix(BOM).strip()})
        return out

    def wait_for(self, predicate, timeout: float = 60) -> list[dict[str, str]]:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while True:
            got = self.lines()
            if predicate(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"not received in {timeout} s; got {len(got)} message(s)")
            time.sleep(0.2)
