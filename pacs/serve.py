"""``pacs serve``: the DIMSE SCP and the DICOMweb application (gunicorn) on one archive.

Start-up order: open the archive once here (creates the master key on first start, upgrades the
schema, refuses a wrong key, sweeps orphan blobs), then start gunicorn workers and the SCP
processes; each opens its own archive after forking.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

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


def run_dimse(settings: Settings) -> None:
    """Serve DIMSE in this process until SIGTERM/SIGINT."""
    from .scp import handlers, make_ae

    _tune()
    archive = Archive(settings)
    ae = make_ae(settings)
    server = ae.start_server((settings.dicom_host, settings.dicom_port), block=False,
                             evt_handlers=handlers(archive, settings))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("DICOM %s listening on %s:%d", settings.ae_title, settings.dicom_host, settings.dicom_port)
    stop.wait()
    server.shutdown()
    archive.close()


def serve(settings: Settings, config_path: str | None = None) -> int:
    prepare(settings)
    http = start_http(settings, config_path)
    log.info("DICOMweb on http://%s:%d%s", settings.http_host, settings.http_port, settings.dicomweb_root)
    try:
        run_dimse(settings)
    finally:
        http.terminate()
        try:
            http.wait(timeout=15)
        except subprocess.TimeoutExpired:
            http.kill()
    return 0


def _tune() -> None:
    try:
        from .transport import tune
    except ImportError:
        return
    tune()
