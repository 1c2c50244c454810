"""A private PostgreSQL server for the benchmarks, on loopback, with fsync ON (the default).

``shared()`` starts one server per bench run (``initdb`` + ``pg_ctl start`` from Debian's
``postgresql`` package, as ``scripts/test`` does, but without ``fsync=off``: a benchmark measures
what a site would run) and stops it at exit; ``database(name)`` gives each run its own fresh
database on it. As root, the server runs as the ``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


def _pgbin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not found:
        raise SystemExit("PostgreSQL not installed (Debian package postgresql; scripts/test installs it)")
    return Path(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """One throw-away PostgreSQL cluster in a temporary directory."""

    def __init__(self, base: Path) -> None:
        self.base, self.bin, self.port = base, _pgbin(), _free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as, *cmd], check=True, capture_output=True)

    def start(self) -> Postgres:
        if self._as:
            shutil.chown(self.base, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.base / "data"), "-U", "postgres",
                  "-A", "trust")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "-l",
                  str(self.base / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1", "start")
        return self

    def database(self, name: str = "") -> str:
        """Create a fresh database; return its SQLAlchemy URL (psycopg 3)."""
        name = name or "bench_" + uuid.uuid4().hex[:12]
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", name)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "-m",
                        "fast", "stop"], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


_SHARED: Postgres | None = None


def shared() -> Postgres:
    """The bench run's PostgreSQL server, started on first use, stopped at exit."""
    global _SHARED
    if _SHARED is None:
        base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        os.chmod(base, 0o755)
        _SHARED = Postgres(base)
        atexit.register(_SHARED.stop)  # also after a failed start: removes the directory
        _SHARED.start()
    return _SHARED
