"""Prometheus metrics (``pip install 'durajobs[metrics]'``): ``GET /metrics`` of ``durajobs serve``
and of the daemon's ``--metrics HOST:PORT``, in the Prometheus text format.

Theory of operation
-------------------
Two sorts of series, and which process reports which:

- *What the store holds*, read from the database at every scrape by a custom collector, with
  the same values whichever process serves them (``durajobs serve``, the daemon):

  ``durajobs_instances{job,kind,status}`` (gauge): instances per job and status. ``status`` is
  the stored one (``running``, ``debouncing``, ``active``, ``idle``, ``failed`` = parked), or
  ``failing`` (a Continuous instance whose last run failed and was skipped: ``admin.is_failing``;
  counted there, not under ``running``), or ``paused`` (paused instances, or all of a paused
  job's: counted under their status too).
  Every status a job's kind can have is reported, zeros included, so ``> 0`` alerts work.
  ``durajobs_overdue_instances`` (gauge): alarms more than 60 s late (``doctor``'s
  threshold). ``durajobs_store_up`` (gauge): 1 when the store answered the scrape's reads, 0
  when it could not (the other store series are then absent). ``durajobs_gauges_read_seconds``
  (gauge): what those reads cost.
  One grouped statement and one count of the due index (``Admin.gauges``); at a million
  instances it stays cheap with two indexes (``durajobs.stores.sql.GAUGES``,
  ``benchmarks/bench_metrics.py``).

- *What this process did*, counted in memory by the process that runs the steps (the daemon;
  an application may feed its own ``Metrics`` the same way). The daemon calls:

  ``Metrics.observe_step(job, kind, outcome, seconds)`` once per committed step:
  ``durajobs_steps_total{job,kind,outcome}`` (counter; outcome ``ok``, ``failed``,
  ``retried``, ``parked``: ``step_outcome`` maps the engine's and the daemon's outcome names)
  and ``durajobs_step_duration_seconds{job}`` (histogram of the handlers' time).
  ``Metrics.observe_lateness(seconds)`` once per alarm step: ``durajobs_alarm_lateness_seconds``
  (histogram: how long after its due time an alarm's handlers started).
  ``durajobs serve`` runs no steps: there these series stay empty.

Serving: ``metrics_app(location, metrics)`` is a small WSGI application answering
``GET /metrics`` and ``GET /healthz`` (``durajobs.health``). ``make_server`` serves it the
ordinary way (wsgiref, one blocking request at a time, or ``serve_forever`` on a thread).
``SelectorServer`` serves it from a process's own ``selectors`` loop with no thread (the
daemon's parent, which forks): it never waits on a client::

    metrics = Metrics()                        # in the daemon, before the workers start
    app = metrics_app(db, metrics)             # reads the store with an Admin per thread
    http = SelectorServer(make_server(host, port, app), log=log)
    http.attach(selector)                      # the loop calls key.data(key) when ready,
    http.expire()                              # this after each wake-up, and sleeps at most
    http.next_deadline()                       # until this (time.monotonic() seconds)
    http.close(); app.close()                  # at exit

``SelectorServer``: connections are accepted without blocking and read from the loop
(non-blocking sockets registered in the selector) until the request head is complete; each
has ``timeout`` seconds in all (2 s: from its accept to the last byte of its answer, however
slowly it drips), then it is closed with one log line. At most ``max_connections`` are open;
beyond, the listener is left alone (the kernel's backlog holds the rest) until one closes.
A complete head is handed to wsgiref's own request handler (http.server parses it, the WSGI
app answers into a buffer) and the answer is written from the loop as the socket allows. The
app's answer is the one part that holds the loop: a scrape's read of the store (one grouped
statement and a count of the due index, 40-70 ms at 1,000,000 instances with schema 5's
indexes, ``benchmarks/bench_metrics.py``; ``/healthz`` a few more counts). Any error of a
connection (a timeout, a reset, an unparsable request, an exception in the app) is one line
through ``log``, never a traceback on stderr.

prometheus_client is imported when a ``Metrics`` is made; without it, ``MetricsUnavailable``
(an ``ImportError``) says to install ``durajobs[metrics]``.
"""

from __future__ import annotations

import io
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .errors import StorageError

