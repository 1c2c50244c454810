"""SoftHSM2 tokens for the tests: a private token directory and config file, nothing global.

SoftHSM2 reads ``SOFTHSM2_CONF`` once, when a process first initialises the module, and a running
process does not see tokens made after that. So each pytest process gets one token directory with
one token (:data:`TOKEN`, made at import of ``tests/conftest.py``, before anything loads the module);
in-process tests share that token and keep apart by their own key label (``object=`` of the URI).
Tests that run ``pacs serve`` or ``pacs`` in a subprocess make their own directories with
:func:`make_token_dir`, to try a missing token or a wrong PIN.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

TOKEN = "pacs-test"
PIN = "4821-test-pin"
SO_PIN = "9137-test-so-pin"
_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")


def module() -> str:
    """The SoftHSM2 PKCS#11 module of Debian's package ``softhsm2`` ('' when not installed)."""
    return next((m for m in _MODULES if Path(m).is_file()), "")


def make_token_dir(base: Path, *labels: str, pin: str = PIN) -> Path:
    """A SoftHSM2 config file under ``base`` with its own token directory holding ``labels``."""
    tokens = base / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = base / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for label in labels:
        subprocess.run([shutil.which("softhsm2-util") or "softhsm2-util", "--init-token", "--free",
                        "--label", label, "--so-pin", SO_PIN, "--pin", pin],
                       env=env, check=True, capture_output=True, timeout=60)
    return conf


def setup_process_token() -> None:
    """Point this process at a private token directory with :data:`TOKEN` (once per process)."""
    if os.environ.get("PACS_TEST_SOFTHSM2_CONF") or not module() or not shutil.which("softhsm2-util"):
        return
    base = Path(tempfile.mkdtemp(prefix="pacs-softhsm-"))
    atexit.register(shutil.rmtree, base, True)
    conf = make_token_dir(base, TOKEN)
    os.environ["SOFTHSM2_CONF"] = os.environ["PACS_TEST_SOFTHSM2_CONF"] = str(conf)


def token_uri(obj: str | None = None, token: str = TOKEN) -> str:
    """An RFC 7512 URI for a key label of its own in ``token``."""
    return f"pkcs11:token={token};object={obj or 'k-' + uuid.uuid4().hex[:12]}"
