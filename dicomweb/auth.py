"""Provider authentication for DICOMweb: API tokens (RFC 6750 bearer) and the loopback exemption.

Tokens are made by ``pacs token create --name NAME --scope read|write|admin``; only their SHA-256
is stored (``api_tokens``). Scopes are ordered: ``read`` (QIDO-RS, WADO-RS, WADO-URI) < ``write``
(+ STOW-RS, uploads) < ``admin`` (+ DELETE).

In the embedded default a request from loopback (127.0.0.0/8, ::1) without an Authorization header
is allowed with admin scope, unless ``trust_proxy_headers`` is on (a local reverse proxy would make
every client look local) or ``PACS_OPEN_LOOPBACK=false``. A presented token is always checked.

Missing or wrong credentials: 401 with ``WWW-Authenticate: Bearer``; too small a scope: 403.

Tenancy (issue 19, storage/tokens.py): a token acts for one provider; its requests carry
``Scope(provider_id=...)``, so every read sees that provider's patients only and every store lands
in it. A ``--cross-tenant`` token and the loopback exemption see every provider (scope None) and
store into ``default``. A token whose provider was removed answers 401 exactly as an unknown token.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from flask import Response, abort, g, has_request_context, request

from storage.archive import Archive, Scope
from storage.tokens import (
    SCOPES,
    TokenInfo,
    create_token,
    list_tokens,
    lookup_token,
    revoke_token,
    token_holder,
)

from . import context

log = logging.getLogger(__name__)
__all__ = ["SCOPES", "TokenInfo", "create_token", "list_tokens", "lookup_token", "revoke_token"]

_RANK = {name: i for i, name in enumerate(SCOPES)}
F = TypeVar("F", bound=Callable[..., Any])


# -- Flask side ----------------------------------------------------------------------------------

def loopback_open() -> bool:
    """Is the loopback exemption on? (``PACS_OPEN_LOOPBACK``, default true; off behind a proxy.)"""
    settings = context.settings()
    return settings.open_loopback and not settings.trust_proxy_headers


def _is_loopback(addr: str | None) -> bool:
    try:
        return ipaddress.ip_address(addr or "").is_loopback
    except ValueError:
        return False


def _unauthorized(reason: str, error: str = "invalid_token") -> Response:
    resp = Response(reason + "\n", status=401, mimetype="text/plain")
    resp.headers["WWW-Authenticate"] = f'Bearer realm="pacs", error="{error}"' if error else \
        'Bearer realm="pacs"'
    return resp


def provider_authenticate() -> Scope | None:
    """The provider authenticator for every DICOMweb service blueprint: sees everything or aborts."""
    header = request.headers.get("Authorization", "")
    if not header:
        if loopback_open() and _is_loopback(request.remote_addr):
            g.pacs_actor, g.pacs_token_scope = "loopback", "admin"
            return None
        abort(_unauthorized("authentication required: Authorization: Bearer <token>", error=""))
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        abort(_unauthorized("only Bearer tokens are accepted", error="invalid_request"))
    found = token_holder(context.archive(), token.strip())
    if found is None or found.provider_removed:
        why = "unknown or revoked token" if found is None else \
            f"token {found.name} of a removed provider"
        context.archive().audit.record("login", actor="token", source=context.client_address(),
                                       outcome="failure", detail=why)
        abort(_unauthorized("unknown or revoked token"))
    g.pacs_actor, g.pacs_token_scope = f"token:{found.name}", found.scope
    if found.cross_tenant:
        return None
    g.pacs_provider = found.provider
    return Scope(provider_id=found.provider.id)


def check_scope(level: str) -> None:
    """Abort with 403 unless the caller's token scope is at least ``level``."""
    have = g.get("pacs_token_scope")
    if have is None or _RANK.get(have, -1) < _RANK[level]:
        abort(Response(f"this needs a token with '{level}' scope\n", status=403, mimetype="text/plain"))


def require_scope(level: str) -> Callable[[F], F]:
    """For write services: ``@require_scope("write")`` on a view, or call ``require_scope("admin")``
    inside one (then it checks at once). Patient sessions have no token scope: always 403."""
    if level not in _RANK:
        raise ValueError(f"unknown scope {level!r}")
    if has_request_context() and request.endpoint is not None:
        check_scope(level)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_scope(level)
            return view(*args, **kwargs)
        return cast(F, wrapper)  # functools.wraps keeps the view's signature

    return decorate


# -- audit of reads, off the request path ----------------------------------------------------------

_AUDIT_QUEUE: queue.Queue[tuple[Archive, str, dict[str, Any]]] = queue.Queue(maxsize=10_000)
_AUDIT_LOCK = threading.Lock()
_audit_thread: threading.Thread | None = None
COALESCE_SECONDS = 60.0
AUDIT_BATCH_DELAY = 0.2  # seconds an event may wait to share a transaction with others
AUDIT_BATCH_MAX = 500


@dataclass
class _Window:
    """Reads of one kind by one caller in one series, counted for up to a minute."""

    archive: Archive
    opened: float
    requests: int = 0
    items: int = 0


# (id(archive), action, actor, source, patient_ref, study UID, series UID, what) -> open window
_WINDOWS: dict[tuple[Any, ...], _Window] = {}


