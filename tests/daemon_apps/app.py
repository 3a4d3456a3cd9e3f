"""The app the daemon tests serve: ``--app daemon_apps.app:jobs`` (database: $DAEMON_TEST_DB)."""

from __future__ import annotations

import os

from daemon_apps.app_defs import REGISTRY
from durajobs import Jobs

jobs = Jobs(os.environ["DAEMON_TEST_DB"], REGISTRY)
not_jobs = "a string"
