"""Patch: an accepted association copies the server's presentation contexts without ``deepcopy``.

What it changes: ``PresentationContext.__deepcopy__`` (pynetdicom defines none). pynetdicom's
``RequestHandler._create_association`` deep-copies the server's ~160 supported contexts for every
association, so that negotiation cannot alter the server's list. A context holds immutable values
(str-based UIDs, ints, bools) and one list, so a copy with a new list is as independent.

Why: the generic ``deepcopy`` of 160 contexts x 35 transfer syntax UIDs held the GIL ~70 ms per
association (py-spy, 4 parallel storescu: 30 % of the DIMSE worker's GIL time). Figure: 92 -> 0.5 ms
of GIL per association (bench/README.md, session 2).

Upstream: yes, a plain improvement (a ``__deepcopy__`` on PresentationContext).
"""

from __future__ import annotations

from typing import Any

from pynetdicom.presentation import PresentationContext

from .guard import require

_ATTRIBUTES = {"_context_id", "_abstract_syntax", "_transfer_syntax", "result", "_scu_role",
               "_scp_role", "_as_scp", "_as_scu"}


def copy_context(self: PresentationContext, memo: dict[int, Any]) -> PresentationContext:
    """``deepcopy`` of a presentation context: its attributes are immutable but one list."""
    new = PresentationContext.__new__(PresentationContext)
    new.__dict__.update(self.__dict__)
    new._transfer_syntax = list(self._transfer_syntax)
    return new


def check() -> None:
    require(set(vars(PresentationContext())) == _ATTRIBUTES, "PresentationContext attributes changed")
    require(not hasattr(PresentationContext, "__deepcopy__"), "PresentationContext has a __deepcopy__")


def install() -> None:
    PresentationContext.__deepcopy__ = copy_context  # type: ignore[attr-defined]
