"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related over HTTP."""

from __future__ import annotations

from flask import Blueprint

from .context import Authenticate, service_blueprint


def make_blueprint(name: str, authenticate: Authenticate, url_prefix: str) -> Blueprint:
    """POST {root}/studies and {root}/studies/{uid} (PS3.18 10.5)."""
    bp = service_blueprint(name, __name__, authenticate, url_prefix)
    return bp
