"""The HTTP batch tracker against a real HTTP collector on loopback.

The collector runs in a thread of the test process (the library itself stays thread-free). Time
is a fake monotonic clock: backoff windows are crossed by advancing it, never by sleeping.
``add`` never waits on the network, so a request it started is finished by later ``add([])``
ticks (``tick_until``) or by ``flush``.
"""

from __future__ import annotations

import decimal
import json
import logging
import socket
import ssl
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import pytest
from waiting import wait_for

from durajobs.errors import ValidationError
from durajobs.tracker import Tracker

SERVICE_KEY = "sk_test_123"


@attrs.frozen
class Received:
    method: str
    path: str
    headers: Message
    body: dict[str, Any]


class Collector:
    """A real HTTP server on 127.0.0.1 that records each POST and answers from a script.

    ``hold()`` makes it a slow collector: each POST is received (``requests``) but answered
    only once ``release()`` is called (or after a minute).
    """

    def __init__(self, port: int = 0) -> None:
        self.requests: list[Received] = []
        self.answered = 0
        self.script: deque[tuple[int, dict[str, str]]] = deque()  # default: 200
        self.go = threading.Event()
        self.go.set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                # Recorded before answering, so the client sees it once its request returns.
                collector.requests.append(
                    Received("POST", self.path, self.headers, json.loads(body))
                )
                collector.go.wait(timeout=60)  # a slow collector while held
                collector.answered += 1
                status, headers = collector.script.popleft() if collector.script else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:  # only a followed redirect would GET
                collector.requests.append(Received("GET", self.path, self.headers, {}))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/records"

    def hold(self) -> None:
        self.go.clear()

    def release(self) -> None:
        self.go.set()

    def respond(self, *statuses: int | tuple[int, dict[str, str]]) -> None:
        for status in statuses:
            self.script.append(status if isinstance(status, tuple) else (status, {}))

    def stop(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class FakeMonotonic:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "event": "job.executed",
        "instance_id": f"continuous:x:{n}",
        "job": "x",
        "kind": "continuous",
        "attempt": 1,
        "duration_ms": 1.2,
        "error": None,
        "at": "2026-01-02T03:04:05.000Z",
        "step": n,
        **extra,
    }


def tick_until(tracker: Tracker, condition: Callable[[], object], what: str) -> None:
    """Call ``add([])`` (which moves a request along, never waiting) until ``condition``."""

    def ticked() -> object:
        tracker.add([])
        return condition()

    wait_for(ticked, what=what)


def steps(records: list[dict[str, Any]]) -> list[int]:
    return [r["step"] for r in records]


def all_steps(collector: Collector) -> list[int]:
    return [r["step"] for req in collector.requests for r in req.body["records"]]


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours *_proxy variables; the collector is on loopback and must be reached directly.
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.stop()


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def make_tracker(clock: FakeMonotonic) -> Callable[..., Tracker]:
    def make(endpoint: str, **options: Any) -> Tracker:
        return Tracker(endpoint, "staging", SERVICE_KEY, clock=clock, **options)

    return make


