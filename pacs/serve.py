"""``pacs serve``: the DIMSE SCP and the DICOMweb application (gunicorn) on one archive.

Start-up:

1. bind the DICOM and HTTP ports and check the data directory (a port taken or a directory that
   takes no file: a one-line error, exit 1, nothing started);
2. open the archive once here (creates the master key on first start, upgrades the schema, refuses
   a wrong key, sweeps orphan blobs);
3. start gunicorn on the bound HTTP socket (``--bind fd://N``), the retention schedule (a spawned
   process) and ``dimse_workers`` SCP processes accepting on the bound DICOM socket. Each process
   opens its own archive after it starts.

The parent supervises: a dead SCP worker or a dead gunicorn is started again on the same socket,
and SIGTERM/SIGINT stops everything.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom

from storage import metrics
from storage.archive import Archive
from storage.config import Settings
from storage.hsm import log_in
from storage.keys import uses_token

from . import atna, tls

log = logging.getLogger("pacs.serve")

#: A gunicorn that exits is started again, at most once in this many seconds.
HTTP_RESTART_INTERVAL = 5.0


class CannotStart(Exception):
    """Something ``pacs serve`` needs is not there: a port is taken, the data directory unusable."""


def bind(kind: str, setting: str, host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or CannotStart naming the setting that moves it."""
    from .dimse.server import listen

    try:
        return listen(host, port)
    except OSError as exc:
        raise CannotStart(
            f"cannot listen for {kind} on {host}:{port}: {exc.strerror}. Is another PACS or "
            f"pacs serve running? Choose another port with {setting} in the configuration or "
            f"PACS_{setting.upper()}") from None


def check_data_dir(settings: Settings) -> None:
    """The data directory exists (made if missing) and takes a new file; else CannotStart."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CannotStart(f"the data directory {settings.data_dir} cannot be used: "
                          f"{exc.strerror or exc}. Set data_dir in the configuration or "
                          "PACS_DATA_DIR") from None


def prepare(settings: Settings) -> None:
    """Create or check keys and schema; sweep orphans. Raises KeyUnavailable on a wrong key."""
    from storage import blobstores
    from storage.errors import BlobStoreMisconfigured, BlobStoreUnavailable

    store = blobstores.build(settings)
    try:  # a wrong bucket, bad credentials, k-of-n impossible: refused before anything is written
        store.check()
    except (BlobStoreMisconfigured, BlobStoreUnavailable) as exc:
        raise CannotStart(str(exc)) from None
    finally:  # no thread of it may outlive this: the DIMSE workers are forked next
        if callable(close := getattr(store, "close", None)):
            close()
    from storage import cluster

    archive = Archive(settings, create_key=True)
    try:
        check_providers(archive, settings)
        # none of this node's processes runs yet: what it left unindexed is an orphan now
        cluster.sweep_own_orphans(archive, cluster.node_tag(settings))
        with cluster.job_lock(archive.write_engine, "orphan-sweep") as mine:  # one node sweeps
            if mine:
                archive.sweep_orphans()
    finally:
        archive.close()


def check_providers(archive: Archive, settings: Settings) -> None:
    """Every provider named in ``[providers.NAME]`` is registered, else CannotStart (a typo must not
    leave a provider's modalities rejected unnoticed); a removed one is only warned about (its
    associations are rejected, pacs/tenancy.py)."""
    from storage.providers import list_providers

    known = {p.name: p for p in list_providers(archive, include_deleted=True)}
    named = {*settings.provider_aets.values(), *settings.provider_certificates.values()}
    unknown = sorted(n for n in named if n not in known)
    if unknown:
        raise CannotStart(f"providers: {', '.join(unknown)} not registered; run "
                          "'pacs provider add NAME' first (or fix the name in [providers.NAME])")
    for name in sorted(n for n in named if known[n].deleted_at is not None):
        log.warning("providers: %s was removed; its calling AE titles and certificates are "
                    "rejected", name)


def _child_env(settings: Settings, config_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if config_path:
        env["PACS_CONFIG"] = str(Path(config_path).absolute())
    env["PACS_DATA_DIR"] = str(settings.data_dir)
    if settings.master_key_file and not settings.master_key:
        env["PACS_MASTER_KEY_FILE"] = str(settings.master_key_file)
    return env


def start_http(settings: Settings, config_path: str | None, listen_socket: socket.socket) -> subprocess.Popen[bytes]:
    """Gunicorn serving the DICOMweb app on ``listen_socket`` (bound here, inherited by gunicorn)."""
    env = _child_env(settings, config_path)
    fd = listen_socket.fileno()
    cmd = [sys.executable, "-m", "gunicorn", "--workers", str(settings.http_workers),
           "--bind", f"fd://{fd}", "--threads", "4", *tls.gunicorn_args(settings),
           "--config", "python:pacs.gunicorn_hooks",  # uploads spread over the workers
           "--timeout", "300", "--graceful-timeout", str(int(settings.shutdown_grace)), "--log-level", "warning",
           "dicomweb:create_app()"]
    return subprocess.Popen(cmd, env=env, pass_fds=(fd,))


# A few lines of stdlib Python: it sleeps most of the day in ~10 MB, and the retention run itself is a
# short-lived `pacs retention apply` (the whole archive code loaded only while it runs).
_DAILY = """import os, subprocess, sys, time
parent, first = os.getppid(), float(sys.argv[1])
def wait(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(5, max(0, end - time.monotonic())))
        if os.getppid() != parent:  # pacs serve is gone: so are we
            sys.exit(0)
