"""The DICOMweb application (PS3.18) and the patient pages, as a Flask app factory for gunicorn.

``gunicorn 'dicomweb:create_app()'`` opens the archive in each worker after the fork.
"""

from .app import create_app

__all__ = ["create_app"]
