"""Gunicorn server hooks for ``pacs serve`` (loaded with ``--config python:pacs.gunicorn_hooks``).

Spreading uploads over the workers. Each gunicorn worker is one Python process: one core at a time
for CPU-bound work (parsing and encrypting STOW-RS parts, under the GIL). A keep-alive connection
stays with the worker that accepted it, and which worker accepts is a race: two clients that connect
at the same moment land on the same worker half of the time, and then share one core while the
other worker idles (measured: 2 clients x 50 instances/request gave either ~2x or ~1x the one-client
rate, run by run). So a POST that starts while another POST is running in the same worker is
answered with ``Connection: close`` (RFC 9112 9.6): the client reconnects for its next request, and
the idle worker, not the busy one, wins the accept. GETs are left alone (browsers open many
connections; reads are short). One client never sees a close.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_posts_running = 0


def pre_request(worker: Any, req: Any) -> None:
    global _posts_running
    if req.method != "POST":
        return
    with _lock:
        _posts_running += 1
        busy = _posts_running > 1
    if busy:
        req.must_close = True


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    global _posts_running
    if req.method != "POST":
        return
    with _lock:
        _posts_running -= 1


def child_exit(server: Any, worker: Any) -> None:
    """A gunicorn worker is gone: its live gauges leave ``/metrics`` (storage/metrics.py)."""
    from storage import metrics

    metrics.process_exited(worker.pid)


def ssl_context(conf: Any, default_ssl_context_factory: Any) -> Any:
    """HTTPS (``http_tls``): TLS 1.2 or later with the BCP 195 suites only (pacs/tls.py)."""
    from pacs.tls import _bcp195

    return _bcp195(default_ssl_context_factory())
