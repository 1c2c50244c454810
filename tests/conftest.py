"""Shared fixtures: archives on SQLite and PostgreSQL, and a real ``pacs serve`` on free ports."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage.archive import Archive
from storage.config import Settings, load_settings
from tests import softhsm

softhsm.setup_process_token()  # before anything loads the PKCS#11 module (tests/softhsm.py)

ROOT = Path(__file__).resolve().parent.parent
PACS = str(Path(sys.executable).parent / "pacs")


def pacs_command(data: Path, *args: str) -> subprocess.CompletedProcess:
    """``pacs ARGS`` on the data directory ``data``, with no other PACS_* setting from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env["PACS_DATA_DIR"] = str(data)
    return subprocess.run([PACS, *args], env=env, capture_output=True, text=True, timeout=120)


_PORTS_GIVEN: set[int] = set()
_PORT_RANGE = (20000, 32768)  # below Linux's ephemeral range (32768-60999)
# Its own generator: pytest-randomly re-seeds the global one before every test, which would make
# every test (and every test run with the same seed on this machine) draw the same ports.
_PORT_RANDOM = random.Random()


def free_port() -> int:
    """A free TCP port below the ephemeral range, never handed out twice in this test run.

    A port from ``bind(("", 0))`` is ephemeral: until the peer binds it (a C-MOVE destination is
    chosen when its module's server starts and bound by storescp minutes later), any outgoing
    connection may take it as its local port, and the peer fails to listen (seen once in a full
    run). Each xdist worker draws from its own slice of the range.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    index = int(worker) if worker.isdigit() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    span = (_PORT_RANGE[1] - _PORT_RANGE[0]) // count
    low = _PORT_RANGE[0] + index * span
    for _ in range(1000):
        port = _PORT_RANDOM.randrange(low, low + span)
        if port in _PORTS_GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _PORTS_GIVEN.add(port)
        return port
    raise RuntimeError("no free port found")


def wait_for_port(port: int, timeout: float = 30) -> None:
    """Wait until something listens on 127.0.0.1:port (a peer the test started)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run scripts/test, which installs it")
    return path


@pytest.fixture(autouse=True)
def _stock_receive_after_each_test() -> Iterator[None]:
    """A test that installs our pynetdicom patches in the test process (test_transport,
    test_fastpath) leaves pynetdicom's own C-STORE receive behind it: the receive patch spools a
    data set where ``event.dataset_path`` names no file, which an in-process SCU of a later test
    (C-GET's Storage SCP role) reads. Servers under test are separate processes and keep theirs."""
    yield
    from pacs.dimse import receive

    if receive.is_installed():
        receive.uninstall()


# -- archives --------------------------------------------------------------------------------------

def _postgres_url() -> Iterator[str]:
    base = os.environ.get("PACS_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PostgreSQL not started (scripts/test starts it and sets PACS_TEST_POSTGRES_URL)")
    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path) -> Iterator[str]:
    """Each archive test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        yield from _postgres_url()


@pytest.fixture
def settings(tmp_path, db_url) -> Settings:
    return load_settings(env={}, data_dir=tmp_path / "data", database_url=db_url)


@pytest.fixture
def archive(settings) -> Iterator[Archive]:
    a = Archive(settings, create_key=True)
    yield a
    a.close()


# -- a running server ------------------------------------------------------------------------------

@dataclass
class Server:
    """A ``pacs serve`` subprocess on free ports with its own data directory."""

    data_dir: Path
    dicom_port: int
    http_port: int
    env: dict[str, str]
    ae_title: str = "PACS"
    proc: subprocess.Popen | None = None
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def http_url(self) -> str:
        scheme = "https" if self.env.get("PACS_HTTP_TLS") in ("1", "true") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    def pacs(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run a ``pacs`` admin command against this server's data."""
        return subprocess.run([PACS, *args], env=self.env, input=input, capture_output=True,
                              text=True, check=check, timeout=120)

    def archive(self) -> Archive:
        return Archive(load_settings(env=self.env))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


#: (server.log, master key file) of every server this process started: scanned at the end.
SERVER_LOGS: list[tuple[Path, Path]] = []


