"""WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``."""

from __future__ import annotations

from flask import Blueprint

from .context import Authenticate, service_blueprint


def make_blueprint(name: str, authenticate: Authenticate, url_prefix: str) -> Blueprint:
    """The WADO-URI route at ``{url_prefix}/wado`` (register once at "" and once under the root)."""
    bp = service_blueprint(name, __name__, authenticate, url_prefix)
    return bp
