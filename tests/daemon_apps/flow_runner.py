"""A second kind of process for the flow tests: ``python flow_runner.py`` runs ``run_due`` of
``flow_app``'s jobs in a loop (every 10 ms) until SIGTERM, as an application process that
steps due alarms itself beside a daemon."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from daemon_apps.flow_app import jobs

stopping: list[int] = []  # the signal, once received

signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
print("ready", flush=True)
while not stopping:
    jobs.run_due()
    time.sleep(0.01)
jobs.close()