if TYPE_CHECKING:
    from .admin import Admin

__all__ = [
    "OUTCOMES",
    "Metrics",
    "MetricsApp",
    "MetricsUnavailable",
    "SelectorServer",
    "make_server",
    "metrics_app",
    "step_outcome",
]  # fmt: skip

OUTCOMES = ("ok", "failed", "retried", "parked")
# Engine (``core.decision.Outcome``) and daemon (``dispatch.StepReport``) outcome names.
_OUTCOME_OF = {
    "ok": "ok", "skipped": "ok", "cleared": "ok", "nothing": "ok", "retry": "retried",
    "retried": "retried", "failed": "failed", "exhausted": "failed", "parked": "parked",
}  # fmt: skip
# Seconds: a step is usually milliseconds; a handler calling out may take seconds.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Seconds: the daemon's promise is milliseconds; a daemon behind is seconds or minutes late.
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300)
PAUSED = "paused"  # paused instances (of a paused job, or one by one): an overlay on the others
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsUnavailable(ImportError):
    """prometheus_client is not installed: ``pip install 'durajobs[metrics]'``."""


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MetricsUnavailable(
            f"the metrics need prometheus_client: pip install 'durajobs[metrics]' ({exc})"
        ) from None
    return prometheus_client


def step_outcome(outcome: str, error: str | None = None) -> str:
    """The ``outcome`` label of a step: ``ok``, ``failed``, ``retried`` or ``parked``.

    Takes the engine's or the daemon's outcome names (``retry``, ``exhausted``,
    ``terminated``...); a ``terminated`` step with an error (the ``"terminate"`` policy after
    its retries) failed, other terminations are ``ok``.
    """
    if outcome == "terminated":
        return "failed" if error else "ok"
    return _OUTCOME_OF.get(outcome, "failed" if error else "ok")


