"""Daemons on several "hosts" sharing one PostgreSQL database, when a host misbehaves.

Real daemons (``durajobs_daemon.py`` subprocesses, ``daemon_apps.hosts_app``) on a real server:

- a claim lost while its process lives (``pg_terminate_backend`` on its claim session): the
  other daemon runs the step, the first handler finishes too, and the fence lets exactly one
  commit land;
- a daemon stopped (SIGSTOP) inside a handler keeps its claim; the other daemon runs every
  other instance meanwhile;
- a real partition: a daemon in a network namespace of its own, connected over a veth pair,
  loses its link inside a handler; the server drops its sessions after the keepalive time set
  here, a daemon on the server's side runs the step again, and when the link is back the cut
  off daemon's commit is fenced out.

Handlers write JSON lines (enter/exit, with their pid); the tests wait on those lines, on the
server's views (``pg_stat_activity``, ``pg_locks``) and on the instances' counters, each with a
deadline, never on a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_apps.app_defs import Due
from daemon_apps.hosts_app import REGISTRY
from pgserver import PgServer
from waiting import wait_for

from durajobs import Jobs
from durajobs.stores.postgres.claims import claim_key

TESTS = Path(__file__).parent
DAEMON = TESTS.parent / "durajobs_daemon.py"
APP = "daemon_apps.hosts_app:jobs"
KEEPALIVES = "keepalives=1&keepalives_idle=1&keepalives_interval=1&keepalives_count=2"


def _query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql.encode(), params).fetchall())


class Hosts:
    """One database, this test's ``Jobs`` on it, and daemons started against it (each may get
    a URL of its own and a command prefix, such as ``ip netns exec NAME``)."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.out = tmp_path / "handlers.jsonl"
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DAEMON_TEST_DB": url,
            "DAEMON_TEST_OUT": str(self.out),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        }
        for key in (
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "JOURNAL_STREAM",
            "DURAJOBS_DB",
        ):
            self.env.pop(key, None)
        self.jobs = Jobs(url, REGISTRY)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, url: str | None = None, prefix: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """Start a daemon; wait until it serves."""
        index = len(self.procs)
        log = open(self.tmp_path / f"daemon-{index}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [*prefix, sys.executable, str(DAEMON), "--app", APP, *args],
            env={**self.env, "DAEMON_TEST_DB": url or self.url}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        wait_for(lambda: "serving" in self.log(index) or proc.poll() is not None,
                 what=f"daemon {index} serving")  # fmt: skip
        assert proc.poll() is None, self.log(index)
        return proc

    def log(self, index: int) -> str:
        return (self.tmp_path / f"daemon-{index}.log").read_text(errors="replace")

    def records(self, kind: str, instance: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = self.out.read_text().splitlines()
        except FileNotFoundError:
            return []
        items = [json.loads(line) for line in lines]
        return [i for i in items if i["kind"] == kind and (instance is None or i["id"] == instance)]

    def open_gate(self) -> None:
        """Let the first entry of every ``gate-*`` handler go on."""
        Path(f"{self.out}.open").touch()

    def send(self, user_id: str, at: float | None = None) -> None:
        self.jobs.task("task").send(user_id, Due(time.time() if at is None else at))

    def execute_count(self, user_id: str) -> int:
        return self.jobs.task("task").status(user_id).execute_count

    def history(self, user_id: str) -> list[tuple[str, int]]:
        """The instance's history records: ``(event, step)``, oldest first."""
        rows = _query(
            self.url, "SELECT event, step FROM history WHERE instance_id = %s ORDER BY id",
            (f"task:task:{user_id}",),
        )  # fmt: skip
        return [(str(event), int(step)) for event, step in rows]

    def claim_holder(self, user_id: str) -> tuple[int, str, str | None] | None:
        """The session holding the instance's claim: ``(pid, application_name, client
        address)``, or ``None``."""
        unsigned = claim_key(f"task:task:{user_id}") & 0xFFFFFFFFFFFFFFFF
        rows = _query(
            self.url,
            "SELECT a.pid, a.application_name, host(a.client_addr) FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.objsubid = 1 AND l.classid::bigint = %s "
            "AND l.objid::bigint = %s AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            (unsigned >> 32, unsigned & 0xFFFFFFFF),
        )
        return (int(rows[0][0]), str(rows[0][1]), rows[0][2]) if rows else None

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        """SIGTERM (the daemon drains: a running step ends, its commit included); exit code."""
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=timeout)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self.jobs.close()


@pytest.fixture
def hosts(pg_url: str, tmp_path: Path) -> Iterator[Hosts]:
    made = Hosts(pg_url, tmp_path)
    yield made
    made.close()


def _executes(hosts: Hosts, user_id: str) -> list[tuple[str, int]]:
    return [(event, step) for event, step in hosts.history(user_id) if "execute" in event]


def test_a_claim_lost_while_its_process_lives_lets_exactly_one_commit_land(hosts: Hosts) -> None:
    first = hosts.start()
    hosts.send("gate-1")
    entered = wait_for(lambda: hosts.records("enter", "gate-1"), what="the handler entered")
    first_worker = entered[0]["pid"]
    second = hosts.start()
    holder = wait_for(lambda: hosts.claim_holder("gate-1"), what="the claim session")
    assert holder[1] == "durajobs"  # the claims live on the store's session (issue 19)
    # The second daemon stays out while the claim is held.
    assert hosts.execute_count("gate-1") == 0
    assert len(hosts.records("enter", "gate-1")) == 1

    _query(hosts.url, "SELECT pg_terminate_backend(%s)", (holder[0],))
    lost_at = time.time()
    wait_for(lambda: hosts.execute_count("gate-1") == 1, timeout=10, what="the step rerun")
    again = hosts.records("enter", "gate-1")
    assert len(again) == 2
    assert again[1]["pid"] != first_worker
    print(f"claim lost -> rerun by the other daemon in {(again[1]['t'] - lost_at) * 1000:.0f} ms")
    second_worker = again[1]["pid"]

    # The first handler is still inside: let it finish; SIGTERM makes its daemon drain, so its
    # exit means its commit was tried (and fenced out).
    assert [r["pid"] for r in hosts.records("exit", "gate-1")] == [second_worker]
    hosts.open_gate()
    assert hosts.stop(first) == 0, hosts.log(0)
    exits = hosts.records("exit", "gate-1")
    assert sorted(r["pid"] for r in exits) == sorted([first_worker, second_worker])
    assert hosts.execute_count("gate-1") == 1
    state = hosts.jobs.task("task").get_state("gate-1")
    assert (state.pid, state.runs) == (second_worker, 1), "the stale commit landed"
    assert len(_executes(hosts, "gate-1")) == 1, hosts.history("gate-1")
    assert hosts.stop(second) == 0, hosts.log(1)


def test_a_stopped_daemon_keeps_its_claim_and_the_other_runs_everything_else(
    hosts: Hosts,
) -> None:
    first = hosts.start()
    hosts.send("gate-1")
    entered = wait_for(lambda: hosts.records("enter", "gate-1"), what="the handler entered")
    first_worker = entered[0]["pid"]
    second = hosts.start()
    holder = wait_for(lambda: hosts.claim_holder("gate-1"), what="the claim session")
    os.killpg(first.pid, signal.SIGSTOP)  # the whole host freezes: daemon and worker
    try:
        # Due over 2 s, so the other daemon retries the held instance all along (its busy
        # backoff: 50 ms doubling) while it runs these.
        now = time.time()
        ids = [f"other-{i}" for i in range(20)]
        for i, user_id in enumerate(ids):
            hosts.send(user_id, now + i * 0.1)
        wait_for(lambda: len(hosts.records("exit")) >= len(ids), what="every other instance")
        ran = hosts.records("enter")
        assert sorted(r["id"] for r in ran if r["id"] != "gate-1") == sorted(ids)
        assert {r["pid"] for r in ran if r["id"] != "gate-1"}.isdisjoint({first_worker})
        # The stopped process still holds its claim: its step was not run a second time.
        assert [r["pid"] for r in hosts.records("enter", "gate-1")] == [first_worker]
        assert hosts.claim_holder("gate-1") == holder
        assert hosts.execute_count("gate-1") == 0
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    hosts.open_gate()
    wait_for(lambda: hosts.execute_count("gate-1") == 1, what="the held step committed")
    assert hosts.stop(first) == 0, hosts.log(0)
    assert hosts.stop(second) == 0, hosts.log(1)
    for user_id in ids:
        assert hosts.execute_count(user_id) == 1
        assert len(_executes(hosts, user_id)) == 1
    state = hosts.jobs.task("task").get_state("gate-1")
    assert (state.pid, state.runs) == (first_worker, 1)
    assert len(hosts.records("enter", "gate-1")) == 1


# -- a real partition ---------------------------------------------------------------------------


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


@dataclass
class Partition:
    """A network namespace (the other host) joined to this one by a veth pair on a private
    /30 that exists nowhere else, and a PostgreSQL server listening on this side of it."""

    namespace: str
    host_side: str  # veth end in this namespace, address ``server_ip``
    far_side: str  # veth end in ``namespace``, address ``far_ip``
    server_ip: str
    far_ip: str
    server: PgServer

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def cut(self) -> None:
        """Down the far end: the near end loses its carrier and drops what it is given (its
        route stays, so nothing for the far address can take another way)."""
        _ip("netns", "exec", self.namespace, "ip", "link", "set", self.far_side, "down")

    def mend(self) -> None:
        _ip("netns", "exec", self.namespace, "ip", "link", "set", self.far_side, "up")

    def far_url(self, url: str) -> str:
        """``url`` (a 127.0.0.1 URL of ``server``) reached from the namespace, with libpq
        keepalives that notice a dead link within a few seconds."""
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.replace("@127.0.0.1:", f"@{self.server_ip}:")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=KEEPALIVES))


