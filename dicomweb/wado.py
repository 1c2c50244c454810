"""WADO-RS retrieval (PS3.18 10.4): instances, frames, bulk data, rendered, thumbnails."""

from __future__ import annotations

from flask import Blueprint

from .context import Authenticate, service_blueprint


def make_blueprint(name: str, authenticate: Authenticate, url_prefix: str) -> Blueprint:
    """The WADO-RS retrieval routes under ``url_prefix`` (e.g. ``/dicom-web``)."""
    bp = service_blueprint(name, __name__, authenticate, url_prefix)
    return bp