class Metrics:
    """The series of one process, and (after ``watch``) the store's gauges.

    Args:
        admin: returns the ``Admin`` each scrape reads the store with (called on the scraping
            thread); ``None``: no store series until ``watch``.
        overdue_after: seconds late before an alarm counts as overdue.

    Raises:
        MetricsUnavailable: prometheus_client is not installed.
    """

    def __init__(
        self, admin: Callable[[], Admin] | None = None, *, overdue_after: float = 60.0
    ) -> None:
        prom = _prometheus()
        self._prom = prom
        self.overdue_after = overdue_after
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.steps = prom.Counter(
            "durajobs_steps", "Steps this process committed, by outcome.",
            ["job", "kind", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.durations = prom.Histogram(
            "durajobs_step_duration_seconds", "Time of the handlers of a step.", ["job"],
            buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.lateness = prom.Histogram(
            "durajobs_alarm_lateness_seconds",
            "How long after its due time an alarm step's handlers started (daemon).",
            buckets=LATENESS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._watching = False
        self._lock = threading.Lock()
        if admin is not None:
            self.watch(admin)

    def watch(self, admin: Callable[[], Admin]) -> None:
        """Report the store's gauges, read through ``admin()`` at every scrape (once).

        Raises:
            ValueError: already watching a store.
        """
        with self._lock:
            if self._watching:
                raise ValueError("these metrics already report a store")
            self._watching = True
        self.registry.register(_StoreCollector(self._prom, admin, self.overdue_after))

    def observe_step(
        self, job: str, kind: str, outcome: str, seconds: float | None = None,
        *, error: str | None = None,
    ) -> None:  # fmt: skip
        """Count one committed step (and its handlers' time, when it ran any).

        ``outcome``: ``ok``, ``failed``, ``retried``, ``parked``, or an engine/daemon outcome
        name that ``step_outcome`` maps (with ``error``).
        """
        label = outcome if outcome in OUTCOMES else step_outcome(outcome, error)
        self.steps.labels(job, kind, label).inc()
        if seconds is not None:
            self.durations.labels(job).observe(max(0.0, seconds))

    def observe_lateness(self, seconds: float) -> None:
        """Record how late an alarm step started (daemon)."""
        self.lateness.observe(max(0.0, seconds))

    def render(self) -> bytes:
        """Every series in the Prometheus text format (``CONTENT_TYPE``)."""
        data: bytes = self._prom.generate_latest(self.registry)
        return data


class _StoreCollector:
    """The store's gauges, read at each scrape (a prometheus_client custom collector)."""

    def __init__(self, prom: Any, admin: Callable[[], Admin], overdue_after: float) -> None:
        from prometheus_client.core import GaugeMetricFamily

        self._family = GaugeMetricFamily
        self._admin = admin
        self._overdue_after = overdue_after

    def describe(self) -> list[Any]:
        return []  # no read at registration; the names are only known at a scrape

    def collect(self) -> Iterator[Any]:
        family = self._family
        up = family("durajobs_store_up", "1 when the store answered this scrape's reads.")
        started = time.perf_counter()
        try:
            gauges = self._admin().gauges(overdue_after=self._overdue_after)
        except StorageError:
            up.add_metric([], 0)
            yield up
            return
        instances = family(
            "durajobs_instances", "Instances by job, kind and status (failing: running, last "
            "run failed; failed: parked).", labels=["job", "kind", "status"],
        )  # fmt: skip
        jobs: set[tuple[str, str]] = set()
        for kind, job, status, count in gauges.counts:
            instances.add_metric([job, kind, status], count)
            jobs.add((kind, job))
        for kind, job in sorted(jobs):
            instances.add_metric([job, kind, PAUSED], gauges.paused.get((kind, job), 0))
        yield instances
        yield family(
            "durajobs_overdue_instances",
            f"Alarms more than {gauges.overdue_after:g} s past due.", value=gauges.overdue,
        )  # fmt: skip
        up.add_metric([], 1)
        yield up
        yield family(
            "durajobs_gauges_read_seconds", "Time this scrape spent reading the store.",
            value=time.perf_counter() - started,
        )  # fmt: skip


StartResponse = Callable[..., Any]


class MetricsApp:
    """A WSGI application answering ``GET /metrics`` and ``GET /healthz`` (``metrics_app``)."""

    def __init__(
        self, metrics: Metrics, admin: Callable[[], Admin], location: str,
        close: Callable[[], object] | None = None,
    ) -> None:  # fmt: skip
        self.metrics = metrics
        self._admin = admin
        self._location = location
        self._close = close

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request."""
        from .health import healthz, report

        path = str(environ.get("PATH_INFO", "")) or "/"
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method not in ("GET", "HEAD"):
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif path == "/metrics":
            status, ctype, body = "200 OK", CONTENT_TYPE, self.metrics.render()
        elif path == "/healthz":
            code, body = healthz(report(self._admin, self._location))
            status = "200 OK" if code == 200 else "503 Service Unavailable"
            ctype = "application/json"
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"/metrics or /healthz\n"
        start_response(
            status,
            [("Content-Type", ctype), ("Content-Length", str(len(body))),
             ("Cache-Control", "no-store")],
        )  # fmt: skip
        return [b"" if method == "HEAD" else body]

    def close(self) -> None:
        """Close the database connections the app opened (idempotent)."""
        if self._close is not None:
            self._close()


def metrics_app(location: str, metrics: Metrics | None = None) -> MetricsApp:
    """The WSGI application of the daemon's metrics address: ``/metrics`` and ``/healthz`` of
    the database at ``location``, read with an ``Admin`` per serving thread.

    ``metrics``: the process's own (the daemon observes its steps there); it is made to
    ``watch`` the store. Call ``close()`` on shutdown.

    Raises:
        MetricsUnavailable: prometheus_client is not installed.
        ValueError: ``metrics`` already reports a store.
    """
    from .admin import Admin
    from .perthread import PerThread

    admins = PerThread(lambda: Admin(location), Admin.close)
    metrics = metrics if metrics is not None else Metrics()
    metrics.watch(admins.get)
    return MetricsApp(metrics, admins.get, location, admins.close_all)


def make_server(host: str, port: int, app: MetricsApp) -> WSGIServer:
    """A wsgiref server of ``app`` on ``host:port`` that logs nothing (``port`` 0: any free
    one, see ``server.server_port``). Serve with ``serve_forever()`` (a thread), or from a
    selector loop with ``SelectorServer(server)`` (``handle_request()`` there would wait on a
    slow client).

    Raises:
        OSError: the address cannot be bound.
    """
    from wsgiref.simple_server import make_server as wsgiref_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server: WSGIServer = wsgiref_server(host, port, app, WSGIServer, Quiet)
    return server


_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line that ends a request head (http.server's)
_READY = selectors.EVENT_READ
_WRITABLE = selectors.EVENT_WRITE
Ready = Callable[[selectors.SelectorKey], None]


class _Connection:
    """One client of a ``SelectorServer``: its head so far, then the answer left to write."""

    __slots__ = ("address", "deadline", "head", "out", "peer", "sock")

    def __init__(self, sock: socket.socket, address: Any, deadline: float) -> None:
        self.sock = sock
        self.address = address
        self.peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        self.deadline = deadline
        self.head = bytearray()
        self.out: memoryview | None = None  # set once the answer is ready


class SelectorServer:
    """Serves a wsgiref server's app from the caller's ``selectors`` loop, never waiting on a
    client (see the module's text): ``attach``, then ``expire`` after each wake-up and sleep at
    most until ``next_deadline``.

    Args:
        server: a bound server with its app (``make_server``); its socket is made
            non-blocking.
        timeout: seconds a connection gets in all, from its accept to its answer's last byte.
        max_connections: connections open at once; the others wait in the kernel's backlog.
        max_head: bytes a request head may have.
        log: where each connection's error goes, as one line (``event="metrics"``).

    Raises:
        ValueError: ``server`` has no application.
    """

    def __init__(
        self, server: WSGIServer, *, timeout: float = 2.0, max_connections: int = 8,
        max_head: int = 16384, log: logging.Logger | None = None,
    ) -> None:  # fmt: skip
        self.server = server
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_head = max_head
        self.log = log or logging.getLogger(__name__)
        self.listener = server.socket
        self.listener.setblocking(False)
        self._selector: selectors.BaseSelector | None = None
        self._accepting = False
        self._resume_at: float | None = None  # accept() failed (EMFILE...): try again then
        self._connections: dict[socket.socket, _Connection] = {}
        self._app_error: str | None = None  # what the app raised in the request being answered
        app = server.get_app()
        if app is None:
            raise ValueError("the server has no WSGI application")

        def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            try:
                answer: Iterable[bytes] = app(environ, start_response)
            except Exception as exc:  # wsgiref answers 500 (and writes a traceback we drop)
                self._app_error = f"{type(exc).__name__}: {exc}"
                raise
            return answer

        server.set_app(guarded)

    @property
    def open_connections(self) -> int:
        """Connections accepted and not closed yet."""
        return len(self._connections)

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Watch the listening socket in ``selector`` (whose loop calls ``key.data(key)``)."""
        self._selector = selector
        self._accept_more(True)

    def next_deadline(self) -> float | None:
        """When ``expire`` has something to do (``time.monotonic()``), or ``None``."""
        times = [c.deadline for c in self._connections.values()]
        if self._resume_at is not None:
            times.append(self._resume_at)
        return min(times, default=None)

    def expire(self, now: float | None = None) -> None:
        """Close the connections past their deadline (one log line each)."""
        now = time.monotonic() if now is None else now
        for conn in [c for c in self._connections.values() if c.deadline <= now]:
            what = "read the answer" if conn.out is not None else "send a complete request"
            self._drop(conn, f"did not {what} within {self.timeout:g} s")
        if self._resume_at is not None and self._resume_at <= now:
            self._resume_at = None
            self._accept_more(len(self._connections) < self.max_connections)

    def close(self) -> None:
        """Close every connection and the listening socket (unregistering them)."""
        for conn in list(self._connections.values()):
            self._drop(conn, None)
        self._accept_more(False)
        self.server.server_close()

    def close_in_child(self) -> None:
        """After a fork, in the child: close its copies of the sockets (the parent serves)."""
        for sock in self._connections:
            sock.close()
        self._connections.clear()
        self._selector = None
        self.listener.close()

    # -- the loop's callbacks ------------------------------------------------------------------

    def _accept_more(self, on: bool) -> None:
        selector = self._selector
        if selector is None or on == self._accepting:
            return
        if on:
            selector.register(self.listener, _READY, self._on_listener)
        else:
            selector.unregister(self.listener)
        self._accepting = on

    def _on_listener(self, _key: selectors.SelectorKey) -> None:
        assert self._selector is not None
        while len(self._connections) < self.max_connections:
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors...: pause instead of spinning
                self.log.warning("metrics: cannot accept a connection: %s", exc,
                                 extra={"event": "metrics"})  # fmt: skip
                self._resume_at = time.monotonic() + 1.0
                self._accept_more(False)
                return
            sock.setblocking(False)
            conn = _Connection(sock, address, time.monotonic() + self.timeout)
            self._connections[sock] = conn
            self._selector.register(sock, _READY, self._on_readable(conn))
        self._accept_more(False)  # full: the backlog holds the next ones until one closes

    def _on_readable(self, conn: _Connection) -> Ready:
        def readable(_key: selectors.SelectorKey) -> None:
            try:
                chunk = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop(conn, f"reading the request failed: {exc}")
                return
            if not chunk:
                self._drop(conn, None if not conn.head else "closed before its request ended")
                return
            conn.head += chunk
            end = _HEAD_END.search(conn.head)
            if end is None:
                if len(conn.head) > self.max_head:
                    self._drop(conn, f"request head over {self.max_head} bytes")
                return
            self._answer(conn, bytes(conn.head[: end.end()]))

        return readable

    def _answer(self, conn: _Connection, head: bytes) -> None:
        assert self._selector is not None
        self._app_error = None
        try:  # the app's own errors are caught by wsgiref (a 500): these would be ours
            request = _BufferedRequest(head, conn.sock, conn.address, self.server)
        except Exception as exc:
            self._drop(conn, f"answering failed: {type(exc).__name__}: {exc}")
            return
        if self._app_error is not None:
            self._note(conn, f"the app failed: {self._app_error} (answered 500)")
        elif request.traceback:  # the app's answer failed later (its iterable...)
            self._note(conn, "the app failed: " + request.traceback.splitlines()[-1])
        for problem in request.problems:
            self._note(conn, problem)
        conn.out = memoryview(request.out.getvalue())
        self._selector.modify(conn.sock, _WRITABLE, self._on_writable(conn))
        self._on_writable(conn)(None)  # usually the whole answer fits in the socket's buffer

    def _on_writable(self, conn: _Connection) -> Callable[[selectors.SelectorKey | None], None]:
        def writable(_key: selectors.SelectorKey | None) -> None:
            out = conn.out
            assert out is not None
            try:
                sent = conn.sock.send(out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop(conn, f"writing the answer failed: {exc}")
                return
            conn.out = out = out[sent:]
            if not out:
                self._drop(conn, None)

        return writable

    def _note(self, conn: _Connection, message: str) -> None:
        """One log line (an error's own line breaks become spaces)."""
        self.log.warning("metrics: connection from %s: %s", conn.peer, " ".join(message.split()),
                         extra={"event": "metrics"})  # fmt: skip

    def _drop(self, conn: _Connection, error: str | None) -> None:
        """Close ``conn``; ``error``: why, logged as one line."""
        if self._connections.pop(conn.sock, None) is None:
            return  # closed already
        if error is not None:
            self._note(conn, error + "; closed")
        if self._selector is not None:
            self._selector.unregister(conn.sock)
        conn.sock.close()
        if self._resume_at is None:
            self._accept_more(len(self._connections) < self.max_connections)


class _BufferedRequest(WSGIRequestHandler):
    """wsgiref's handler on a head already read, answering into a buffer: nothing here touches
    the socket (``SelectorServer`` reads and writes it from its loop). ``problems``: a bad
    request's (a 4xx was answered); ``traceback``: what wsgiref wrote of an app's failure."""

    def __init__(self, head: bytes, sock: socket.socket, address: Any, server: WSGIServer) -> None:
        self.head = head
        self.out = io.BytesIO()
        self.errors = io.StringIO()  # wsgiref writes an app's traceback here
        self.problems: list[str] = []
        super().__init__(sock, address, server)
        self.traceback = self.errors.getvalue().strip()

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self.head)
        self.wfile = self.out

    def finish(self) -> None:
        pass  # the buffers stay open: the caller takes the answer

    def get_stderr(self) -> io.StringIO:
        return self.errors

    def log_error(self, format: str, *args: Any) -> None:
        self.problems.append("bad request: " + format % args)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log