def _free_subnet() -> int:
    """A third octet ``x`` such that no address or route of this host is in 10.200.x.0/24."""
    used = _ip("-4", "addr") + _ip("-4", "route", "show", "table", "all")
    for offset in range(250):
        x = 1 + (os.getpid() + offset) % 250
        if f"10.200.{x}." not in used:
            return x
    raise OSError("no free 10.200.x.0/30 subnet")


@pytest.fixture
def partition(pg_server: PgServer) -> Iterator[Partition]:
    """Skipped where network namespaces cannot be made (not root, no ``ip``, a container
    without CAP_SYS_ADMIN), but a failure with ``CI=true``. Everything made is removed."""

    def unavailable(reason: str) -> None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)

    if os.geteuid() != 0:
        unavailable("a network namespace needs root (ip netns add)")
    if shutil.which("ip") is None:
        unavailable("iproute2 is not installed (no ip command)")
    tag = os.getpid() % 100000
    namespace, host_side, far_side = f"durajobs-test-{tag}", f"djh{tag}", f"djn{tag}"
    cleanup: list[Callable[[], Any]] = []
    server: PgServer | None = None
    try:
        try:
            _ip("netns", "add", namespace)
        except OSError as exc:
            unavailable(f"cannot make a network namespace here: {exc}")
        cleanup.append(lambda: _ip("netns", "del", namespace))  # and the veth end inside it
        x = _free_subnet()
        server_ip, far_ip = f"10.200.{x}.1", f"10.200.{x}.2"
        _ip("link", "add", host_side, "type", "veth", "peer", "name", far_side, "netns", namespace)
        cleanup.append(lambda: _ip("link", "del", host_side))
        # A safety net: were the veth's own route ever gone, the far address is unreachable
        # here rather than sent to the default gateway.
        _ip("route", "add", "unreachable", f"10.200.{x}.0/30", "metric", "4242")
        cleanup.append(
            lambda: _ip("route", "del", "unreachable", f"10.200.{x}.0/30", "metric", "4242")
        )
        _ip("addr", "add", f"{server_ip}/30", "dev", host_side)
        _ip("link", "set", host_side, "up")
        inside = ["netns", "exec", namespace, "ip"]
        _ip(*inside, "addr", "add", f"{far_ip}/30", "dev", far_side)
        _ip(*inside, "link", "set", far_side, "up")
        _ip(*inside, "link", "set", "lo", "up")

        server = PgServer(pg_server.bindir)
        server.start()
        with open(os.path.join(server.data, "pg_hba.conf"), "a") as hba:
            hba.write(f"host all all 10.200.{x}.0/30 scram-sha-256\n")
        for setting in (
            f"listen_addresses = '127.0.0.1,{server_ip}'",
            # The server drops a silent peer's session after about 1 + 2 x 1 s.
            "tcp_keepalives_idle = 1",
            "tcp_keepalives_interval = 1",
            "tcp_keepalives_count = 2",
            "tcp_user_timeout = 3000",
        ):
            server.admin_execute(f"ALTER SYSTEM SET {setting}")
        server.restart()
        yield Partition(namespace, host_side, far_side, server_ip, far_ip, server)
    finally:
        if server is not None:
            server.stop()  # before the link goes: no session is left to the far side
        for undo in reversed(cleanup):
            with contextlib.suppress(OSError):
                undo()


