"""``pacs serve``: the DIMSE SCP and the DICOMweb application (gunicorn) on one archive.

Start-up: open the archive once here (creates the master key on first start, upgrades the schema,
refuses a wrong key, sweeps orphan blobs); then start gunicorn, the retention schedule (a spawned
process) and ``dimse_workers`` SCP processes accepting on one listening socket opened here. Each process
opens its own archive after it starts. The parent supervises: a dead SCP worker is restarted, and
SIGTERM/SIGINT stops everything.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pydicom

from storage.archive import Archive
from storage.config import Settings

log = logging.getLogger("pacs.serve")


def prepare(settings: Settings) -> None:
    """Create or check keys and schema; sweep orphans. Raises KeyUnavailable on a wrong key."""
    archive = Archive(settings, create_key=True)
    try:
        archive.sweep_orphans()
    finally:
        archive.close()


def _child_env(settings: Settings, config_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if config_path:
        env["PACS_CONFIG"] = str(Path(config_path).absolute())
    env["PACS_DATA_DIR"] = str(settings.data_dir)
    if settings.master_key_file and not settings.master_key:
        env["PACS_MASTER_KEY_FILE"] = str(settings.master_key_file)
    return env


def start_http(settings: Settings, config_path: str | None) -> subprocess.Popen:
    env = _child_env(settings, config_path)
    cmd = [sys.executable, "-m", "gunicorn", "--workers", str(settings.http_workers),
           "--bind", f"{settings.http_host}:{settings.http_port}", "--threads", "4",
           "--config", "python:pacs.gunicorn_hooks",  # uploads spread over the workers
           "--timeout", "300", "--graceful-timeout", str(int(settings.shutdown_grace)), "--log-level", "warning",
           "dicomweb:create_app()"]
    return subprocess.Popen(cmd, env=env)


# A few lines of stdlib Python: it sleeps most of the day in ~10 MB, and the retention run itself is a
# short-lived `pacs retention apply` (the whole archive code loaded only while it runs).
_DAILY = """import os, subprocess, sys, time
parent = os.getppid()
time.sleep(60)  # not while the server is starting
while True:
    subprocess.run(sys.argv[1:])
    for _ in range(86400 // 5):
        time.sleep(5)
        if os.getppid() != parent:  # pacs serve is gone: so are we
            sys.exit(0)
"""


def start_retention(settings: Settings, config_path: str | None) -> subprocess.Popen:
    """Apply retention a minute after start, then daily, in its own small process."""
    cmd = [sys.executable, "-c", _DAILY, sys.executable, "-c", "from pacs.cli import main; main()",
           "retention", "apply"]
    return subprocess.Popen(cmd, env=_child_env(settings, config_path))


def dimse_worker(settings: Settings, listen_socket: socket.socket | None = None) -> None:
    """One SCP process: its own archive, the tuned transport, until SIGTERM.

    With ``listen_socket`` (the parent's, shared by every worker) it accepts there; alone, it binds.
    """
    from . import fastpath, receive, send
    from .scp import handlers, make_ae
    from .transport import serve_forever

    fastpath.configure(settings.dimse_fast_store)
    receive.enable(settings.data_dir / "tmp")  # bounded memory, ciphertext only on disk
    send.enable()  # C-GET/C-MOVE stream stored objects from their blobs
    # Responses are built by us from valid values; pydicom re-validating each one on encode
    # cost ~1 ms per C-STORE response (measured with py-spy).
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    archive = Archive(settings)
    try:
        serve_forever(make_ae(settings), settings.dicom_host, settings.dicom_port,
                      listen_socket=listen_socket, evt_handlers=handlers(archive, settings),
                      drain_timeout=settings.shutdown_grace)
    finally:
        archive.close()


def serve(settings: Settings, config_path: str | None = None) -> int:
    from .transport import listen
    from .workers import prefork

    prepare(settings)
    http = start_http(settings, config_path)
    retention = start_retention(settings, config_path)
    log.info("DICOMweb on http://%s:%d%s", settings.http_host, settings.http_port, settings.dicomweb_root)
    log.info("DICOM %s on %s:%d (%d processes)", settings.ae_title, settings.dicom_host,
             settings.dicom_port, settings.dimse_workers)
    try:
        if settings.dimse_workers <= 1:
            dimse_worker(settings)
            return 0
        sock = listen(settings.dicom_host, settings.dicom_port)
        return prefork(lambda: dimse_worker(settings, sock), settings.dimse_workers)
    finally:
        retention.terminate()
        http.terminate()
        try:
            http.wait(timeout=15)
        except subprocess.TimeoutExpired:
            http.kill()
