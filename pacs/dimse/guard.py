"""The version and source checks every patch of :mod:`pacs.dimse` runs before it is applied.

The patches were written against one pynetdicom release, :data:`PYNETDICOM_VERSION` (pinned in
``pyproject.toml``). Each patch module's ``check()`` also looks for the exact source lines it
relies on (with :mod:`inspect`), so a pynetdicom that kept its version number but changed a reactor
loop is caught too. A failed check raises :class:`Incompatible`; :func:`pacs.dimse.install` then
applies nothing and the server runs on stock pynetdicom.
"""

from __future__ import annotations

import inspect
from typing import Any

import pynetdicom

#: The pynetdicom release the patches were written against (``pyproject.toml`` pins it).
PYNETDICOM_VERSION = "3.0.4"


class Incompatible(RuntimeError):
    """The installed pynetdicom is not the one a patch was written for."""


def require(cond: bool, what: str) -> None:
    """Raise :class:`Incompatible` naming ``what`` unless ``cond``."""
    if not cond:
        raise Incompatible(f"pynetdicom {pynetdicom.__version__}: {what}")


def source(obj: Any) -> str:
    """The source text of a pynetdicom function, class or module ('' if it has none)."""
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def check_version() -> None:
    """Raise :class:`Incompatible` unless pynetdicom is exactly :data:`PYNETDICOM_VERSION`."""
    require(pynetdicom.__version__ == PYNETDICOM_VERSION,
            f"the patches in pacs/dimse were written for pynetdicom {PYNETDICOM_VERSION}")