def test_a_partitioned_daemons_step_is_rerun_and_its_commit_fenced_out(
    partition: Partition, tmp_path: Path
) -> None:
    server = partition.server
    url = server.create_database("hosts")
    hosts = Hosts(url, tmp_path)
    try:
        far = hosts.start(url=partition.far_url(url), prefix=partition.exec_prefix())
        sessions = (
            "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s::inet",
            (partition.far_ip,),
        )
        assert _query(url, *sessions)[0][0] > 0, "the far daemon connects over the veth"
        before = [f"before-{i}" for i in range(5)]
        for user_id in before:
            hosts.send(user_id)
        wait_for(lambda: len(hosts.records("exit")) >= len(before), what="the far daemon works")
        hosts.send("gate-1")
        entered = wait_for(lambda: hosts.records("enter", "gate-1"), what="the handler entered")
        far_worker = entered[0]["pid"]
        near = hosts.start()
        holder = wait_for(lambda: hosts.claim_holder("gate-1"), what="the claim session")
        assert holder[2] == partition.far_ip

        partition.cut()
        cut_at = time.time()
        during = [f"during-{i}" for i in range(5)]
        for user_id in during:
            hosts.send(user_id)
        wait_for(lambda: _query(url, *sessions)[0][0] == 0, timeout=20,
                 what="the server dropping the far daemon's sessions")  # fmt: skip
        dropped = time.time() - cut_at
        wait_for(lambda: hosts.execute_count("gate-1") == 1, timeout=20, what="the step rerun")
        rerun = hosts.records("enter", "gate-1")[1]
        assert rerun["pid"] != far_worker
        near_worker = rerun["pid"]
        print(
            f"partition: sessions dropped {dropped * 1000:.0f} ms after the cut, step rerun "
            f"{(rerun['t'] - cut_at) * 1000:.0f} ms after it"
        )
        wait_for(lambda: all(hosts.execute_count(i) == 1 for i in during), what="during-*")
        assert hosts.records("exit", "gate-1")[0]["pid"] == near_worker

        partition.mend()
        # The far handler reads through its dead connection (that fails), reconnects, and
        # writes "exit" only once a read works: its commit then goes to the server, which
        # fences it out.
        hosts.open_gate()
        wait_for(lambda: len(hosts.records("exit", "gate-1")) == 2, what="the far handler ends")
        assert hosts.stop(far) == 0, hosts.log(0)  # drained: its commit was tried
        after = [f"after-{i}" for i in range(5)]
        for user_id in after:
            hosts.send(user_id)
        wait_for(lambda: all(hosts.execute_count(i) == 1 for i in after), what="after-*")
        assert hosts.stop(near) == 0, hosts.log(1)

        state = hosts.jobs.task("task").get_state("gate-1")
        assert (state.pid, state.runs) == (near_worker, 1), "the cut off daemon's commit landed"
        for user_id in [*before, "gate-1", *during, *after]:
            assert hosts.execute_count(user_id) == 1, user_id
            assert len(_executes(hosts, user_id)) == 1, (user_id, hosts.history(user_id))
        print("far handler's failed reads after the link came back:", hosts.records("read-failed"))
    finally:
        hosts.close()
