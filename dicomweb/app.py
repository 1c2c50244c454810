"""The app factory: settings, the archive in ``app.extensions``, one blueprint per service."""

from __future__ import annotations

from flask import Flask

from storage.archive import Archive
from storage.config import Settings, load_settings


def create_app(settings: Settings | None = None, archive: Archive | None = None) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__)
    app.config["PACS_SETTINGS"] = settings
    app.extensions["archive"] = archive or Archive(settings)

    @app.get("/healthz")
    def healthz() -> tuple[str, int]:
        return "ok\n", 200

    return app
