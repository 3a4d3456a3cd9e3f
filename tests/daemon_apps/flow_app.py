"""The app of the flow-control process tests: ``--app daemon_apps.flow_app:jobs`` (database:
$DAEMON_TEST_DB)."""

from __future__ import annotations

import os

from daemon_apps.flow_app_defs import REGISTRY
from durajobs import Jobs

jobs = Jobs(os.environ["DAEMON_TEST_DB"], REGISTRY)