wait(first)  # not while the server is starting (retention_first_run_delay)
while True:
    subprocess.run(sys.argv[2:])
    wait(86400)
"""


def start_retention(settings: Settings, config_path: str | None) -> subprocess.Popen[bytes]:
    """Apply retention ``retention_first_run_delay`` seconds after start, then daily, in its own
    small process (``--scheduled``: over ``retention_max_per_run`` it refuses; storage/retention.py)."""
    cmd = [sys.executable, "-c", _DAILY, str(settings.retention_first_run_delay), sys.executable,
           "-c", "from pacs.cli import main; main()", "retention", "apply", "--scheduled"]
    return subprocess.Popen(cmd, env=_child_env(settings, config_path))


def install_dimse(settings: Settings) -> bool:
    """Patch pynetdicom for this process and the workers it forks (pacs.dimse: once, one warning if
    it cannot); False: stock pynetdicom."""
    from . import dimse

    return dimse.install(settings.dimse_patches, spool_dir=settings.data_dir / "tmp",
                         switch_interval=settings.dimse_switch_interval)


def dimse_worker(settings: Settings, listen_socket: socket.socket | None,
                 tls_socket: socket.socket | None = None) -> None:
    """One SCP process: its own archive, the (patched) pynetdicom, accepting on the parent's
    ``listen_socket`` (shared by every worker) until SIGTERM; and on ``tls_socket`` over TLS
    (pacs/tls.py), beside it or alone."""
    from .dimse.server import serve_forever
    from .scp import fast_store, handlers, make_ae

    install_dimse(settings)  # decided in the parent already: nothing to do but the spool directory
    # Responses are built by us from valid values; pydicom re-validating each one on encode
    # cost ~1 ms per C-STORE response (measured with py-spy).
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    archive = Archive(settings)
    ae, evt_handlers, fast = make_ae(settings), handlers(archive, settings), fast_store(archive, settings)
    tls_server = None
    try:
        if tls_socket is not None:
            tls_handlers = tls.tls_handlers(evt_handlers, archive, settings)
            if listen_socket is None:  # TLS only: it is the main server
                serve_forever(ae, settings.dicom_host, settings.dicom_tls_port, listen_socket=tls_socket,
                              evt_handlers=tls_handlers, fast_store=fast,
                              drain_timeout=settings.shutdown_grace,
                              ssl_context=tls.server_context(
                                  settings, verify_client=settings.dicom_tls_verify_client, deferred=True))
                return
            tls_server = tls.start_tls_server(ae, settings, tls_socket, tls_handlers, fast)
        serve_forever(ae, settings.dicom_host, settings.dicom_port,
                      listen_socket=listen_socket, evt_handlers=evt_handlers,
                      fast_store=fast, drain_timeout=settings.shutdown_grace)
    finally:
        if tls_server is not None:
            tls.stop_tls_server(*tls_server, settings.shutdown_grace)
        archive.close()


def serve(settings: Settings, config_path: str | None = None) -> int:
    """Run everything until SIGTERM/SIGINT; returns the exit code. Raises CannotStart, KeyUnavailable."""
    from .workers import prefork

    try:
        tls.check(settings)  # certificates that do not load: one line, before anything is bound
        atna.check(settings)
    except tls.CannotUseTLS as exc:
        raise CannotStart(str(exc)) from None
    dicom_socket = (bind("DICOM", "dicom_port", settings.dicom_host, settings.dicom_port)
                    if settings.dicom_plain else None)
    tls_socket = (bind("DICOM over TLS", "dicom_tls_port", settings.dicom_host, settings.dicom_tls_port)
                  if settings.dicom_tls else None)
    http_socket = bind("DICOMweb", "http_port", settings.http_host, settings.http_port)
    http_socket.setblocking(True)
    if uses_token(settings):  # a wrong PIN or a missing token: refused before anything is written
        log_in(settings)
    check_data_dir(settings)
    from storage.cluster import NODE_ENV

    os.environ[NODE_ENV] = "1"  # this node's processes tag their blob keys (storage/cluster.py)
    prepare(settings)
    metrics_dir = metrics.prepare()  # before any child: they inherit it
    install_dimse(settings)  # before the workers fork: they inherit it, and its one warning is said once
    started_at = atna.utcnow()
    atna.record_lifecycle(settings, "start", f"pid {os.getpid()}")
    audit_sender = atna.start(settings, _child_env(settings, config_path), started_at)
    http = start_http(settings, config_path, http_socket)
    http_started = time.monotonic()
    retention = start_retention(settings, config_path)
    log.info("DICOMweb on %s://%s:%d%s", "https" if settings.http_tls else "http", settings.http_host,
             settings.http_port, settings.dicomweb_root)
    if dicom_socket is not None:
        log.info("DICOM %s on %s:%d (%d processes)", settings.ae_title, settings.dicom_host,
                 settings.dicom_port, settings.dimse_workers)
    if tls_socket is not None:
        log.info("DICOM %s over TLS on %s:%d%s", settings.ae_title, settings.dicom_host,
                 settings.dicom_tls_port, " (client certificates required)"
                 if settings.dicom_tls_verify_client else "")

    def keep_http() -> None:
        """Start gunicorn again if it exited (on the same socket: no client sees the port closed)."""
        nonlocal http, http_started
        if http.poll() is None or time.monotonic() - http_started < HTTP_RESTART_INTERVAL:
            return
        log.warning("the DICOMweb server exited (status %s); starting it again", http.returncode)
        http, http_started = start_http(settings, config_path, http_socket), time.monotonic()

    def worker() -> None:
        http_socket.close()  # gunicorn's, not this process's
        dimse_worker(settings, dicom_socket, tls_socket)

    try:
        return prefork(worker, max(1, settings.dimse_workers), watch=keep_http)
    finally:
        retention.terminate()
        http.terminate()
        try:
            http.wait(timeout=15)
        except subprocess.TimeoutExpired:
            http.kill()
        atna.record_lifecycle(settings, "stop", f"pid {os.getpid()}")
        if audit_sender is not None:  # it sends what is pending (the stop) before it exits
            audit_sender.terminate()
            try:
                audit_sender.wait(timeout=15)
            except subprocess.TimeoutExpired:
                audit_sender.kill()
        metrics.remove(metrics_dir)