def _audit_worker() -> None:
    """Write queued events in batches: one transaction per ``AUDIT_BATCH_DELAY`` seconds, not one
    per read. Measured: one commit per event kept this thread busy enough (Python work and the
    GIL it holds) to add ~1 ms to every concurrent request of the process."""
    while True:
        try:
            first = _AUDIT_QUEUE.get(timeout=5)
        except queue.Empty:
            _close_windows(time.monotonic() - COALESCE_SECONDS)
            continue
        time.sleep(AUDIT_BATCH_DELAY)  # let the events of this moment gather
        batch = [first]
        while len(batch) < AUDIT_BATCH_MAX:
            try:
                batch.append(_AUDIT_QUEUE.get_nowait())
            except queue.Empty:
                break
        try:
            _write_batch(batch)
        finally:
            for _ in batch:
                _AUDIT_QUEUE.task_done()
        _close_windows(time.monotonic() - COALESCE_SECONDS)


def _write_batch(batch: list[tuple[Archive, str, dict[str, Any]]]) -> None:
    by_archive: dict[int, list[tuple[Archive, str, dict[str, Any]]]] = {}
    for item in batch:
        by_archive.setdefault(id(item[0]), []).append(item)
    for items in by_archive.values():
        archive = items[0][0]
        try:
            with archive.write_sessions.begin() as s:
                for _, action, kw in items:
                    archive.audit.add(s, action, **kw)
        except Exception:  # then one by one: record() logs its own failures
            log.warning("audit writer: batch of %d failed; writing one by one", len(items))
            for _, action, kw in items:
                archive.audit.record(action, **kw)


def _ensure_writer() -> None:
    global _audit_thread
    with _AUDIT_LOCK:
        if _audit_thread is None or not _audit_thread.is_alive():
            _audit_thread = threading.Thread(target=_audit_worker, name="pacs-audit", daemon=True)
            _audit_thread.start()


def _enqueue(archive: Archive, action: str, kw: dict[str, Any]) -> None:
    _ensure_writer()
    kw.setdefault("at", datetime.now(UTC).replace(tzinfo=None))  # when it happened, not when written
    try:
        _AUDIT_QUEUE.put_nowait((archive, action, kw))
    except queue.Full:
        archive.audit.record(action, **kw)


def audit_read(action: str, *, study_uid: str = "", patient_ref: int | None = None,
               detail: str = "") -> None:
    """Audit a read (who, what, from where) without a database commit on the request path.

    Events go through a bounded queue to one writer thread per process (a SQLite commit costs
    ~6 ms, more than a cached series metadata answer), which writes what gathered in 0.2 s in
    one transaction (so an event's ``at`` is up to ~0.2 s after the read); when the queue is full
    the request writes its event itself, so nothing is dropped. ``flush_audit()`` waits for the queue.
    """
    kw = {"actor": context.actor(), "source": context.client_address(), "study_uid": study_uid,
          "patient_ref": patient_ref, "detail": detail}
    _enqueue(context.archive(), action, kw)


def audit_read_coalesced(action: str, *, study_uid: str, series_uid: str, patient_ref: int | None,
                         what: str, items: int = 1) -> None:
    """Audit many small reads (frames, thumbnails) as few events (issue 6 part 8).

    The first read of a kind by a caller in a series is queued at once (so the trail shows it
    within a moment); the following ones in the next minute are only counted, and the count is
    written as one event when that minute is over (``"<what>: N more request(s), M item(s)"``).
    No read goes unrecorded, and a viewer scrolling 500 frames costs one or two inserts.
    """
    archive = context.archive()
    actor, source = context.actor(), context.client_address()
    key = (id(archive), action, actor, source, patient_ref, study_uid, series_uid, what)
    now = time.monotonic()
    with _AUDIT_LOCK:
        window = _WINDOWS.get(key)
        if window is not None and now - window.opened < COALESCE_SECONDS:
            window.requests += 1
            window.items += items
            return
        _WINDOWS[key] = _Window(archive, now)
    if window is not None and window.requests:
        _enqueue(archive, action, _window_event(key, window))
    _enqueue(archive, action, {"actor": actor, "source": source, "study_uid": study_uid,
                               "patient_ref": patient_ref,
                               "detail": f"{what}: {items} item(s) of series {series_uid}"[:500]})


def _window_event(key: tuple[Any, ...], window: _Window) -> dict[str, Any]:
    _, _, actor, source, patient_ref, study_uid, series_uid, what = key
    return {"actor": actor, "source": source, "study_uid": study_uid, "patient_ref": patient_ref,
            "detail": (f"{what}: {window.requests} more request(s), {window.items} item(s) of "
                       f"series {series_uid} in {COALESCE_SECONDS:.0f} s")[:500]}


def _close_windows(before: float) -> None:
    """Write the counts of windows opened before ``before`` (monotonic seconds) and forget them."""
    with _AUDIT_LOCK:
        done = [(k, w) for k, w in _WINDOWS.items() if w.opened < before]
        for k, _ in done:
            del _WINDOWS[k]
    for key, window in done:
        if window.requests:
            try:
                _AUDIT_QUEUE.put_nowait((window.archive, key[1], _window_event(key, window)))
            except queue.Full:
                window.archive.audit.record(key[1], **_window_event(key, window))


def flush_audit() -> None:
    """Write every counted and queued audit event now, and wait for them (tests, shutdown)."""
    _close_windows(float("inf"))
    if not _AUDIT_QUEUE.unfinished_tasks:
        return
    try:
        _ensure_writer()
    except RuntimeError:  # interpreter shutdown: no new threads; write what is left here
        while True:
            try:
                item = _AUDIT_QUEUE.get_nowait()
            except queue.Empty:
                return
            _write_batch([item])
            _AUDIT_QUEUE.task_done()
    _AUDIT_QUEUE.join()


atexit.register(flush_audit)