@pytest.fixture
def connection_attempts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every TCP connection the client opens (a non-blocking ``connect_ex``)."""
    attempts: list[Any] = []
    real = socket.socket.connect_ex

    def counting(self: socket.socket, address: Any) -> int:
        attempts.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect_ex", counting)
    return attempts


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the wire format -------------------------------------------------------------------------


def test_a_batch_arrives_with_envelope_headers_and_order(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url)
    tracker.add([record(1), record(2)])
    tracker.add([record(3)])

    assert collector.requests == []  # neither a full batch nor flush_interval yet
    assert tracker.flush() is True

    assert len(collector.requests) == 1
    request = collector.requests[0]
    assert request.path == "/v1/records"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == f"Bearer {SERVICE_KEY}"
    assert request.headers["User-Agent"].startswith("durajobs/")
    assert set(request.body) == {"env", "sent_at", "records"}
    assert request.body["env"] == "staging"
    sent_at = datetime.fromisoformat(request.body["sent_at"])
    assert request.body["sent_at"].endswith("Z")
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 60
    assert request.body["records"] == [record(1), record(2), record(3)]
    assert (tracker.sent, tracker.failures, tracker.pending) == (3, 0, 0)


def test_odd_values_are_sent_as_strings_and_unencodable_records_are_rejected_alone(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url)
    circular: dict[str, Any] = record(2)
    circular["self"] = circular
    odd = record(1, at=datetime(2026, 1, 2, tzinfo=UTC), cost=decimal.Decimal("1.50"))

    tracker.add([odd, circular, record(3, duration_ms=float("nan")), record(4)])
    odd["step"] = 99  # a later change by the caller does not leak into the batch
    assert tracker.flush() is True

    assert steps(collector.requests[0].body["records"]) == [1, 4]
    first = collector.requests[0].body["records"][0]
    assert first["at"] == "2026-01-02 00:00:00+00:00"
    assert first["cost"] == "1.50"
    assert (tracker.sent, tracker.rejected) == (2, 2)


# -- when add() sends ------------------------------------------------------------------------


def test_add_sends_when_a_batch_is_full(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url, batch_size=3)
    tracker.add([record(1), record(2)])
    assert tracker.waiting_on() is None  # no request started
    tracker.add([record(3)])
    tick_until(tracker, lambda: tracker.sent == 3, "the full batch delivered")
    assert [steps(r.body["records"]) for r in collector.requests] == [[1, 2, 3]]


def test_add_sends_a_partial_batch_once_flush_interval_has_passed(
    collector: Collector, make_tracker: Callable[..., Tracker], clock: FakeMonotonic
) -> None:
    tracker = make_tracker(collector.url, flush_interval=5.0)
    tracker.add([record(1)])
    clock.advance(4.999)
    tracker.add([])
    assert tracker.waiting_on() is None
    assert tracker.due_in() == pytest.approx(0.001)
    clock.advance(0.001)
    tracker.add([])
    tick_until(tracker, lambda: tracker.sent == 1, "the partial batch delivered")
    assert all_steps(collector) == [1]


def test_add_keeps_one_request_in_flight_and_drains_a_backlog_in_order(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.hold()  # the first request is received, not answered
    tracker = make_tracker(collector.url, batch_size=2)
    tracker.add([record(n) for n in range(7)])
    tick_until(tracker, lambda: collector.requests, "the first request")
    for n in range(7, 10):
        tracker.add([record(n)])  # returns at once; no second request while one is in flight
    assert len(collector.requests) == 1
    assert (tracker.pending, tracker.sent) == (10, 0)
    collector.release()
    tick_until(tracker, lambda: tracker.pending == 0, "the backlog delivered")
    assert [steps(r.body["records"]) for r in collector.requests] == [
        [0, 1], [2, 3], [4, 5], [6, 7], [8, 9],
    ]  # fmt: skip


def test_a_slow_collector_never_makes_add_wait_and_a_full_queue_drops_the_oldest(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.hold()
    tracker = make_tracker(collector.url, batch_size=2, max_buffer=6, timeout=3600.0)
    tracker.add([record(0), record(1)])
    tick_until(tracker, lambda: collector.requests, "the request that hangs")
    for n in range(2, 12):  # each add returns while the collector still holds the request
        tracker.add([record(n)])
        assert collector.answered == 0
    # Six records held at most: the two in flight and the four newest queued.
    assert (tracker.pending, tracker.dropped, tracker.sent) == (6, 6, 0)
    collector.release()
    tick_until(tracker, lambda: tracker.pending == 0, "everything left delivered")
    assert all_steps(collector) == [0, 1, 8, 9, 10, 11]


def test_flush_splits_into_batches_of_batch_size_in_order(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url, batch_size=2)
    tracker.add([record(n) for n in range(5)], now=0.0)  # starts the first full batch
    tracker.add([record(n) for n in range(5, 10)], now=0.0)
    assert tracker.flush() is True
    assert [steps(r.body["records"]) for r in collector.requests] == [
        [0, 1],
        [2, 3],
        [4, 5],
        [6, 7],
        [8, 9],
    ]
    assert tracker.sent == 10


# -- transient failures and backoff ----------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_a_transient_error_keeps_the_records_and_delivers_them_once_after_backoff(
    collector: Collector,
    make_tracker: Callable[..., Tracker],
    clock: FakeMonotonic,
    status: int,
) -> None:
    collector.respond(status, 200)
    tracker = make_tracker(collector.url)
    tracker.add([record(1), record(2)])

    assert tracker.flush() is False
    assert (tracker.failures, tracker.pending, tracker.sent) == (1, 2, 0)

    clock.advance(0.999)
    tracker.add([record(3)])
    assert tracker.flush() is False  # still backing off: no request
    assert len(collector.requests) == 1

    clock.advance(0.001)
    assert tracker.flush() is True
    assert len(collector.requests) == 2
    assert steps(collector.requests[1].body["records"]) == [1, 2, 3]
    assert (tracker.failures, tracker.sent, tracker.pending) == (1, 3, 0)


def test_backoff_doubles_up_to_backoff_max_and_resets_after_a_delivery(
    collector: Collector, make_tracker: Callable[..., Tracker], clock: FakeMonotonic
) -> None:
    collector.respond(500, 500, 500, 500, 500, 200, 500, 200)
    tracker = make_tracker(collector.url, backoff_max=5.0)
    tracker.add([record(1)])
    start = clock.now
    attempt_times = []
    for _ in range(200):  # up to 25 virtual seconds, in 0.125 s ticks
        requests_before = len(collector.requests)
        tracker.flush()
        if len(collector.requests) > requests_before:
            attempt_times.append(clock.now - start)
        if tracker.pending == 0:
            break
        clock.advance(0.125)
    # waits of 1, 2, 4, 5 (capped), 5 s between the six attempts
    assert attempt_times == [0, 1, 3, 7, 12, 17]
    assert tracker.failures == 5

    tracker.add([record(2)])
    assert tracker.flush() is False
    clock.advance(1.0)  # the streak was reset: back to a 1 s wait
    assert tracker.flush() is True


def test_retry_after_lengthens_the_backoff_up_to_backoff_max(
    collector: Collector, make_tracker: Callable[..., Tracker], clock: FakeMonotonic
) -> None:
    collector.respond((429, {"Retry-After": "10"}), (503, {"Retry-After": "3600"}), 200)
    tracker = make_tracker(collector.url, backoff_max=60.0)
    tracker.add([record(1)])
    assert tracker.flush() is False
    clock.advance(9.9)
    assert tracker.flush() is False
    assert len(collector.requests) == 1
    clock.advance(0.1)
    assert tracker.flush() is False  # the 503 asks for an hour; backoff_max caps it
    clock.advance(59.9)
    assert tracker.flush() is False
    assert len(collector.requests) == 2
    clock.advance(0.1)
    assert tracker.flush() is True


def test_flush_force_ignores_the_backoff(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.respond(500)
    tracker = make_tracker(collector.url)
    tracker.add([record(1)])
    assert tracker.flush() is False
    assert tracker.flush() is False
    assert len(collector.requests) == 1
    assert tracker.flush(force=True) is True
    assert len(collector.requests) == 2


def test_a_down_endpoint_never_raises_backs_off_and_delivers_when_it_returns(
    make_tracker: Callable[..., Tracker],
    clock: FakeMonotonic,
    connection_attempts: list[tuple[str, int]],
) -> None:
    port = closed_port()
    tracker = make_tracker(f"http://127.0.0.1:{port}/v1/records")

    for n in range(1000):  # all within the first backoff window
        tracker.add([record(n)])
    tick_until(tracker, lambda: tracker.failures == 1, "the refused connection noticed")
    assert len(connection_attempts) == 1  # made when the first batch filled up
    assert (tracker.failures, tracker.pending, tracker.sent) == (1, 1000, 0)

    clock.advance(0.999)
    tracker.add([record(1000)])
    assert len(connection_attempts) == 1
    clock.advance(0.001)
    tracker.add([record(1001)])
    assert len(connection_attempts) == 2
    tick_until(tracker, lambda: tracker.failures == 2, "the second failure: now a 2 s wait")
    clock.advance(1.999)
    for n in range(1002, 1100):
        tracker.add([record(n)])
    assert tracker.flush() is False
    assert len(connection_attempts) == 2
    assert tracker.failures == 2

    collector = Collector(port)
    try:
        clock.advance(0.001)
        assert tracker.flush() is True
        assert all_steps(collector) == list(range(1100))
        assert len(collector.requests) == 11
        assert (tracker.sent, tracker.pending, tracker.failures) == (1100, 0, 2)
    finally:
        collector.stop()


def test_add_makes_no_resolver_call_and_builds_no_tls_context_even_after_a_failure(
    make_tracker: Callable[..., Tracker],
    clock: FakeMonotonic,
    monkeypatch: pytest.MonkeyPatch,
    connection_attempts: list[Any],
) -> None:
    # getaddrinfo blocks on DNS and a TLS context reads the CA certificates (tens of ms):
    # both belong to construction and to flush/close/idle, never to add (a step).
    resolved: list[Any] = []
    contexts: list[Any] = []
    real_getaddrinfo, real_context = socket.getaddrinfo, ssl.create_default_context

    def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
        resolved.append(args[0])
        return real_getaddrinfo(*args, **kwargs)

    def create_default_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        contexts.append(args)
        return real_context(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(ssl, "create_default_context", create_default_context)
    port = closed_port()
    tracker = make_tracker(f"http://localhost:{port}/v1/records", batch_size=2)
    secure = make_tracker(f"https://localhost:{port}/v1/records", batch_size=2)
    assert (resolved, len(contexts)) == (["localhost", "localhost"], 1)  # construction

    tracker.add([record(1), record(2)])  # a full batch: the first attempt, refused
    tick_until(tracker, lambda: tracker.failures == 1, "the refused connection noticed")
    secure.add([record(1), record(2)])
    tick_until(secure, lambda: secure.failures == 1, "the refused TLS connection noticed")
    for n in range(3, 6):  # each backoff over: attempts again, with the addresses it has
        clock.advance(300)
        attempts = len(connection_attempts)
        tracker.add([record(n)])
        assert len(connection_attempts) == attempts + 1
        tick_until(tracker, lambda n=n: tracker.failures == n - 1, f"attempt {n - 1} refused")
    assert (resolved, len(contexts)) == (["localhost", "localhost"], 1)  # none in add

    collector = Collector(port)
    try:
        clock.advance(300)
        tracker.idle()  # where waiting is allowed: the name is resolved again
        assert resolved == ["localhost"] * 3
        assert tracker.flush() is True
        assert all_steps(collector) == [1, 2, 3, 4, 5]
    finally:
        collector.stop()


def test_a_timeout_is_a_transient_failure(make_tracker: Callable[..., Tracker]) -> None:
    # A listener that never accepts: the connection opens, the answer never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        tracker = make_tracker(f"http://127.0.0.1:{port}/v1/records", timeout=0.2)
        tracker.add([record(1)])
        assert tracker.flush() is False
    assert (tracker.failures, tracker.pending) == (1, 1)


def test_a_redirect_is_not_followed_and_keeps_the_records(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    # urllib would replay a redirected POST as a body-less GET and call it a success.
    collector.respond((302, {"Location": "/elsewhere"}))
    tracker = make_tracker(collector.url)
    tracker.add([record(1)])
    assert tracker.flush() is False
    assert [(r.method, r.path) for r in collector.requests] == [("POST", "/v1/records")]
    assert (tracker.failures, tracker.pending, tracker.sent) == (1, 1, 0)


# -- permanent errors and overflow -----------------------------------------------------------


def test_a_client_error_drops_that_batch_and_warns_once(
    collector: Collector,
    make_tracker: Callable[..., Tracker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector.respond(400, 400, 200)
    tracker = make_tracker(collector.url, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="durajobs.tracker"):
        tracker.add([record(n) for n in range(6)], now=0.0)
        assert tracker.flush(now=0.0) is True

    assert [steps(r.body["records"]) for r in collector.requests] == [[0, 1], [2, 3], [4, 5]]
    assert (tracker.rejected, tracker.sent, tracker.failures) == (4, 2, 0)
    warnings = [r for r in caplog.records if r.name == "durajobs.tracker"]
    assert len(warnings) == 1
    assert "HTTP 400" in warnings[0].getMessage()
    assert SERVICE_KEY not in caplog.text


def test_a_full_buffer_drops_the_oldest_records(
    make_tracker: Callable[..., Tracker], clock: FakeMonotonic
) -> None:
    collector = Collector()
    port = collector.port
    collector.stop()
    tracker = make_tracker(f"http://127.0.0.1:{port}/v1/records", max_buffer=5)

    tracker.add([record(n) for n in range(3)])
    tracker.add([record(n) for n in range(3, 8)])
    assert (tracker.dropped, tracker.pending) == (3, 5)

    collector = Collector(port)
    try:
        assert tracker.flush() is True
        assert all_steps(collector) == [3, 4, 5, 6, 7]
    finally:
        collector.stop()


# -- close -----------------------------------------------------------------------------------


def test_close_flushes_what_is_left(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url)
    tracker.add([record(1), record(2)])
    assert collector.requests == []
    tracker.close()
    assert all_steps(collector) == [1, 2]
    assert tracker.pending == 0


def test_close_tries_once_even_while_backing_off(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.respond(503)
    tracker = make_tracker(collector.url)
    tracker.add([record(1)])
    assert tracker.flush() is False
    tracker.close()
    assert tracker.sent == 1
    assert len(collector.requests) == 2


def test_close_on_a_down_endpoint_does_not_raise(
    make_tracker: Callable[..., Tracker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = make_tracker(f"http://127.0.0.1:{closed_port()}/v1/records")
    tracker.add([record(1)])
    with caplog.at_level(logging.WARNING, logger="durajobs.tracker"):
        tracker.close()
    assert tracker.pending == 1
    assert "1 undelivered records" in caplog.text


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "field"),
    [
        (("ftp://127.0.0.1/x", "e", "k"), {}, "endpoint"),
        (("127.0.0.1:8080/x", "e", "k"), {}, "endpoint"),
        (("http://127.0.0.1:port/x", "e", "k"), {}, "endpoint"),
        (("http://127.0.0.1/x", "", "k"), {}, "env"),
        (("http://127.0.0.1/x", "e", ""), {}, "service_key"),
        (("http://127.0.0.1/x", "e", "k\r\nX-Evil: 1"), {}, "service_key"),
        (("http://127.0.0.1/x", "e", "k"), {"batch_size": 0}, "batch_size"),
        (("http://127.0.0.1/x", "e", "k"), {"max_buffer": 0}, "max_buffer"),
        (("http://127.0.0.1/x", "e", "k"), {"timeout": 0}, "timeout"),
        (("http://127.0.0.1/x", "e", "k"), {"flush_interval": -1}, "flush_interval"),
        (("http://127.0.0.1/x", "e", "k"), {"backoff_max": float("inf")}, "backoff_max"),
    ],
)
def test_bad_configuration_is_a_validation_error(
    args: tuple[str, str, str], options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        Tracker(*args, **options)


def test_repr_does_not_show_the_service_key() -> None:
    tracker = Tracker("http://user:pw@127.0.0.1/x?token=t", "prod", SERVICE_KEY)
    assert SERVICE_KEY not in repr(tracker)
    assert "pw" not in repr(tracker)
    assert "token" not in repr(tracker)


# -- https -----------------------------------------------------------------------------------


@pytest.fixture
def tls_collector(tmp_path: Any) -> Iterator[tuple[Collector, str]]:
    """The collector behind TLS, with a self-signed certificate for 127.0.0.1 (its file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = Collector()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)
    yield server, str(cert)
    server.stop()


