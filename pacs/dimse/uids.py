"""Patch: pynetdicom's UID checks (``set_uid``) remember their results.

What it changes: ``set_uid`` as imported by pynetdicom's ``ae``, ``dimse_primitives``,
``pdu_items``, ``pdu_primitives`` and ``presentation`` modules becomes :func:`memoized`, which
remembers the result per value and arguments (and the conformance setting), for up to
:data:`MEMO_LIMIT` distinct values. A value that fails is not remembered: it raises again, with
pynetdicom's message.

Why: an association proposing 120 SOP classes (dcmtk ``storescu``'s default) checks each abstract
and transfer syntax UID several times over (decoding the request, negotiating, building the
answer) at ~9 us a check, and the same few hundred UIDs come back on every association. Figures:
negotiating storescu's request 14.2 -> 6.1 ms (in process); server CPU for 100 storescu
associations of one small object each 1.95-2.18 -> 1.72 s (bench/README.md, session 3).

Upstream: possibly (an ``lru_cache`` on the validation), though pynetdicom may prefer to validate
once per association instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pynetdicom import _config, ae, dimse_primitives, pdu_items, pdu_primitives, presentation, utils

from .guard import require

#: Distinct values remembered (a peer may send any number of new UIDs).
MEMO_LIMIT = 10_000
_MODULES = (ae, dimse_primitives, pdu_items, pdu_primitives, presentation)


def memoized(original: Callable[..., Any]) -> Callable[..., Any]:
    """``pynetdicom.utils.set_uid`` remembering its result per value and arguments."""
    memo: dict[tuple[Any, ...], Any] = {}

    def set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True,
                validate: bool = True) -> Any:
        if not isinstance(value, str | bytes):
            return original(value, name, allow_empty, allow_none, validate)
        key = (type(value), value, name, allow_empty, allow_none, validate,
               _config.ENFORCE_UID_CONFORMANCE)
        try:
            return memo[key]
        except KeyError:
            result = original(value, name, allow_empty, allow_none, validate)
            if len(memo) < MEMO_LIMIT:
                memo[key] = result
            return result

    set_uid.__wrapped__ = original  # type: ignore[attr-defined]
    return set_uid


def check() -> None:
    for module in _MODULES:
        require(getattr(module, "set_uid", None) is utils.set_uid, f"{module.__name__}.set_uid changed")
    require(hasattr(_config, "ENFORCE_UID_CONFORMANCE"), "no _config.ENFORCE_UID_CONFORMANCE")


def install() -> None:
    fast = memoized(utils.set_uid)
    for module in _MODULES:
        module.set_uid = fast  # type: ignore[attr-defined]
