"""durajobs-daemon: run the due steps of one durajobs database, sleeping until the earliest alarm.

Usage: ``python durajobs_daemon.py --app myapp.jobs:jobs [--db PATH] [--workers N]`` (also
installed as the ``durajobs-daemon`` console script). ``--help`` explains every option.

Theory of operation
-------------------
This file holds the loop, the signals and the logging, nothing else: every step runs through
the library's one step path, ``jobs.engine.run_due(only=[ids], busy=[])``, in a worker process.

* **Processes.** The parent loads the app, opens the database, binds the wake socket, then
  forks ``--workers`` worker processes (no threads anywhere). The parent never runs user code:
  it reads the database (which instances are due, the earliest alarm), hands instance ids to
  idle workers over a socketpair (one JSON object per line) and enforces timeouts. Each worker
  opens its own connection after the fork (``Jobs`` never uses a parent's) and runs the ids it is
  given; group commit happens inside ``run_due``. Which ids go to which idle worker, and when
  to read again, is decided by ``durajobs.dispatch.Dispatcher`` (pure: batching by the jobs'
  recent step times, backoffs, the reclaim gap, suspects, stuck instances, pacing); this file
  tells it what happened and does what it says. A batch costs two messages: ``run`` and
  ``done`` (with one line per committed step: its outcome, attempt, duration and error);
  only a step of a job with a ``timeout`` (and the step after it) is announced with ``start``.
* **Sleeping.** The parent sleeps in ``selectors`` on the wake socket, the workers' sockets, a
  self-pipe for signals (``signal.set_wakeup_fd``) and, on Linux, a ``CLOCK_REALTIME`` timerfd
  armed at the earliest alarm that is not already in flight. Alarms are wall-clock epoch
  seconds, so a wall-clock timer is the right primitive: it has nanosecond resolution (no
  rounding of ``select`` timeouts to milliseconds), still fires on time after a suspend, and
  follows a stepped clock by itself (see ``WallTimer``). Without a timerfd the
  alarm becomes a ``select`` timeout. The timer fires ``DISPATCH_LEAD`` (2 ms) early and the
  worker sleeps the rest, so the parent's wake-up and read cost no lateness. The other
  timeouts (a step's deadline, the busy backoff, a pending ``STATUS=``, the watchdog ping) are
  monotonic. With nothing to do the parent makes no wake-ups at all; the only periodic one is
  ``WATCHDOG=1`` when systemd asks for it.
* **Waking.** Clients poke the wake socket after commits that set an alarm; the parent then
  re-reads (paced by the dispatcher: ``WAKE_WINDOW``). The poke is an optimisation only: the
  parent re-reads on start, when its timer fires, after every batch and after SIGHUP, so a
  lost datagram loses nothing.
* **Claims.** Steps of an instance are serialized by the engine's claims, which die with
  their process. An instance that another process holds (``busy``) is retried on the next
  wake datagram or after a backoff. A killed worker's instances are due again at once.
* **Timeouts.** A worker tells the parent which step of a job with a ``timeout`` it starts.
  Past it, the parent SIGKILLs the worker, reaps it, forks a replacement and has the
  replacement record the timeout (``engine.time_out``) as a failed attempt under the job's
  retry policy (there, not in the parent, because ``on_error``/``on_record`` are user code).
* **Stopping.** SIGTERM/SIGINT: no new steps, ``STOPPING=1``, running steps get ``--grace``
  seconds, then exit 0 (workers still running then are killed; their steps run again later).
  A second SIGTERM/SIGINT kills the workers and exits at once with 128 + the signal number.
  Workers ignore SIGINT, SIGTERM and SIGHUP (Ctrl-C reaches the whole process group): the
  parent stops them by closing their channel, or with SIGKILL.
  SIGHUP re-reads the database at once and logs (and reports as ``STATUS=``) one status line;
  it reloads no code and no options (restart for that) and reopens nothing: logs go to stderr.
* **systemd.** With ``NOTIFY_SOCKET`` set: ``READY=1`` once serving, ``STATUS=`` after changes
  (at most once a second, never on a timer while idle), ``STOPPING=1``, and ``WATCHDOG=1``
  every ``WATCHDOG_USEC / 2``. Logs: one line per step on stderr, without timestamps (but with
  ``<N>`` priority prefixes) when stderr is the journal (``JOURNAL_STREAM``).
* **Logs.** ``--log-format text`` (default) or ``json`` (one object a line: ``JsonFormatter``);
  both are stdlib ``logging`` formatters on one handler that writes each line in one
  ``write``, the app's own loggers included. At start, one warning per *orphaned* job (it has
  instances, the app does not define it: nothing here runs them), from the metrics' grouped
  read of the instance counts.
* **Metrics.** ``--metrics HOST:PORT`` (``MetricsServer``): the parent answers ``/metrics``
  and ``/healthz`` from its selector loop, still with no thread, and never waits on a client
  (``durajobs.metrics.SelectorServer``: non-blocking connections read from the selector, 2 s
  each in all, 8 at most; only the scrape's read of the store holds the loop); each step
  report a worker sends is counted there, with its lateness (measured by the worker when the
  step starts). A metrics connection's error is one log line (``event: metrics``).
* **Telemetry.** A worker keeps the app's hooks (its ``Tracker``, its OpenTelemetry spans):
  the tracker never waits on the network in a step, so an idle worker waits on its socket
  (``Worker._wait_for_parent``) as well as on the parent's channel.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import logging
import math
import os
import select
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import attrs

from durajobs import Jobs, SystemClock
from durajobs.apploader import AppError, load_app  # --app, as check and doctor load it
from durajobs.core.decision import Decision
from durajobs.core.definitions import Definition
from durajobs.core.flow import prioritized
from durajobs.dispatch import BATCH_BYTES, Backoff, Dispatcher, DueRow, StepReport
from durajobs.errors import DurajobsError, StorageError
from durajobs.jobs import PRUNE_EVERY
from durajobs.stores import daemons_serving, open_listener, same_database
from durajobs.stores.base import Write

__all__ = ["main"]

log = logging.getLogger("durajobs.daemon")

STATUS_EVERY = 1.0  # seconds between two STATUS= updates
DAEMON_CENSUS_EVERY = 1.0  # seconds between two counts of the daemons serving a database
# An alarm is handed to a worker this long before it is due; the worker sleeps the rest. The
# parent's wake-up, its read and the hand-over then cost no lateness (about 0.6 ms otherwise).
DISPATCH_LEAD = 0.002
WORKER_START_FAILED = 3  # a worker's exit code when it cannot open the database
EARLY_DEATHS_MAX = 5  # workers killed before they were ready, in a row, before giving up
ERROR_TEXT_MAX = 500
# A failed step's log level: a retry is a warning, a run given up (or parked) an error.
OUTCOME_LEVEL = {"retry": logging.WARNING}
JOB_LOG_LEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                 "error": logging.ERROR, "off": logging.CRITICAL + 1}  # fmt: skip
EXIT_USAGE = 2

# -- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (``--help`` documents each option)."""
    parser = argparse.ArgumentParser(
        prog="durajobs-daemon",
        description=(
            "Run the due steps of a durajobs database: sleep until the earliest alarm, wake at "
            "once when a client sets an earlier one, run steps in worker processes, speak "
            "systemd's notify protocol."
        ),
        epilog=(
            "Signals: SIGTERM/SIGINT stop taking steps and wait up to --grace seconds for "
            "running ones, then exit 0 (a second signal kills the workers and exits with 128 + "
            "the signal number); SIGHUP re-reads the database now and logs a status line (it "
            "reloads no code). Environment: DURAJOBS_DB, NOTIFY_SOCKET, WATCHDOG_USEC, "
            "JOURNAL_STREAM."
        ),
    )
    parser.add_argument(
        "--app",
        required=True,
        metavar="MODULE:ATTRIBUTE",
        help=(
            "the durajobs.Jobs to serve, e.g. myapp.jobs:jobs (the module is imported from "
            "sys.path and the current directory; its handlers run in the workers)"
        ),
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("DURAJOBS_DB") or None,
        metavar="PATH",
        help=(
            "database file to serve instead of the app's own path (default: $DURAJOBS_DB, "
            "else the path the app's Jobs was opened with); the daemon then opens a new Jobs "
            "on PATH with the app's registry and settings and the system clock"
        ),
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes that run steps, so a slow step delays no others (default 1)",
    )
    parser.add_argument(
        "--grace",
        type=_non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long running steps may take to finish (default 30)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        help="info logs one line per step; warning only failures (default info)",
    )
    parser.add_argument(
        "--metrics",
        type=_address,
        default=None,
        metavar="HOST:PORT",
        help=(
            "serve GET /metrics (Prometheus) and GET /healthz (JSON) on this address, e.g. "
            "127.0.0.1:9464 (port 0: any free port, logged at start); off by default; needs "
            "durajobs[metrics]"
        ),
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help=(
            "text: one line of words per record (default); json: one JSON object per line "
            "with time, level, event and the fields that apply (job, instance, step, attempt, "
            "outcome, duration_ms, lateness_ms, error)"
        ),
    )
    return parser.parse_args(argv)


