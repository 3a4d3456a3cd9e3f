"""The app the daemon tests serve: ``--app daemon_apps.app:jobs`` (database: $DAEMON_TEST_DB;
with $DAEMON_TEST_TRACKER, a ``Tracker`` that sends to that URL with ``flush_interval=0``)."""

from __future__ import annotations

import os

from daemon_apps.app_defs import REGISTRY
from durajobs import Jobs, Tracker

_url = os.environ.get("DAEMON_TEST_TRACKER")
_tracker = Tracker(_url, "test", "sk_daemon", flush_interval=0, timeout=3600) if _url else None
jobs = Jobs(os.environ["DAEMON_TEST_DB"], REGISTRY, tracker=_tracker)
not_jobs = "a string"
