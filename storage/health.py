"""Readiness of an archive's dependencies, for a load balancer's ``/readyz``.

Each check answers ``"ok"`` or a short reason that names the kind of failure only (the exception's
class, never its message: a database URL or an object store's reply may carry credentials). A blob
store may offer ``health() -> dict[str, str]`` (an object store, a dispersal layer over several
locations); a store without it is checked by being there and writable.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from .archive import Archive

OK = "ok"


def readiness(archive: Archive) -> dict[str, str]:
    """``{"index": ..., "blobs": ...}`` (plus one entry per location a store reports)."""
    out = {"index": _index(archive)}
    out.update(_blobs(archive.blobs))
    return out


def ready(checks: dict[str, str]) -> bool:
    """Every check "ok", or "degraded: ..." (a dispersal location down that the quorum tolerates)."""
    return all(v == OK or v.startswith("degraded") for v in checks.values())


def _index(archive: Archive) -> str:
    try:
        with archive.engine.connect() as c:
            c.execute(text("SELECT 1"))
        return OK
    except Exception as exc:  # any failure is "not ready", told by its kind
        return f"unreachable ({type(exc).__name__})"


def _blobs(store: Any) -> dict[str, str]:
    health = getattr(store, "health", None)
    if callable(health):
        try:
            return {f"blobs{'.' + k if k else ''}": v for k, v in health().items()} or {"blobs": OK}
        except Exception as exc:
            return {"blobs": f"unreachable ({type(exc).__name__})"}
    root = getattr(store, "root", None)
    if root is None:
        return {"blobs": OK}
    if not os.path.isdir(root):
        return {"blobs": "missing directory"}
    if not os.access(root, os.W_OK):
        return {"blobs": "not writable"}
    return {"blobs": OK}