def _address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]:9464
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT (e.g. 127.0.0.1:9464), got {text!r}")
    return host, int(port)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def open_jobs(app: Jobs, db: str | None) -> Jobs:
    """The ``Jobs`` the daemon serves: the app's own, or a new one on ``db``.

    A new ``Jobs`` keeps the app's registry, hooks and settings, and uses the system clock.

    Raises:
        AppError: the app's Jobs runs on a virtual clock.
        StorageError: ``db`` cannot be opened.
    """
    if db is None or same_database(db, app.location):
        if not isinstance(app.clock, SystemClock):
            raise AppError(
                f"the app's Jobs uses {type(app.clock).__name__}; the daemon needs the system "
                "clock (pass --db to serve its file with the system clock)"
            )
        return app
    jobs = app.with_path(db, clock=SystemClock(), wake=False)
    app.tracker = None  # now owned by the new Jobs: closing the app's must not close it
    app.close()
    return jobs


def _one_line(exc: BaseException) -> str:
    return _clip(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


# -- logging -----------------------------------------------------------------------------------


# Fields a JSON log line may carry besides time, level, event, logger and message (those that
# apply: a step's line has the step's, an orphaned job's line its job, kind and count).
LOG_FIELDS = ("job", "kind", "instance", "step", "attempt", "outcome", "duration_ms",
              "lateness_ms", "error", "count", "worker")  # fmt: skip
SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <message>``; ``journal=True``: ``<N><message>`` (journald adds the
    time, and takes the ``<N>`` syslog priority prefix off)."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if self.journal:
            return f"<{_priority(record)}>{text}"
        stamp = datetime.fromtimestamp(record.created).isoformat(" ", "milliseconds")
        return f"{stamp} {record.levelname} {text}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``event`` (``step``,
    ``orphaned_job``, ``serving``, ``stopping``, ``stopped``, ``timeout``, ``worker_lost``,
    ``metrics``; ``log`` for any other line, the app's included), ``logger``, ``message``
    (the text line's words) and the ``LOG_FIELDS`` that apply; ``exception`` with a
    traceback. Under journald the line keeps its ``<N>`` priority prefix, which journald
    takes off."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, Any] = {
            "time": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in LOG_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        text = json.dumps(line, ensure_ascii=False, default=str)
        return f"<{_priority(record)}>{text}" if self.journal else text


def _priority(record: logging.LogRecord) -> int:
    return SYSLOG_PRIORITY.get(record.levelno, 2 if record.levelno > 40 else 6)


class LineHandler(logging.Handler):
    """Writes each formatted record to stderr in one ``write`` (lines from several processes
    never mix)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(2, (self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:  # logging must never take the daemon down
            self.handleError(record)


def stderr_is_journal() -> bool:
    """Whether stderr is the journal stream systemd set up (``JOURNAL_STREAM=dev:inode``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        info = os.fstat(2)
        return info.st_dev == int(device) and info.st_ino == int(inode)
    except (OSError, ValueError):
        return False


def setup_logging(level: str, log_format: str = "text") -> None:
    """Send every logger's records (the app's too) to stderr, one line each (``log_format``:
    ``text`` or ``json``)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = LineHandler()
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler.setFormatter(formatter(stderr_is_journal()))
    root.addHandler(handler)
    root.setLevel(level.upper())


# -- systemd -----------------------------------------------------------------------------------


class Notifier:
    """systemd's notify protocol over ``NOTIFY_SOCKET`` (a path, or ``@abstract``); no-op unset."""

    def __init__(self, address: str | None) -> None:
        self.enabled = bool(address)
        self._address = ""
        self._sock: socket.socket | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, *fields: str) -> None:
        """Send ``KEY=value`` fields in one datagram; failures are logged, never raised."""
        if self._sock is None:
            return
        try:
            # Never block: a supervisor that stops reading must not stop the steps.
            self._sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", fields, exc)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of ``WATCHDOG_USEC`` in seconds, if systemd asks this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6 / 2
    except ValueError:
        return None
    return seconds if seconds > 0 else None


# -- the wall-clock timer ----------------------------------------------------------------------


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class WallTimer:
    """A Linux ``CLOCK_REALTIME`` timerfd armed at an absolute epoch time.

    Readable when the time is reached. An absolute ``CLOCK_REALTIME`` timer follows the wall
    clock by itself: a step forward past the alarm fires it at once, a step back delays it to
    the same wall time. It is not armed with ``TFD_TIMER_CANCEL_ON_SET``: some hosts set the
    clock many times a second (time sync in VMs and sandboxes, by zero or a few microseconds),
    and each set would wake an idle daemon for nothing. ``WallTimer.create()`` returns
    ``None`` where timerfd is missing; the loop then sleeps with a ``select`` timeout instead.
    """

    CLOCK_REALTIME = 0
    TFD_TIMER_ABSTIME = 1

    def __init__(self, fd: int, settime: Any) -> None:
        self.fd = fd
        self._settime = settime
        self.armed_at: float | None = None

    @classmethod
    def create(cls) -> WallTimer | None:
        """A new timer, or ``None`` if this platform has no timerfd."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create = libc.timerfd_create
            settime = libc.timerfd_settime
        except (OSError, AttributeError):
            return None
        create.argtypes = [ctypes.c_int, ctypes.c_int]
        settime.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p,
        ]  # fmt: skip
        fd = create(cls.CLOCK_REALTIME, os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            return None
        return cls(fd, settime)

    def arm(self, when: float | None) -> None:
        """Fire at epoch time ``when`` (at once if past); ``None`` disarms."""
        if when == self.armed_at:
            return
        spec = _Itimerspec()
        flags = 0
        if when is not None:
            seconds = math.floor(when)
            # Round up, plus 1 µs: time.time() read after the timer fired is then >= when.
            nanos = math.ceil((when - seconds) * 1e9) + 1000
            seconds, nanos = seconds + nanos // 1_000_000_000, nanos % 1_000_000_000
            spec.it_value.tv_sec, spec.it_value.tv_nsec = max(seconds, 0), nanos
            flags = self.TFD_TIMER_ABSTIME
        for _ in range(3):
            if self._settime(self.fd, flags, ctypes.byref(spec), None) == 0:
                break
            err = ctypes.get_errno()
            if err != errno.ECANCELED:
                raise OSError(err, f"timerfd_settime: {os.strerror(err)}")
            # The wall clock was set since the last read (NTP stepping it, an operator): take
            # the notice and arm again. What is due is re-read after every wake-up anyway.
            self.clear()
        else:
            raise OSError(errno.ECANCELED, "timerfd_settime: the wall clock keeps being set")
        self.armed_at = when

    def clear(self) -> None:
        """Consume a pending expiry (or clock-change notice); the timer is then disarmed."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ECANCELED:  # ECANCELED: the wall clock was set
                raise
        self.armed_at = None

    def close(self) -> None:
        """Close the descriptor."""
        os.close(self.fd)


# -- what a step did, in one line --------------------------------------------------------------


def report(
    write: Write, decision: Decision, lateness: dict[str, float] | None = None
) -> StepReport | None:
    """A committed step -> its report (in the worker, which sends the reports to the parent as
    they are); ``None`` for a step that recorded nothing. The outcome is the decision's own;
    the attempt, duration and error are its main record's (the failure, else the timed run).
    ``lateness``: instance id -> the lateness (ms) of its due step that started last; the
    report takes (and removes) its instance's."""
    records = write.records
    if not records:
        return None
    main = next((r for r in records if r[0] == "job.failed"), None) or next(
        (r for r in records if r[2] is not None), records[0]
    )
    outcome = decision.outcome.value
    if outcome in ("nothing", "refused"):
        outcome = "ok"
    error = main[3]
    late = None if lateness is None else lateness.pop(write.instance_id, None)
    step = write.row.step if write.row is not None else write.expected_step + 1
    return StepReport(
        write.instance_id, outcome, main[1], main[2],
        None if error is None else _clip(str(error)), step,
        None if late is None else round(late, 3),
    )  # fmt: skip


def step_fields(step: StepReport) -> dict[str, Any]:
    """A step's fields for a JSON log line (``extra=`` of its log record)."""
    kind, _, rest = step.instance_id.partition(":")
    return {
        "event": "step", "job": rest.partition(":")[0], "kind": kind,
        "instance": step.instance_id, "step": step.step, "attempt": step.attempt,
        "outcome": step.outcome, "duration_ms": step.duration_ms,
        "lateness_ms": step.lateness_ms, "error": step.error,
    }  # fmt: skip


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_MAX else text[: ERROR_TEXT_MAX - 1] + "…"


def format_step(step: StepReport) -> str:
    """``<instance id> <outcome> attempt=<n> <duration>ms [error=...]``."""
    ms = step.duration_ms
    text = f"{step.instance_id} {step.outcome} attempt={step.attempt} "
    text += "-" if ms is None else f"{ms:.1f}ms"
    error = step.error
    return text if error is None else f"{text} error={json.dumps(error, ensure_ascii=False)}"


# -- parent <-> worker messages ----------------------------------------------------------------


class Channel:
    """One end of a worker's socketpair: JSON objects, one per line (JSON escapes newlines)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        """Send one message (blocking; messages are small and the peer always reads).

        Raises:
            OSError: the peer is gone.
        """
        self.sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def receive(self, *, block: bool) -> tuple[list[dict[str, Any]], bool]:
        """Messages available now (``block``: wait for at least one); and whether the peer lives.

        Raises:
            ValueError: a malformed message (a bug).
        """
        messages: list[dict[str, Any]] = []
        while True:
            try:
                chunk = self.sock.recv(65536, 0 if block and not messages else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return messages, True
            except (ConnectionResetError, BrokenPipeError):
                return messages, False
            if not chunk:
                return messages, False
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            messages.extend(json.loads(line) for line in lines)
            if block and messages:
                block = False

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


# -- the worker process ------------------------------------------------------------------------


def worker_main(jobs: Jobs, channel: Channel) -> NoReturn:
    """The body of a forked worker: reopen the database, then run what the parent sends."""
    code = 1
    try:
        # Ctrl-C (or a SIGTERM sent to the whole group) is for the parent, which lets running
        # steps finish and then closes our channel; a worker is stopped by EOF or SIGKILL.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        # Jobs dropped the parent's connection and claim handle at the fork (never closing
        # the connection, closing our copy of the claim descriptor); open our own now.
        try:
            jobs.engine  # noqa: B018 -- opens this process's connection
        except DurajobsError as exc:
            log.error("worker %d cannot open the database: %s", os.getpid(), exc)
            os._exit(WORKER_START_FAILED)
        code = Worker(jobs, channel).serve()
    except (BrokenPipeError, ConnectionResetError):
        code = 0  # the parent is gone (a step that was running committed or runs again)
    except BaseException:
        log.exception("worker %d failed", os.getpid())
    finally:
        os._exit(code)


class Worker:
    """Runs steps in a worker process and reports on them to the parent.

    Two messages per batch when its jobs have no ``timeout``: the parent's ``run`` and this
    worker's ``done``, which carries the lines of the steps it committed. A step of a job with
    a ``timeout`` is announced first (``start``, which arms the parent's deadline), and so is
    the next step after it (which disarms it); lines of steps committed before a handler runs
    (a group commit inside the batch) are sent before that handler, so a worker that dies in
    a handler has reported every step it committed.
    """

    def __init__(self, jobs: Jobs, channel: Channel) -> None:
        self.jobs = jobs
        self.channel = channel
        self.engine = jobs.engine
        self._user_hook = self.engine.hooks.on_records
        # No waker: the parent hears of every step from us; no poke needed. The app's step
        # watch (tracing) stays.
        self.hooks = self.engine.hooks._replace(
            on_done=self.on_done, before_step=self.before_step, waker=None
        )
        self._lateness: dict[str, float] = {}  # instance id -> ms, until its step is reported
        self._lines: list[list[Any]] = []  # committed steps not reported yet
        self._lines_size = 0
        self._deadline_armed = False  # the parent watches a deadline of ours

    def serve(self) -> int:
        """Run batches until the parent closes the channel; returns the exit code."""
        engine = self.engine
        self.channel.send({"ready": os.getpid()})
        while True:
            self._wait_for_parent()
            messages, alive = self.channel.receive(block=True)
            for message in messages:
                busy: list[str] = []
                held: dict[str, float | None] = {}
                committed, error = 0, None
                try:
                    if "run" in message:
                        _sleep_until(message["at"])  # handed out up to DISPATCH_LEAD early
                        committed = engine.run_due(
                            only=message["run"], busy=busy, hooks=self.hooks, held=held
                        )
                    else:
                        committed = self.time_out(*message["time_out"])
                except Exception as exc:  # a StorageError, or a bug: report, keep serving
                    error = _one_line(exc)
                lines, self._lines, self._lines_size = self._lines, [], 0
                self._deadline_armed = False  # "done" ends the batch's deadline too
                self.channel.send({"steps": lines, "done": committed, "busy": busy,
                                   "error": error, "held": held})  # fmt: skip
            if not alive:
                if self.jobs.tracker is not None:
                    self.jobs.tracker.close()
                return 0

    def _wait_for_parent(self) -> None:
        """Until the parent sends something, keep the tracker's request moving: it never
        waits on the network in a step, so an idle worker wakes for its socket, its next
        attempt and its timeout instead (nothing at all while its queue is empty)."""
        tracker = self.jobs.tracker
        if tracker is None:
            return
        channel = self.channel.sock
        while True:
            tracker.idle()  # add([]), and the name resolved again after a failed connection
            waiting, due = tracker.waiting_on(), tracker.due_in()
            if waiting is None and due is None:
                return
            readers: list[socket.socket] = [channel]
            writers: list[socket.socket] = []
            if waiting is not None:
                (writers if waiting[1] else readers).append(waiting[0])
            readable, _, _ = select.select(readers, writers, [], due)
            if channel in readable:
                return

    def before_step(
        self, instance_id: str, timeout: float | None, step: int, due_at: float | None
    ) -> None:
        """Just before a step's handlers run: note its lateness, report what committed so far
        and, for a job with a ``timeout`` (or after one), tell the parent which step starts.

        The step number (for a job with a timeout) lets a later ``time_out`` tell whether the
        step committed just before the kill.
        """
        if due_at is not None:
            self._lateness[instance_id] = (self.jobs.clock.time() - due_at) * 1000
        self._flush_lines()
        if timeout is None and not self._deadline_armed:
            return  # nothing to watch: no message
        self._deadline_armed = timeout is not None
        self.channel.send(
            {
                "start": instance_id,
                "timeout": timeout,
                "step": step if timeout is not None else None,
                "at": time.monotonic(),
            }
        )

    def on_done(self, done: list[tuple[Write, Decision]]) -> None:
        """After a commit: keep each step's line for the parent (which logs it); the app's
        record hook (user code) runs after this, so the lines go out before it does."""
        for write, decision in done:
            line = report(write, decision, self._lateness)
            if line is None:
                continue
            self._lines.append(list(line))
            self._lines_size += len(line.instance_id) + len(line.error or "") + 40
            if self._lines_size > BATCH_BYTES:
                self._flush_lines()
        if self._user_hook is not None:
            self._flush_lines()

    def _flush_lines(self) -> None:
        if self._lines:
            lines, self._lines, self._lines_size = self._lines, [], 0
            self.channel.send({"steps": lines})

    def time_out(self, instance_id: str, seconds: float, step: int | None) -> int:
        """Record the step the parent killed as a failed attempt, unless it committed first
        (the engine checks the step under the instance's claim)."""
        return int(self.engine.time_out(instance_id, seconds, step, self.hooks))


# -- the metrics address -----------------------------------------------------------------------


class MetricsServer:
    """``--metrics HOST:PORT``: ``GET /metrics`` and ``GET /healthz`` (``durajobs.metrics``),
    served from the parent's selector loop by ``durajobs.metrics.SelectorServer`` (no thread:
    the parent forks its workers, and a fork while another thread holds a lock can leave the
    child stuck).

    The loop never waits on a client: connections are read from the selector, each gets
    ``CLIENT_TIMEOUT`` seconds in all (then it is closed with one log line), at most
    ``MAX_CONNECTIONS`` at once. Only the answer holds the loop: a scrape reads the store (one
    grouped statement and a count of the due index), 40-70 ms at a million instances. The
    step series are this daemon's: each step a worker reports is counted here (``observe``).
    """

    CLIENT_TIMEOUT = 2.0
    MAX_CONNECTIONS = 8

    def __init__(self, metrics: Any, app: Any, http: Any) -> None:
        self.metrics = metrics
        self.app = app
        self.http = http  # a SelectorServer
        host, port = http.server.server_address[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @classmethod
    def open(cls, location: str, host: str, port: int) -> MetricsServer:
        """Bind the address and make the metrics of the database at ``location``.

        Raises:
            ImportError: prometheus_client is not installed (``MetricsUnavailable``).
            OSError: the address cannot be bound.
        """
        from durajobs.metrics import Metrics, SelectorServer, make_server, metrics_app

        metrics = Metrics()
        app = metrics_app(location, metrics)
        try:
            server = make_server(host, port, app)
        except BaseException:
            app.close()
            raise
        http = SelectorServer(
            server, timeout=cls.CLIENT_TIMEOUT, max_connections=cls.MAX_CONNECTIONS, log=log
        )
        return cls(metrics, app, http)

    def observe(self, step: StepReport) -> None:
        """Count a step a worker committed (and its lateness, for an alarm's step)."""
        kind, _, rest = step.instance_id.partition(":")
        seconds = None if step.duration_ms is None else step.duration_ms / 1000
        self.metrics.observe_step(
            rest.partition(":")[0], kind, step.outcome, seconds, error=step.error
        )
        if step.lateness_ms is not None:
            self.metrics.observe_lateness(step.lateness_ms / 1000)

    def close(self) -> None:
        """Close the connections, the listening socket and the app's database connections."""
        self.http.close()
        self.app.close()


# -- the parent --------------------------------------------------------------------------------


@attrs.define(eq=False)
class WorkerProcess:
    """The parent's view of one worker."""

    pid: int
    channel: Channel
    current: str | None = None  # the step with a deadline, if any
    current_step: int | None = None
    timeout: float | None = None
    deadline: float | None = None  # monotonic
    ready: bool = False  # it has opened the database


class Daemon:
    """The parent process: the loop, the workers, the signals; ``self.dispatch`` decides."""

    def __init__(
        self, jobs: Jobs, *, workers: int, grace: float, metrics: MetricsServer | None = None
    ) -> None:
        self.jobs = jobs
        self.metrics = metrics
        self.store = jobs.engine.store
        self.size = workers
        self.grace = grace
        self.listener = open_listener(jobs.location)
        self.listener_fd: int | None = None  # registered with the selector
        self.listener_retry: Backoff | None = None  # PostgreSQL: LISTEN lost, reconnecting
        self.timer = WallTimer.create()
        self.selector = selectors.DefaultSelector()
        self.signal_r, self.signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.notifier = Notifier(os.environ.pop("NOTIFY_SOCKET", None))
        self.watchdog = watchdog_interval()
        os.environ.pop("WATCHDOG_USEC", None)  # the app's subprocesses must not inherit these
        os.environ.pop("WATCHDOG_PID", None)
        self.workers: list[WorkerProcess] = []
        registry = jobs.registry
        self.dispatch = Dispatcher(  # monotonic time
            note=log.log,
            limits={n: j.concurrency for n, j in registry.items() if j.concurrency is not None},
            order=_priority_order(registry),
            spread=jobs.engine.locks.several_daemons,
        )
        self.early_deaths = 0  # workers that died before they were ready, in a row
        self.next_alarm: float | None = None  # the earliest alarm not handed out yet
        self.stop_deadline = math.inf
        self.exit_code: int | None = None
        self.due_count = 0
        self.steps_done = 0
        self.last_report: StepReport | None = None  # the last step a worker reported
        self.status_dirty = False
        self.status_sent = -math.inf
        self.next_ping = math.inf
        self.next_census = -math.inf  # when to count the daemons serving the database again
        self.last_prune = -math.inf
        self.announced = False

    # -- lifecycle -----------------------------------------------------------------------------

    def serve(self) -> int:
        """Run until stopped; returns the exit code."""
        signal.set_wakeup_fd(self.signal_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _note_signal)  # the wake-up fd carries the signal number
        self.selector.register(self.signal_r, selectors.EVENT_READ, self._on_signals)
        self._listen()
        if self.timer is not None:
            self.selector.register(self.timer.fd, selectors.EVENT_READ, self._on_timer)
        if self.metrics is not None:
            self.metrics.http.attach(self.selector)
        try:
            for _ in range(self.size):
                self._spawn()
            self._poll()  # what is due now is handed out while the workers open the database
            self._log_orphans()
            while self.exit_code is None:
                for key, _ in self.selector.select(self._sleep_for()):
                    key.data(key)
                self._tick()
        finally:
            self._kill_all()
            signal.set_wakeup_fd(-1)
            self.listener.close()
            self.notifier.close()
            if self.metrics is not None:
                self.metrics.close()
            self.jobs.close()
        return self.exit_code

    def _log_orphans(self) -> None:
        """Log, once at start, each job that has instances in the database but is not defined
        by this app (removed or renamed in the code): nothing here runs them."""
        from durajobs.admin import FAILING, orphaned_jobs
        from durajobs.health import defined_jobs

        try:
            counts = self.store.instance_gauges()  # the metrics' one grouped, indexed read
        except StorageError as exc:
            log.warning("could not look for orphaned jobs: %s", exc)
            return
        # A failing instance is counted as running too.
        counted = ((k, j, n) for k, j, status, n in counts if status != FAILING)
        for (kind, job), count in orphaned_jobs(counted, defined_jobs(self.jobs)).items():
            log.warning(
                "orphaned job %r (%s): %d instance%s in the database but the app defines no "
                "such job, so they never run (restore the job, or terminate them with "
                "`durajobs terminate`)", job, kind, count, "" if count == 1 else "s",
                extra={"event": "orphaned_job", "job": job, "kind": kind, "count": count},
            )  # fmt: skip

    def _announce(self) -> None:
        """Once every first worker has opened the database: ``READY=1``."""
        self.announced = True
        log.info(
            "serving %s with %d worker%s (pid %d); next alarm %s",
            self.jobs.path, self.size, "" if self.size == 1 else "s", os.getpid(),
            _when(self.next_alarm), extra={"event": "serving"},
        )  # fmt: skip
        self.notifier.send("READY=1", f"STATUS={self._status_text()}")
        self.status_sent, self.status_dirty = time.monotonic(), False
        if self.watchdog is not None:
            self.notifier.send("WATCHDOG=1")
            self.next_ping = time.monotonic() + self.watchdog

    def _tick(self) -> None:
        """Everything that is due after a wake-up: deadlines, the poll, pings."""
        stopping = self.dispatch.stopping
        if not self.announced and not stopping and all(w.ready for w in self.workers):
            self._announce()
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.deadline is not None and now >= worker.deadline:
                self._time_out(worker)
        if stopping:
            if not self.workers:
                self.exit_code = 0 if self.exit_code is None else self.exit_code
                log.info("stopped", extra={"event": "stopped"})
                return
            if now >= self.stop_deadline:
                running = [w.current or ",".join(self._batch(w)) for w in self.workers]
                log.warning(
                    "grace period of %gs over: killing %d worker(s) still running %s (those "
                    "steps run again later)", self.grace, len(self.workers), "; ".join(running),
                )  # fmt: skip
                self._kill_all()
                self.exit_code = 0
                return
        else:
            retry = self.listener_retry
            if retry is not None and (retry.retry_at or 0.0) <= now:
                self._relisten()
                if self.listener_retry is not None:  # still away: poll as if woken
                    self.dispatch.on_alarm()
            alarm = self.next_alarm
            if self.timer is None and alarm is not None and time.time() >= alarm - DISPATCH_LEAD:
                self.dispatch.on_alarm()
            if self.dispatch.should_read(now):
                self._poll()
            self._maybe_prune()
        if self.status_dirty and self.notifier.enabled and now >= self.status_sent + STATUS_EVERY:
            self.notifier.send(f"STATUS={self._status_text()}")
            self.status_sent, self.status_dirty = now, False
        if now >= self.next_ping and self.watchdog is not None:
            self.notifier.send("WATCHDOG=1")
            self.next_ping = now + self.watchdog
        if self.metrics is not None:
            self.metrics.http.expire(now)

    def _sleep_for(self) -> float | None:
        """Seconds until the next thing the loop must do by itself; ``None``: nothing."""
        now = time.monotonic()
        read_at = self.dispatch.next_wakeup(now)
        if read_at is not None and read_at <= now:
            return 0.0
        wake_at = [w.deadline for w in self.workers if w.deadline is not None]
        wake_at.append(self.next_ping)
        if self.dispatch.stopping:
            wake_at.append(self.stop_deadline)
        elif self.listener_retry is not None and self.listener_retry.retry_at is not None:
            wake_at.append(self.listener_retry.retry_at)
        if read_at is not None:
            wake_at.append(read_at)
        if self.status_dirty and self.notifier.enabled:
            wake_at.append(self.status_sent + STATUS_EVERY)
        if self.metrics is not None and (closing := self.metrics.http.next_deadline()):
            wake_at.append(closing)  # a metrics connection's deadline
        first = min(wake_at, default=math.inf) - now
        # Wake-ups that only lead to a poll are of no use while every worker is busy.
        if self.timer is None and self.next_alarm is not None and self.dispatch.can_read():
            first = min(first, self.next_alarm - DISPATCH_LEAD - time.time())
        if math.isinf(first):
            return None
        return min(max(first, 0.0), 86400.0)

    # -- workers -------------------------------------------------------------------------------

    def _spawn(self) -> WorkerProcess:
        # The child forgets the tracker's queue (its fork hook): the parent sends what it has.
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            parent_sock.close()
            self._close_in_worker()
            worker_main(self.jobs, Channel(child_sock))
        child_sock.close()
        worker = WorkerProcess(pid, Channel(parent_sock))
        self.workers.append(worker)
        self.dispatch.add_worker(pid)
        self.selector.register(parent_sock, selectors.EVENT_READ, self._on_worker(worker))
        log.debug("worker %d started", pid)
        return worker

    def _close_in_worker(self) -> None:
        """In a new worker: drop the parent's descriptors (so EOF on a channel means death)."""
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self.signal_r)
        os.close(self.signal_w)
        self.listener.detach()  # not close(): the parent keeps listening
        if self.timer is not None:
            self.timer.close()
        self.notifier.close()
        if self.metrics is not None:
            self.metrics.http.close_in_child()  # the parent answers scrapes
        for other in self.workers:
            other.channel.close()

    def _on_worker(self, worker: WorkerProcess) -> Callable[[selectors.SelectorKey], None]:
        def readable(_key: selectors.SelectorKey) -> None:
            self._read_worker(worker)

        return readable

    def _read_worker(self, worker: WorkerProcess) -> None:
        if worker not in self.workers:
            return  # killed and forgotten earlier in this round of events
        messages, alive = worker.channel.receive(block=False)
        for message in messages:
            if "start" in message:
                worker.current = message["start"]
                worker.timeout = message["timeout"]
                worker.current_step = message["step"]
                timeout = message["timeout"]
                worker.deadline = None if timeout is None else message["at"] + timeout
                continue
            reports = self._reports([message])
            if any(r.instance_id == worker.current for r in reports):
                worker.deadline = None
            if "done" in message:
                self._batch_done(worker, reports, message)
            else:
                self.dispatch.on_steps(reports, time.monotonic())
                worker.ready |= "ready" in message
        if not alive:
            self._lost(worker, timed_out=False)

    def _reports(self, messages: list[dict[str, Any]]) -> list[StepReport]:
        """The steps that ``messages`` report, each logged (and counted in the metrics)."""
        reports = [StepReport(*line) for m in messages for line in m.get("steps", ())]
        for report in reports:
            self._log_step(report)
            if self.metrics is not None:
                self.metrics.observe(report)
        return reports

    def _batch_done(
        self, worker: WorkerProcess, reports: list[StepReport], message: dict[str, Any]
    ) -> None:
        worker.current, worker.deadline = None, None
        error = message["error"]
        if error is not None:
            log.error("worker %d: %s", worker.pid, error)
        now, now_m = time.time(), time.monotonic()
        held = {  # wall-clock refill times (None: a slot) as monotonic times
            i: None if t is None else now_m + (t - now) for i, t in message["held"].items()
        }
        self.dispatch.on_done(
            worker.pid, reports, now_m, busy=set(message["busy"]), error=error, held=held
        )
        self.status_dirty = True
        if self.dispatch.stopping:
            _shut(worker)

    def _time_out(self, worker: WorkerProcess) -> None:
        instance_id, seconds, step = worker.current, worker.timeout, worker.current_step
        log.warning(
            "%s ran past its timeout of %gs: killing worker %d", instance_id, seconds, worker.pid,
            extra={"event": "timeout", "instance": instance_id, "worker": worker.pid},
        )  # fmt: skip
        self._kill(worker)
        replacement = self._lost(worker, timed_out=True)
        if instance_id is None or seconds is None:
            return
        request = {"time_out": [instance_id, seconds, step]}
        if replacement is not None:
            # Recorded by a worker: exhausting the retries may call the app's on_error.
            self.dispatch.assign_time_out(replacement.pid, instance_id)
            self._send(replacement, request)
        else:  # stopping: no new worker; record it here rather than lose the attempt
            try:
                engine = self.jobs.engine  # our own write need not wake us: no waker
                engine.time_out(instance_id, seconds, step, engine.hooks._replace(waker=None))
            except DurajobsError as exc:
                log.error("%s: recording the timeout failed: %s", instance_id, exc)

    def _kill(self, worker: WorkerProcess) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGKILL)

    def _lost(self, worker: WorkerProcess, *, timed_out: bool) -> WorkerProcess | None:
        """A worker died (or was killed): reap it, free its instances, maybe replace it."""
        self._kill(worker)  # EOF on its channel with the process alive (closed fds?): end it
        _, status = os.waitpid(worker.pid, 0)
        self.workers.remove(worker)
        # Reports it sent before dying (a step that committed just before the kill).
        now = time.monotonic()
        self.dispatch.on_steps(self._reports(worker.channel.receive(block=False)[0]), now)
        self.selector.unregister(worker.channel.sock)
        worker.channel.close()
        self.status_dirty = True
        stopping = self.dispatch.stopping
        crashed = not timed_out and not (stopping and os.WIFEXITED(status))
        if not worker.ready:
            failed_start = os.WIFEXITED(status) and os.WEXITSTATUS(status) == WORKER_START_FAILED
            self.early_deaths += 1
            if failed_start or self.early_deaths > EARLY_DEATHS_MAX:
                # It cannot open the database (or keeps dying): replacing it would only loop.
                log.error(
                    "worker %d %s before it was ready: exiting", worker.pid, _describe(status)
                )
                self.dispatch.on_lost(worker.pid, now, crashed=False)
                self.exit_code = 1
                return None
            log.warning("worker %d %s before it was ready: replacing it", worker.pid,
                        _describe(status))  # fmt: skip
        else:
            self.early_deaths = 0
        if crashed:
            what = worker.current or ", ".join(self._batch(worker)) or "nothing"
            log.error("worker %d %s while running %s", worker.pid, _describe(status), what,
                      extra={"event": "worker_lost", "worker": worker.pid})  # fmt: skip
        self.dispatch.on_lost(worker.pid, now, crashed=crashed, current=worker.current)
        if stopping:
            return None
        return self._spawn()

    def _kill_all(self) -> None:
        for worker in list(self.workers):
            self._kill(worker)
            os.waitpid(worker.pid, 0)
            self.selector.unregister(worker.channel.sock)
            worker.channel.close()
            self.workers.remove(worker)
            self.dispatch.on_lost(worker.pid, time.monotonic(), crashed=False)

    def _batch(self, worker: WorkerProcess) -> Sequence[str]:
        """The instance ids ``worker`` runs (none when idle)."""
        return list(self.dispatch.batch_of(worker.pid) or ())

    def _send(self, worker: WorkerProcess, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # it died: its EOF reaches _lost, which frees the batch
            worker.channel.send(message)

    # -- reading the database ------------------------------------------------------------------

    def _poll(self) -> None:
        """Read what is due, hand it to idle workers, and arm the timer for the next alarm."""
        now, now_m = time.time(), time.monotonic()
        if self.dispatch.spread and now_m >= self.next_census:
            # Other daemons on the database (PostgreSQL): spread the reads from the first.
            self.next_census = now_m + DAEMON_CENSUS_EVERY
            with contextlib.suppress(StorageError):  # (the read below reports the database)
                self.dispatch.on_daemons(daemons_serving(self.jobs.location, self.store) or 1)
        limit = self.dispatch.begin_read(now_m)
        prefixes = self.jobs.engine.prefixes
        held = self.dispatch.held_jobs()
        if held:  # flow control holds them: read past their due steps
            prefixes = tuple(p for p in prefixes if p.split(":")[1] not in held)
        try:
            rows = self.store.due(now + DISPATCH_LEAD, limit, prefixes)
            seen_all = len(rows) < limit
            upcoming = self.store.next_due(len(rows), prefixes) if seen_all else []
        except StorageError as exc:
            self.dispatch.on_read_failed(now_m, str(exc))
            return
        self.dispatch.on_due(rows, now_m, complete=seen_all, wall=now)
        for pid, batch in self.dispatch.assignments(time.monotonic()):
            worker = next(w for w in self.workers if w.pid == pid)
            self._send(worker, {"run": list(batch.steps), "at": batch.due_at})
        self.due_count = len(rows)
        self.next_alarm = upcoming[len(rows)] if len(upcoming) > len(rows) else None
        if self.timer is not None:
            self.timer.arm(None if self.next_alarm is None else self.next_alarm - DISPATCH_LEAD)
        self.status_dirty = True

    def _maybe_prune(self) -> None:
        """Prune old history and keys when awake anyway and no alarm is about to fire."""
        now = time.monotonic()
        if now - self.last_prune < PRUNE_EVERY:
            return
        if self.next_alarm is not None and self.next_alarm - time.time() < 1.0:
            return
        self.last_prune = now
        wall = time.time()
        try:
            self.store.prune(wall - self.jobs.history_retention, wall - self.jobs.key_window)
        except StorageError as exc:
            log.warning("pruning history failed (next try in %gs): %s", PRUNE_EVERY, exc)

    # -- events --------------------------------------------------------------------------------

    def _listen(self) -> None:
        """(Re)register the wake listener's descriptor (a PostgreSQL reconnect changes it)."""
        fd = self.listener.fileno()
        if fd == self.listener_fd:
            return
        if self.listener_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.listener_fd)
        self.selector.register(fd, selectors.EVENT_READ, self._on_wake)
        self.listener_fd = fd

    def _listener_lost(self, exc: BaseException) -> None:
        """LISTEN's session is gone and the server is away: poll on a backoff meanwhile."""
        if self.listener_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.listener_fd)
            self.listener_fd = None
        retry = self.listener_retry or Backoff(None, 0.0, "wake-ups lost")
        if self.listener_retry is None:
            log.warning("wake-ups lost (%s); reconnecting, and polling meanwhile", _one_line(exc))
        retry.delay = min(max(retry.delay * 2, 0.05), 5.0)
        retry.retry_at = time.monotonic() + retry.delay
        self.listener_retry = retry
        self.dispatch.on_alarm()

    def _relisten(self) -> None:
        try:
            self.listener.drain()  # reconnects (and LISTENs) or raises
            self._listen()
        except (StorageError, OSError) as exc:
            self._listener_lost(exc)
            return
        log.info("wake-ups back")
        self.listener_retry = None
        self.dispatch.on_alarm()  # a notification may have been missed: rescan

    def _on_wake(self, _key: selectors.SelectorKey) -> None:
        try:
            self.listener.drain()
            self._listen()
        except (StorageError, OSError) as exc:
            self._listener_lost(exc)
        self.dispatch.on_wake(time.monotonic())

    def _on_timer(self, _key: selectors.SelectorKey) -> None:
        assert self.timer is not None
        self.timer.clear()
        self.dispatch.on_alarm()

    def _on_signals(self, _key: selectors.SelectorKey) -> None:
        try:
            data = os.read(self.signal_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum == signal.SIGHUP:
                if not self.dispatch.stopping:
                    self._poll()
                log.info("SIGHUP: %s", self._status_text())
                self.notifier.send(f"STATUS={self._status_text()}")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._on_stop_signal(signum)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.dispatch.stopping:
            log.warning("second %s: killing %d worker(s), exiting at once with %d", name,
                        len(self.workers), 128 + signum)  # fmt: skip
            self._kill_all()
            self.exit_code = 128 + signum
            return
        self.dispatch.on_stop()
        self.stop_deadline = time.monotonic() + self.grace
        self.notifier.send("STOPPING=1")
        if self.timer is not None:
            self.timer.arm(None)
        log.info("%s: stopping; waiting up to %gs for %d running batch(es)", name, self.grace,
                 self.dispatch.busy(), extra={"event": "stopping"})  # fmt: skip
        for worker in self.workers:
            if not self._batch(worker):
                _shut(worker)

    # -- reporting -----------------------------------------------------------------------------

    def _log_step(self, step: StepReport) -> None:
        self.steps_done += 1
        self.last_report = step
        self.status_dirty = True
        level = (
            logging.INFO if step.error is None else OUTCOME_LEVEL.get(step.outcome, logging.ERROR)
        )
        if not log.isEnabledFor(level):
            return
        job = self.jobs.registry.get(step.job)
        threshold = JOB_LOG_LEVEL.get(job.logging or "", logging.DEBUG) if job else logging.DEBUG
        if level >= threshold:  # the job's own ``logging`` level, e.g. "warning" or "off"
            log.log(level, "%s", format_step(step), extra=step_fields(step))

    def _last_step(self) -> str:
        if self.last_report is None:
            return "none yet"
        text = format_step(self.last_report)
        return text if len(text) < 200 else text[:199] + "…"

    def _status_text(self) -> str:
        busy = self.dispatch.busy()
        state = "stopping" if self.dispatch.stopping else "serving"
        return (
            f"{state}: {busy}/{len(self.workers)} workers busy, {self.due_count} due, next alarm "
            f"{_when(self.next_alarm)}, {self.steps_done} steps; last: {self._last_step()}"
        )


def _priority_order(
    registry: Mapping[str, Definition],
) -> Callable[[list[DueRow], float], list[DueRow]] | None:
    """The dispatcher's order of due rows: higher priority first, with aging (``None``
    without priorities: as read, earliest due first)."""
    priorities = {name: job.priority for name, job in registry.items() if job.priority}
    if not priorities:
        return None
    return lambda rows, wall: prioritized(
        rows, lambda row: priorities.get(row.job, 0), lambda row: row.due_at, wall
    )


def _sleep_until(epoch: float) -> None:
    """Sleep until the wall clock reads ``epoch`` (a few ms at most: dispatch lead)."""
    epoch = min(epoch, time.time() + 10 * DISPATCH_LEAD)  # bounded, even if the clock jumped
    while (left := epoch - time.time()) > 0:
        time.sleep(left)


def _shut(worker: WorkerProcess) -> None:
    """Close the parent's sending side: the worker exits when it reads EOF."""
    with contextlib.suppress(OSError):  # already gone: its EOF reaches the loop anyway
        worker.channel.sock.shutdown(socket.SHUT_WR)


def _note_signal(_signum: int, _frame: Any) -> None:
    """Python-level handler: nothing to do, ``set_wakeup_fd`` already told the loop."""


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "none"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


# -- entry point -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``durajobs-daemon`` console script."""
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        jobs = open_jobs(load_app(args.app), args.db)
    except (AppError, DurajobsError) as exc:
        if args.log_level == "debug" and exc.__cause__ is not None:
            log.debug("details", exc_info=exc.__cause__)
        print(f"durajobs-daemon: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE if isinstance(exc, AppError) else 1) from None
    # One daemon per SQLite file: a kernel lock on the claim file, held while this process
    # lives (whatever happens to the wake socket), released by the kernel when it dies. On
    # PostgreSQL any number of daemons, on any number of hosts, serve one database together.
    if not jobs.engine.locks.hold_daemon_lock():
        print(f"durajobs-daemon: another daemon already serves {jobs.path}", file=sys.stderr)
        raise SystemExit(1)
    metrics = None
    if args.metrics is not None:
        try:
            metrics = MetricsServer.open(jobs.location, *args.metrics)
        except ImportError as exc:  # durajobs.metrics.MetricsUnavailable
            print(f"durajobs-daemon: --metrics: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        except OSError as exc:
            host, port = args.metrics
            print(f"durajobs-daemon: cannot serve metrics on {host}:{port}: {exc}",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(1) from None
        log.info(
            "metrics on http://%s/metrics, health on http://%s/healthz",
            metrics.address, metrics.address, extra={"event": "metrics"},
        )  # fmt: skip
    try:
        daemon = Daemon(jobs, workers=args.workers, grace=args.grace, metrics=metrics)
    except StorageError as exc:  # PostgreSQL: LISTEN's session cannot be opened
        print(f"durajobs-daemon: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        print(f"durajobs-daemon: cannot bind the wake socket: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(daemon.serve())


if __name__ == "__main__":
    main()
