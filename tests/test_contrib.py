"""contrib/compose: the Docker Compose examples hold together, and what they run works.

No image can be built or pulled here, so each compose file is checked twice over:

- its YAML is parsed (PyYAML) and checked: the services, the volume shared by the app and the
  daemon at the same path, ``DURAJOBS_DB`` the same in both (a file on that volume, or a URL
  naming the ``postgres`` service with its user and database and no password), the daemon's
  command, health checks and restart policies, the Dockerfile that puts the app where the
  services' ``working_dir`` says. Where installed, check-jsonschema validates it against the
  Compose Specification's JSON schema, and ``docker compose config`` accepts it;
- the commands the services run are run as real processes on the host, exactly as written but
  for the paths: the volume's mount point becomes a temporary directory, the image's ``/app``
  this directory (where the Dockerfile copies the app from), its executables the virtualenv's;
  on PostgreSQL the URL becomes the test server's. The SQLite app runs in its own network
  namespace (``unshare -n``), as in a container: an alarm it sets wakes the daemon through the
  ``<db>.wake`` socket file on the shared volume and runs on time. The daemon's health check
  (its own ``/healthz`` on its ``--metrics`` address) is run against the daemon in its own
  network namespace: unhealthy with no daemon, healthy once it serves and with a parked
  instance (a warning), unhealthy while its loop is stopped (SIGSTOP).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from waiting import wait_for

from durajobs import Jobs, Task, TaskContext

ROOT = Path(__file__).parent.parent
COMPOSE = ROOT / "contrib" / "compose"
BIN = Path(sys.executable).parent  # the virtualenv's scripts stand in for the image's PATH
SQLITE, POSTGRES = COMPOSE / "compose.yaml", COMPOSE / "compose.postgres.yaml"

pytestmark = pytest.mark.slow

# A request to the app from inside its network namespace (``nsenter``): prints status and body.
REQUEST = """
import sys, urllib.error, urllib.request
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3].encode() or None
try:
    with urllib.request.urlopen(urllib.request.Request(url, body, method=method), timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


@attrs.define
class Note:
    text: str


def _keep(event: Note, ctx: TaskContext[Note]) -> None:
    ctx.state = event


def _fail(ctx: TaskContext[Note]) -> None:
    raise RuntimeError("the mail server said no")


# A job whose instance parks at its first run (the daemon does not define it).
BROKEN = {"broken": Task(state=Note, event=Note, on_event=_keep, execute=_fail)}


# -- the compose files as data -------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())  # resolves the << merge keys
    return data


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ``${NAME}`` / ``${NAME:?message}`` interpolation and its ``$$`` escape."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in variables, f"{value!r} needs ${name}, which the test does not set"
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::?[?-][^}]*)?\}", one, value).replace("$$", "$")


def _environment(service: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    env = service["environment"]
    assert isinstance(env, dict), "environment as a mapping (NAME: value)"
    return {str(k): _interpolate(str(v), variables) for k, v in env.items()}


def _dockerfile() -> tuple[str, list[tuple[str, str]], str]:
    """The Dockerfile's WORKDIR, its COPY (source, destination) pairs and its pip install."""
    text = (COMPOSE / "Dockerfile").read_text()
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()]
    (workdir,) = [line.split()[1] for line in lines if line.startswith("WORKDIR ")]
    copies = []
    for line in lines:
        if line.startswith("COPY "):
            *sources, dest = line.split()[1:]
            copies += [(source, dest) for source in sources]
    (pip,) = [line for line in lines if "pip install" in line]
    return workdir, copies, pip


