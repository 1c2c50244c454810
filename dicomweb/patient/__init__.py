"""The patient door (issue 6): letter pages and patient-scoped DICOMweb.

``init_app(app)`` registers

* ``/letters/<selector>``: the page (access-code form, then the record) — :mod:`.pages`;
* ``/letters/<selector>/dicom-web/...``: the read services (QIDO-RS, metadata, WADO-RS, WADO-URI)
  with :func:`.auth.letter_authenticate` (session cookie or HTTP Basic selector/access code);
* ``/patient/dicom-web/...`` and ``/patient/viewer``: the same services and OHIF for the browser
  session alone (the viewer needs a fixed DICOMweb root; the session names the letter);
* ``/shares/<selector>``, ``/shares/<selector>/dicom-web/...``, ``/share/dicom-web/...`` and
  ``/share/viewer``: a share's page, DICOMweb roots and viewer for another doctor — :mod:`.share_door`.
"""

from __future__ import annotations

import importlib

from flask import Flask

from .auth import SESSION_ROOT, letter_authenticate, session_authenticate

READ_SERVICES = ("qido", "metadata", "wado", "wadouri")
LETTER_ROOT = "/letters/<selector>/dicom-web"


def letter_url(base_url: str, selector: str) -> str:
    """The address of a letter's page (``/letters/<selector>``, :mod:`.pages`) under ``base_url``."""
    return f"{base_url.rstrip('/')}/letters/{selector}"


def init_app(app: Flask) -> None:
    from . import pages

    app.register_blueprint(pages.blueprint())
    for name in READ_SERVICES:
        try:
            module = importlib.import_module(f"dicomweb.{name}")
        except ModuleNotFoundError:
            continue
        app.register_blueprint(module.make_blueprint(f"patient_{name}", letter_authenticate, LETTER_ROOT))
        app.register_blueprint(module.make_blueprint(f"patient_session_{name}", session_authenticate,
                                                     SESSION_ROOT))
    from ..viewer import viewer_blueprint

    settings = app.config["PACS_SETTINGS"]
    viewer = viewer_blueprint(None, SESSION_ROOT, "/patient/viewer", name="patient_viewer",
                              trust_forwarded=settings.trust_proxy_headers)

    @viewer.before_request
    def _need_session() -> None:
        session_authenticate()

    app.register_blueprint(viewer)
    from . import share_door

    share_door.init_app(app, READ_SERVICES)