def postgres_database(name: str) -> str:
    """The URL of database ``name`` on the test PostgreSQL server, created if it is not there yet
    (a server restarted on the same data finds its index again). Skips without PostgreSQL."""
    base = os.environ.get("PACS_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("PostgreSQL not started (scripts/test starts it and sets PACS_TEST_POSTGRES_URL)")
    import sqlalchemy as sa

    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            if c.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).scalar() is None:
                c.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        admin.dispose()
    return base.rsplit("/", 1)[0] + "/" + name


def cloud_env(base: Path) -> dict[str, str]:
    """Settings of a server on PostgreSQL and the test SeaweedFS bucket (issue 16 part 3): its own
    database and key prefix, named after ``base``, and every object in the bucket (no inline blobs)."""
    if not os.environ.get("PACS_TEST_S3_ENDPOINT"):
        pytest.skip("SeaweedFS not started (scripts/test starts it and sets PACS_TEST_S3_*)")
    name = "c_" + hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]
    return {"PACS_DATABASE_URL": postgres_database(name),
            "PACS_BLOB_STORE": f"s3://{os.environ['PACS_TEST_S3_BUCKET']}/{name}",
            "PACS_S3_ENDPOINT": os.environ["PACS_TEST_S3_ENDPOINT"], "PACS_S3_REGION": "us-east-1",
            "PACS_S3_ACCESS_KEY_ID": os.environ["PACS_TEST_S3_ACCESS_KEY_ID"],
            "PACS_S3_SECRET_ACCESS_KEY": os.environ["PACS_TEST_S3_SECRET_ACCESS_KEY"],
            "PACS_INLINE_BLOB_LIMIT": "0"}


#: The back ends a server under test runs on: "local" (SQLite and blob files in its data directory)
#: and "cloud" (PostgreSQL and SeaweedFS: :func:`cloud_env`). A module marked ``cloud`` runs its
#: server tests on both (the ``server_backend`` fixture, parametrized in pytest_generate_tests).
#: ``PACS_TEST_BACKENDS=local`` (or ``cloud``) runs them on one only.
BACKENDS = tuple(os.environ.get("PACS_TEST_BACKENDS", "local,cloud").split(","))