def _check_image(services: dict[str, Any], extras: set[str]) -> None:
    workdir, copies, pip = _dockerfile()
    app, daemon = services["app"], services["daemon"]
    for service in (app, daemon):
        assert service["build"]["dockerfile"] == "contrib/compose/Dockerfile"
        assert (COMPOSE / service["build"]["context"]).resolve() == ROOT
        assert service["image"] == app["image"]
        assert service.get("working_dir", workdir) == workdir
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}
        assert service["init"] is True  # SIGTERM reaches the process (not PID 1 itself)
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    # The module both services name is the file the Dockerfile copies into the working dir.
    module = _app_module(daemon["command"])
    assert (f"contrib/compose/{module}.py", f"{workdir}/") in copies
    assert f"{module}:app" in app["command"]
    assert app["environment"]["DURAJOBS_DB"] == daemon["environment"]["DURAJOBS_DB"]
    installed = re.search(r'"/src\[([\w,]+)\]"', pip)
    assert installed is not None, pip
    assert extras <= set(installed.group(1).split(","))
    # Everything copied from the context exists and is let through by the Dockerfile's own
    # ignore file, which excludes everything else (virtualenvs, databases, clusters).
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    for source, _ in copies:
        assert (ROOT / source).exists(), source
        assert f"!{source.rstrip('/')}" in [line.rstrip("/") for line in ignore], source


def _app_module(command: Sequence[str]) -> str:
    assert command[0] == "durajobs-daemon"
    app = command[command.index("--app") + 1]
    module, attribute = app.split(":")
    assert attribute == "jobs"
    return module


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match is not None, duration
    return float(match.group(1))


