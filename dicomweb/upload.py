"""The provider's upload page: add documents, photos, videos and notes to a patient's study."""

from __future__ import annotations

from flask import Blueprint

from .context import Authenticate, service_blueprint


def make_blueprint(name: str, authenticate: Authenticate, url_prefix: str = "/upload") -> Blueprint:
    """GET {prefix}/ (the page) and POST {prefix}/files (one artifact per request)."""
    bp = service_blueprint(name, __name__, authenticate, url_prefix)
    return bp
