"""Wake-ups cross namespaces: a client in another network namespace (a container with its own
network sharing the volume) or another mount namespace (the directory bind-mounted at another
path) wakes the SQLite daemon at once.

The daemon sleeps until its next known alarm, an hour away; the client sets an alarm 2 s ahead
from inside ``unshare -n`` / ``unshare -m``. Without a wake-up reaching the daemon, that alarm
would wait for the hour. Needs root (``unshare``), as CI and the developers' machines have.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from durajobs import Jobs

TESTS = Path(__file__).parent
DAEMON = TESTS.parent / "durajobs_daemon.py"

pytestmark = [pytest.mark.sqlite_only, pytest.mark.slow]

# The client: set an alarm ``ahead`` seconds from now on the Task ``task`` (see app_defs).
CLIENT = """
import sys, time
from daemon_apps.app_defs import REGISTRY, Due
from durajobs import Jobs
with Jobs(sys.argv[1], REGISTRY) as jobs:
    jobs.task("task").send(sys.argv[2], Due(time.time() + float(sys.argv[3])))
"""


def _need_unshare() -> None:
    missing = None
    if os.geteuid() != 0:
        missing = "unshare needs root"
    elif shutil.which("unshare") is None:
        missing = "no unshare command (util-linux)"
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {missing}")
        pytest.skip(missing)


def _records(out: Path, kind: str, instance: str) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    items = [json.loads(line) for line in out.read_text().splitlines()]
    return [item for item in items if item["kind"] == kind and item["id"] == instance]


@pytest.fixture
def sleeping_daemon(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A daemon serving ``tmp_path/data/j.db`` whose only known alarm is an hour away."""
    _need_unshare()
    from daemon_apps.app_defs import REGISTRY, Due

    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "out.jsonl"
    env = {
        **os.environ,
        "DAEMON_TEST_DB": str(data / "j.db"),
        "DAEMON_TEST_OUT": str(out),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(key, None)
    with Jobs(env["DAEMON_TEST_DB"], REGISTRY) as jobs:
        jobs.continuous("hourly").start("h", REGISTRY["hourly"].state())
        jobs.task("task").send("first", Due(time.time()))
    daemon = subprocess.Popen(
        [sys.executable, str(DAEMON), "--app", "daemon_apps.app:jobs"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        # It ran what was due, so it is in its loop, asleep until the hourly alarm.
        wait_for(lambda: _records(out, "exit", "first"), what="first executed")
        yield env, out
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err.decode(errors="replace")


def _runs_on_time(out: Path, instance: str) -> None:
    (done,) = wait_for(lambda: _records(out, "exit", instance), what=f"{instance} executed")
    # Due 2 s after the client's call: run at its time, not at the daemon's next known alarm
    # (an hour away) nor at some later unrelated wake-up.
    assert done["lateness"] < 5.0


def test_an_alarm_set_from_another_network_namespace_wakes_the_daemon(
    sleeping_daemon: tuple[dict[str, str], Path],
) -> None:
    env, out = sleeping_daemon
    subprocess.run(
        ["unshare", "-n", sys.executable, "-c", CLIENT, env["DAEMON_TEST_DB"], "netns", "2"],
        env=env, check=True, timeout=60,
    )  # fmt: skip
    _runs_on_time(out, "netns")


def test_an_alarm_set_through_a_bind_mount_in_another_mount_namespace_wakes_the_daemon(
    sleeping_daemon: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, out = sleeping_daemon
    mount = tmp_path / "elsewhere"
    mount.mkdir()
    script = f'mount --bind "$1" "$2" && exec "{sys.executable}" -c "$3" "$2/j.db" mntns 2'
    subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", str(tmp_path / "data"), str(mount), CLIENT],
        env=env, check=True, timeout=60,
    )  # fmt: skip
    assert not any(mount.iterdir())  # the bind mount stayed in its own namespace
    _runs_on_time(out, "mntns")