def _check_daemon(daemon: dict[str, Any]) -> None:
    command = daemon["command"]
    _app_module(command)
    # SIGTERM lets running steps finish for --grace seconds; Docker must wait longer.
    grace = float(command[command.index("--grace") + 1])
    assert _seconds(daemon["stop_grace_period"]) > grace
    # The health check is a liveness probe of the daemon's own loop: its --metrics address,
    # on the container's loopback, and /healthz there (not doctor, which exits 1 on a warning).
    address = command[command.index("--metrics") + 1]
    assert address.startswith("127.0.0.1:")
    test = daemon["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"'http://{address}/healthz'" in test[3]
    assert _seconds(daemon["healthcheck"]["timeout"]) > _probe_timeout(test)


def _probe_timeout(test: Sequence[str]) -> float:
    """The ``timeout=`` of a urllib probe (Docker's own timeout must be longer)."""
    match = re.search(r"timeout=(\d+)", test[-1])
    assert match is not None, test
    return float(match.group(1))


def test_the_sqlite_compose_file_shares_the_database_volume_between_app_and_daemon() -> None:
    compose = _load(SQLITE)
    services = compose["services"]
    assert set(services) == {"app", "daemon"}
    _check_image(services, {"metrics", "web"})
    _check_daemon(services["daemon"])
    # Exactly one daemon serves a SQLite file (a second exits with status 1): never scaled.
    assert services["daemon"].get("deploy", {}).get("replicas", 1) == 1
    # The same named volume at the same path in both; the database and its .wake and .lock
    # files beside it live on it.
    mounts = [service["volumes"] for service in services.values()]
    assert mounts[0] == mounts[1]
    (mount,) = mounts[0]
    volume, path = mount.split(":")
    assert volume in compose["volumes"]
    db = services["daemon"]["environment"]["DURAJOBS_DB"]
    assert os.path.dirname(db) == path


def test_the_postgres_compose_file_points_app_and_daemons_at_its_server() -> None:
    compose = _load(POSTGRES)
    services = compose["services"]
    assert set(services) == {"postgres", "app", "daemon"}
    _check_image(services, {"metrics", "postgres", "web"})
    _check_daemon(services["daemon"])
    assert services["daemon"]["deploy"]["replicas"] >= 2
    server = services["postgres"]
    assert server["restart"] == "unless-stopped"
    assert "pg_isready" in server["healthcheck"]["test"][1]
    for name in ("app", "daemon"):
        service = services[name]
        assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert "volumes" not in service  # nothing on disk: the server holds it all
        url = urllib.parse.urlsplit(service["environment"]["DURAJOBS_DB"])
        assert url.scheme == "postgresql"
        assert (url.hostname, url.port) == ("postgres", 5432)  # the service, by its name
        assert url.username == server["environment"]["POSTGRES_USER"]
        assert url.password is None  # the password comes from PGPASSWORD only
        assert url.path == "/" + server["environment"]["POSTGRES_DB"]
        # The same variable sets the server's password and the clients' PGPASSWORD.
        assert service["environment"]["PGPASSWORD"] == server["environment"]["POSTGRES_PASSWORD"]
        assert service["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD:?")


@pytest.mark.parametrize("path", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_the_file_follows_the_compose_specification(path: Path) -> None:
    """Validated against the Compose Specification's JSON schema (the copy check-jsonschema
    ships: no download). Skipped where check-jsonschema is not installed, unless the test
    extra declares it (then it must be there)."""
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        if "check-jsonschema" in (ROOT / "pyproject.toml").read_text():
            pytest.fail("check-jsonschema is in the test extra but not installed")
        pytest.skip("check-jsonschema is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_docker_compose_config_accepts_the_file(path: Path) -> None:
    """Where the compose plugin is installed (it needs no Docker daemon for ``config``)."""
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip("no docker compose plugin here: the YAML is checked by the tests above")
    result = subprocess.run(
        [docker, "compose", "-f", str(path), "config", "--quiet"],
        env={**os.environ, "POSTGRES_PASSWORD": "not-a-secret"},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# -- the services' commands, run as processes ------------------------------------------------------


def _host_argv(argv: Sequence[str]) -> list[str]:
    """An image's command run here: its first word is a script of the virtualenv."""
    script = BIN / argv[0]
    assert script.exists(), f"{argv[0]} is not installed by durajobs[web,postgres]"
    return [str(script), *argv[1:]]


def _host_env(environment: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **environment, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
        env.pop(key, None)
    return env


def _beside(
    argv: Sequence[str], env: dict[str, str], netns_of: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with a service's environment, in the network namespace of process
    ``netns_of`` if given."""
    command = list(argv)
    if netns_of is not None:
        command = ["nsenter", f"--net=/proc/{netns_of}/ns/net", *command]
    return subprocess.run(
        command, cwd=COMPOSE, env=env, capture_output=True, text=True, timeout=60, check=False
    )  # fmt: skip


def _healthcheck(
    test: Sequence[str], env: dict[str, str], netns_of: int | None = None, *, alone: bool = False
) -> int:
    """Run a compose ``healthcheck.test`` here: its exit status (0 healthy); ``alone``: in a
    new network namespace of its own (a container where nothing listens)."""
    if test[0] == "CMD-SHELL":
        argv = ["sh", "-c", _interpolate(test[1], {})]
    else:
        assert test[0] == "CMD"
        argv = [sys.executable, *test[2:]] if test[1] == "python" else _host_argv(test[1:])
    if alone:
        argv = ["unshare", "-n", *argv]
    return _beside(argv, env, netns_of).returncode


class Service:
    """One service's command running as a process; ``in_netns`` gives it its own network
    namespace with only a loopback interface, as a container has."""

    def __init__(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        log: Path,
        *,
        in_netns: bool = False,
    ) -> None:
        self.argv, self.env, self.in_netns, self.log = list(argv), env, in_netns, log
        command = _host_argv(argv)
        if in_netns:
            up = "ip link set lo up && exec " + shlex.join(command)
            command = ["unshare", "-n", "sh", "-c", up]
        self.process = subprocess.Popen(
            command, cwd=COMPOSE, env=env, stdin=subprocess.DEVNULL,
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` beside the service: same environment, same network namespace."""
        return _beside(argv, self.env, self.process.pid if self.in_netns else None)

    def healthcheck(self, test: Sequence[str]) -> int:
        """The service's compose ``healthcheck.test`` run beside it: 0 is healthy."""
        return _healthcheck(test, self.env, self.process.pid if self.in_netns else None)

    def wait_serving(self) -> None:
        """Until the daemon logs that it serves (its wake-up listener is open by then)."""

        def serving() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            return " serving " in self.log.read_text()

        wait_for(serving, interval=0.05, what=f"{self.argv[0]} serving")

    def stop(self, *, killed_ok: bool = False) -> None:
        """SIGTERM, as ``docker compose stop`` sends: the process must exit 0 (or die of it,
        with ``killed_ok``: waitress has no handler)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        ok = {0, -signal.SIGTERM} if killed_ok else {0}
        assert code in ok, f"{self.argv[0]} exited {code}:\n{self.log.read_text()}"


def _listen_port(argv: Sequence[str]) -> int:
    """The port of waitress-serve's ``--listen=HOST:PORT``."""
    (listen,) = [arg for arg in argv if arg.startswith("--listen=")]
    return int(listen.rsplit(":", 1)[1])


class App(Service):
    """The app's web server; ``request`` talks to it where it listens."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path, **kw: Any) -> None:
        self.port = _listen_port(argv)
        super().__init__(argv, env, log, **kw)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.port}{path}"
        data = "" if body is None else json.dumps(body)
        result = self.run([sys.executable, "-c", REQUEST, method, url, data])
        if result.returncode:  # not listening yet
            return 0, result.stderr
        status, text = result.stdout.split(" ", 1)
        return int(status), json.loads(text)

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            return self.request("GET", "/healthz")[0] == 200

        wait_for(ready, interval=0.1, what="the app answering /healthz")


def _remind(app: App, reminder: str, at: datetime | str) -> None:
    when = at.isoformat() if isinstance(at, datetime) else at
    status, body = app.request("POST", f"/reminders/{reminder}", {"text": "hi", "at": when})
    assert status == 201, body


def _sent(app: App, reminder: str) -> dict[str, Any] | None:
    status, body = app.request("GET", f"/reminders/{reminder}")
    assert status == 200, body
    return body if body["sent_at"] is not None else None


def _sent_on_time(app: App, reminder: str) -> None:
    """The daemon sent ``reminder`` at its time: not at some later, unrelated wake-up."""
    body = wait_for(lambda: _sent(app, reminder), interval=0.1, what=f"{reminder} sent")
    assert body is not None
    late = datetime.fromisoformat(body["sent_at"]) - datetime.fromisoformat(body["due_at"])
    assert timedelta(0) <= late < timedelta(seconds=5)


def _need_unshare() -> None:
    missing = None
    if os.geteuid() != 0:
        missing = "unshare needs root"
    elif not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        missing = "unshare, nsenter or ip is missing (util-linux, iproute2)"
    if missing is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {missing}")
        pytest.skip(missing)


@pytest.mark.sqlite_only
def test_an_alarm_set_by_the_app_container_runs_in_the_daemon_container(
    tmp_path: Path,
) -> None:
    _need_unshare()
    services = _load(SQLITE)["services"]
    volume = tmp_path / "volume"  # the named volume, mounted at /data in both containers
    volume.mkdir()
    (mount,) = services["daemon"]["volumes"]
    mount_path = mount.split(":")[1]

    def env(name: str) -> dict[str, str]:
        environment = _environment(services[name], {})
        db = environment["DURAJOBS_DB"]
        environment["DURAJOBS_DB"] = str(volume / os.path.relpath(db, mount_path))
        return _host_env(environment)

    app = App(services["app"]["command"], env("app"), tmp_path / "app.log", in_netns=True)
    daemon: Service | None = None
    try:
        app.wait_ready()
        assert app.healthcheck(services["app"]["healthcheck"]["test"]) == 0
        # No daemon yet: a reminder due two minutes ago is stuck overdue, and the daemon's
        # health check (run where the daemon would run: nothing answers there) says so.
        _remind(app, "late", datetime.now(UTC) - timedelta(minutes=2))
        daemon_check = services["daemon"]["healthcheck"]["test"]
        assert _healthcheck(daemon_check, env("daemon"), alone=True) != 0
        # The daemon in a network namespace of its own too, as in its container: its
        # --metrics address is its own loopback's.
        daemon = Service(
            services["daemon"]["command"], env("daemon"), tmp_path / "daemon.log", in_netns=True
        )
        wait_for(lambda: _sent(app, "late"), interval=0.1, what="the late reminder sent")
        wait_for(lambda: daemon.healthcheck(daemon_check) == 0, what="the daemon's probe")
        # The daemon is asleep with no alarm at all: only a wake-up from the app's network
        # namespace, through the socket file on the volume, can make it run this one.
        _remind(app, "r1", "2s")
        _sent_on_time(app, "r1")
        # The database, its wake socket and its lock file, all on the shared volume.
        assert {"jobs.db", "jobs.db.wake", "jobs.db.lock"} <= {p.name for p in volume.iterdir()}
        # A parked instance is for a person to look at (doctor exits 1, a warning), not a
        # reason to restart the daemon: its probe stays 0.
        with Jobs(env("daemon")["DURAJOBS_DB"], BROKEN) as jobs:
            jobs.task("broken").send("b1", Note("hi"))
            jobs.task("broken").trigger("b1")  # execute raises, no retry: parked
        assert daemon.run(_host_argv(["durajobs", "doctor"])).returncode == 1
        assert daemon.healthcheck(daemon_check) == 0
        # A daemon whose loop is stuck answers nothing: the probe fails (a true liveness probe).
        os.kill(daemon.process.pid, signal.SIGSTOP)
        try:
            assert daemon.healthcheck(daemon_check) != 0
        finally:
            os.kill(daemon.process.pid, signal.SIGCONT)
        assert daemon.healthcheck(daemon_check) == 0
    finally:
        app.stop(killed_ok=True)
        if daemon is not None:
            daemon.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_an_alarm_set_by_the_app_runs_in_one_of_the_postgres_daemons(
    pg_url: str, tmp_path: Path
) -> None:
    compose = _load(POSTGRES)
    services = compose["services"]
    password = urllib.parse.unquote(urllib.parse.urlsplit(pg_url).password or "")

    def env(name: str) -> dict[str, str]:
        environment = _environment(services[name], {"POSTGRES_PASSWORD": password})
        # The test server instead of the ``postgres`` service; the URL's options stay.
        compose_url = urllib.parse.urlsplit(environment["DURAJOBS_DB"])
        environment["DURAJOBS_DB"] = pg_url + "?" + compose_url.query
        return _host_env(environment)

    # On the host's network: the app's port becomes a free one.
    port = _free_port()
    argv = [
        re.sub(r"^--listen=.*:(\d+)$", f"--listen=127.0.0.1:{port}", arg)
        for arg in services["app"]["command"]
    ]
    app = App(argv, env("app"), tmp_path / "app.log")
    replicas = services["daemon"]["deploy"]["replicas"]
    daemons: list[Service] = []
    try:
        app.wait_ready()
        # On the host's network too (the test server is there): each replica's metrics
        # address, on a loopback of its own in its container, becomes a free port here.
        command = services["daemon"]["command"]
        compose_address = command[command.index("--metrics") + 1]
        probes = []
        for i in range(replicas):
            address = f"127.0.0.1:{_free_port()}"
            argv = [address if arg == compose_address else arg for arg in command]
            daemons.append(Service(argv, env("daemon"), tmp_path / f"daemon{i}.log"))
            probes.append(
                [
                    arg.replace(f"//{compose_address}/", f"//{address}/")
                    for arg in services["daemon"]["healthcheck"]["test"]
                ]
            )
        for daemon, probe in zip(daemons, probes, strict=True):
            daemon.wait_serving()  # listening for NOTIFY: the alarm below must wake one
            assert daemon.healthcheck(probe) == 0
        _remind(app, "r1", "2s")
        _sent_on_time(app, "r1")
        # One of the replicas ran it, once (the other did not run it too).
        ran = [d for d in daemons if "task:reminders:r1 ok " in d.log.read_text()]
        assert len(ran) == 1
        compose_port = _listen_port(services["app"]["command"])
        check = [
            arg.replace(f":{compose_port}/", f":{port}/")
            for arg in services["app"]["healthcheck"]["test"]
        ]
        assert app.healthcheck(check) == 0
    finally:
        app.stop(killed_ok=True)
        for daemon in daemons:
            daemon.stop()