def test_https_is_sent_over_a_verified_tls_connection(
    tls_collector: tuple[Collector, str],
    make_tracker: Callable[..., Tracker],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector, cert = tls_collector
    url = collector.url.replace("http://", "https://")
    untrusted = make_tracker(url)
    untrusted.add([record(1)])
    with caplog.at_level(logging.WARNING, logger="durajobs.tracker"):
        assert untrusted.flush() is False  # the certificate is not trusted: a transient failure
    assert (untrusted.failures, untrusted.pending) == (1, 1)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text

    monkeypatch.setenv("SSL_CERT_FILE", cert)  # trusted by the default context
    tracker = make_tracker(url, batch_size=2)
    tracker.add([record(1), record(2)])  # starts the handshake, never waits for it
    tick_until(tracker, lambda: tracker.sent == 2, "the batch delivered over TLS")
    assert all_steps(collector) == [1, 2]
    assert collector.requests[0].headers["Authorization"] == f"Bearer {SERVICE_KEY}"


# -- threads ---------------------------------------------------------------------------------


def test_threads_adding_at_once_deliver_every_record_once_in_each_threads_order(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    tracker = make_tracker(collector.url, batch_size=7, flush_interval=0)

    def steps_of(thread: int) -> None:
        for n in range(200):
            tracker.add([record(thread * 1000 + n)])

    threads = [threading.Thread(target=steps_of, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tracker.flush() is True
    delivered = all_steps(collector)
    assert sorted(delivered) == sorted(t * 1000 + n for t in range(4) for n in range(200))
    for t in range(4):
        assert [s for s in delivered if s // 1000 == t] == [t * 1000 + n for n in range(200)]
    assert (tracker.sent, tracker.pending, tracker.dropped) == (800, 0, 0)


def test_add_never_waits_for_another_threads_flush(
    collector: Collector, make_tracker: Callable[..., Tracker]
) -> None:
    collector.hold()
    tracker = make_tracker(collector.url, timeout=3600.0)
    tracker.add([record(1)])
    flushing = threading.Thread(target=tracker.flush)
    flushing.start()  # waits on the collector, holding the tracker
    wait_for(lambda: collector.requests, what="the flush's request")
    tracker.add([record(2)])  # returns at once: the record waits for the flush's thread
    assert flushing.is_alive()
    assert (collector.answered, tracker.pending) == (0, 2)
    collector.release()
    flushing.join()
    assert tracker.flush() is True
    assert all_steps(collector) == [1, 2]
