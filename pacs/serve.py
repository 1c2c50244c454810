"""``pacs serve``: the DIMSE SCP and the DICOMweb application (gunicorn) on one archive.

Start-up: open the archive once here (creates the master key on first start, upgrades the schema,
refuses a wrong key, sweeps orphan blobs); then start gunicorn, the retention schedule (a spawned
process) and ``dimse_workers`` SCP processes sharing the DICOM port (SO_REUSEPORT). Each process
opens its own archive after it starts. The parent supervises: a dead SCP worker is restarted, and
SIGTERM/SIGINT stops everything.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
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


def start_http(settings: Settings, config_path: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if config_path:
        env["PACS_CONFIG"] = str(Path(config_path).absolute())
    env["PACS_DATA_DIR"] = str(settings.data_dir)
    if settings.master_key_file and not settings.master_key:
        env["PACS_MASTER_KEY_FILE"] = str(settings.master_key_file)
    cmd = [sys.executable, "-m", "gunicorn", "--workers", str(settings.http_workers),
           "--bind", f"{settings.http_host}:{settings.http_port}", "--threads", "4",
           "--timeout", "300", "--graceful-timeout", "10", "--log-level", "warning",
           "dicomweb:create_app()"]
    return subprocess.Popen(cmd, env=env)


def _retention_loop(settings: Settings) -> None:
    from storage.retention import start_scheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    start_scheduler(settings).wait()


def start_retention(settings: Settings) -> multiprocessing.Process:
    """The daily retention run, in a fresh interpreter (no threads in the forking parent)."""
    proc = multiprocessing.get_context("spawn").Process(
        target=_retention_loop, args=(settings,), name="pacs-retention", daemon=True)
    proc.start()
    return proc


def dimse_worker(settings: Settings, reuse_port: bool) -> None:
    """One SCP process: its own archive, the tuned transport, until SIGTERM."""
    from . import receive
    from .scp import handlers, make_ae
    from .transport import serve_forever

    receive.enable(settings.data_dir / "tmp")  # bounded memory, ciphertext only on disk
    # Responses are built by us from valid values; pydicom re-validating each one on encode
    # cost ~1 ms per C-STORE response (measured with py-spy).
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    archive = Archive(settings)
    try:
        serve_forever(make_ae(settings), settings.dicom_host, settings.dicom_port,
                      reuse_port=reuse_port, evt_handlers=handlers(archive, settings))
    finally:
        archive.close()


def serve(settings: Settings, config_path: str | None = None) -> int:
    from .workers import prefork

    prepare(settings)
    http = start_http(settings, config_path)
    retention = start_retention(settings)
    log.info("DICOMweb on http://%s:%d%s", settings.http_host, settings.http_port, settings.dicomweb_root)
    log.info("DICOM %s on %s:%d (%d processes)", settings.ae_title, settings.dicom_host,
             settings.dicom_port, settings.dimse_workers)
    try:
        if settings.dimse_workers <= 1:
            dimse_worker(settings, reuse_port=False)
            return 0
        return prefork(lambda: dimse_worker(settings, reuse_port=True), settings.dimse_workers)
    finally:
        retention.terminate()
        http.terminate()
        try:
            http.wait(timeout=15)
        except subprocess.TimeoutExpired:
            http.kill()
