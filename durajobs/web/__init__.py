"""The durajobs dashboard: a WSGI application of one database (``pip install 'durajobs[web]'``).

``make_app(location)`` returns the application, to serve with ``durajobs serve`` (waitress) or
to mount under a prefix of a Flask, Django or FastAPI application.
"""

from __future__ import annotations

from .app import BULK_CAP, Dashboard, make_app, mount
from .security import basic_auth, read_password_file

__all__ = ["BULK_CAP", "Dashboard", "basic_auth", "make_app", "mount", "read_password_file"]