def start_server(base: Path, backend: str = "local", *, new_session: bool = False,
                 **env_overrides: str) -> Server:
    """Start ``pacs serve`` on ``backend``; waits until both the DICOM port and /healthz answer.
    ``new_session``: in a process group of its own (a test may SIGKILL all of it)."""
    data = base / "data"
    dicom_port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_") or k.startswith("PACS_TEST")}
    env.update(PACS_DATA_DIR=str(data), PACS_DICOM_PORT=str(dicom_port), PACS_HTTP_PORT=str(http_port),
               PACS_DICOM_HOST="127.0.0.1", PACS_HTTP_HOST="127.0.0.1", PACS_DIMSE_WORKERS="1",
               PACS_HTTP_WORKERS="2", PACS_SHUTDOWN_GRACE="1")
    if os.environ.get("PACS_TEST_DIMSE_PATCHES"):  # e.g. 0: every server on stock pynetdicom
        env["PACS_DIMSE_PATCHES"] = os.environ["PACS_TEST_DIMSE_PATCHES"]
    if backend == "cloud":
        env.update(cloud_env(base))
    env.update(env_overrides)
    srv = Server(data, dicom_port, http_port, env)
    log = open(base / "server.log", "ab")  # noqa: SIM115 - the server writes to it while it runs
    SERVER_LOGS.append((base / "server.log", data / "master.key"))
    srv.proc = subprocess.Popen([PACS, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                cwd=base, start_new_session=new_session)
    deadline = time.monotonic() + 60
    dicom_up = False  # each probe is an association slot in the SCP until it sees the close:
    while time.monotonic() < deadline:  # probe the DICOM ports once they answered, no more
        if srv.proc.poll() is not None:
            raise RuntimeError(f"pacs serve exited: {(base / 'server.log').read_text()[-3000:]}")
        try:
            if env.get("PACS_DICOM_PLAIN") not in ("0", "false") and not dicom_up:
                with socket.create_connection(("127.0.0.1", dicom_port), timeout=0.5):
                    pass
            if env.get("PACS_DICOM_TLS") in ("1", "true") and not dicom_up:
                with socket.create_connection(("127.0.0.1", int(env["PACS_DICOM_TLS_PORT"])), timeout=0.5):
                    pass
            dicom_up = True
            ctx = ssl._create_unverified_context() if srv.http_url.startswith("https") else None
            urllib.request.urlopen(f"{srv.http_url}/healthz", timeout=1, context=ctx).read()
            return srv
        except OSError:
            time.sleep(0.2)
    srv.stop()
    raise RuntimeError(f"pacs serve did not start: {(base / 'server.log').read_text()[-3000:]}")


def pytest_generate_tests(metafunc) -> None:  # noqa: ANN001
    """Tests of a module marked ``cloud`` run on every back end (their server's, module-scoped)."""
    if "server_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("cloud"):
        metafunc.parametrize("server_backend", BACKENDS, indirect=True, scope="module")


@pytest.fixture(scope="module")
def server_backend(request) -> str:
    """The back end of this module's server: "local" unless parametrized (marker ``cloud``)."""
    return getattr(request, "param", "local")


@pytest.fixture(scope="module")
def server(tmp_path_factory, server_backend) -> Iterator[Server]:
    """One server per test module (and back end). A C-MOVE destination 'MOVESCP' points at
    ``server.extra['move_port']``."""
    move_port = free_port()
    srv = start_server(tmp_path_factory.mktemp("server"), server_backend,
                       PACS_DESTINATIONS=f"MOVESCP=127.0.0.1:{move_port}")
    srv.extra["move_port"] = move_port
    yield srv
    srv.stop()


def index_bytes(server: Server) -> bytes:
    """Everything the server's index holds, as bytes: the SQLite files (database, WAL, -shm), or
    every value of every table of its PostgreSQL database."""
    url = server.env.get("PACS_DATABASE_URL", "")
    if not url.startswith("postgresql"):
        return b"".join(p.read_bytes() for p in server.data_dir.glob("index.sqlite*"))
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    out = []
    try:
        with engine.connect() as c:
            for table in sa.inspect(c).get_table_names():
                for row in c.exec_driver_sql(f'SELECT * FROM "{table}"'):
                    out += [v if isinstance(v, bytes) else str(v).encode() for v in row]
    finally:
        engine.dispose()
    return b"\0".join(out)


def raw_blob(archive: Archive, key: str) -> bytes:
    """The encrypted bytes of a stored blob, wherever it is kept (a file, or a row of the index)."""
    from storage.blobstore import is_inline

    with (archive.inline_blobs if is_inline(key) else archive.blobs).open(key) as fh:
        return fh.read()


# -- figures of the robustness suite (tests/robustness/conftest.py records them) ------------------

def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001
    """Print every test's ``figures`` (kept as user properties, so they survive xdist)."""
    lines = [f"{r.nodeid}: {value}" for reports in terminalreporter.stats.values() for r in reports
             if getattr(r, "when", None) == "call"
             for name, value in getattr(r, "user_properties", ()) if name == "figures"]
    if lines:
        terminalreporter.write_sep("=", "robustness figures")
        for line in lines:
            terminalreporter.write_line(line)


# -- no patient string or secret in any server log (issue 20 part 6) -------------------------------

def _log_leaks() -> list[str]:
    """Which server logs hold a patient string the tests used or their server's master key."""
    from tests.dicomgen import PATIENT_STRINGS

    needles = {s for s in PATIENT_STRINGS if len(s) >= 5}
    leaks = []
    for log, key_file in SERVER_LOGS:
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        secrets = set()
        if key_file.exists():
            secrets = {line.split(":", 1)[1] for line in key_file.read_text().splitlines()
                       if line and not line.startswith("#")}
        found = sorted(s for s in needles if s in text) + ["the master key"] * any(k in text for k in secrets)
        if found:
            leaks.append(f"{log}: {', '.join(found[:5])}")
    return leaks


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001
    leaks = _log_leaks()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        workeroutput["log_leaks"], workeroutput["logs_scanned"] = leaks, len(SERVER_LOGS)
        return
    leaks += getattr(session.config, "_log_leaks", [])
    scanned = len(SERVER_LOGS) + getattr(session.config, "_logs_scanned", 0)
    print(f"\nserver logs scanned for patient strings and master keys: {scanned}; {len(leaks)} leak(s)")
    for leak in leaks:
        print(f"LEAK in a server log: {leak}")
    if leaks:
        session.exitstatus = 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - xdist: a worker's findings
    config = node.config
    config._log_leaks = getattr(config, "_log_leaks", []) + node.workeroutput.get("log_leaks", [])
    config._logs_scanned = getattr(config, "_logs_scanned", 0) + node.workeroutput.get("logs_scanned", 0)
