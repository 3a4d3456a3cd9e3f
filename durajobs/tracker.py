"""An optional HTTP batch tracker: ships history records to a collector as JSON batches.

Theory of operation
-------------------
durajobs runs no threads and no event loop, and the tracker starts none: it sends from the
calling thread, with a non-blocking socket, so a slow or dead collector never adds time to a
step and never holds a claim. The engine hands it each step's history records after the step
committed and its claim was released (:meth:`Tracker.add`). ``add`` queues them and moves the
one request in flight along by whatever the socket allows right now -- connect, TLS handshake,
send, read the response's status line -- and never waits for the network: a request spans as
many ``add`` calls (steps) as it takes. So:

* ``add`` **never blocks**. It starts at most one request per call, and only when none is in
  flight, a full batch is waiting or ``flush_interval`` seconds have passed since the last
  attempt, and no backoff is running. A backlog (after an outage) drains one batch per
  request, which outpaces the few records a step produces.
* The queue is bounded by ``max_buffer`` records (those in flight included); when it is full
  the oldest go first, counted in ``dropped``.
* A request that fails transiently (connection refused or reset, no answer within ``timeout``
  seconds, HTTP 408, 429 or 5xx, a redirect, anything unexpected) puts its records back at the
  head of the queue and starts an exponential backoff: 1 s, 2 s, 4 s, ... up to
  ``backoff_max`` (longer when the server sends ``Retry-After`` in seconds, never past
  ``backoff_max``). No request is made before the backoff ends.
* Any other 4xx (400, 401, 413, ...) is permanent: that batch is dropped (counted in
  ``rejected``, logged once per status code) so one bad record cannot wedge the queue.
* After construction nothing here raises: telemetry never fails a step.
* Threads (a ``Jobs`` shared by a web server's threads): any thread may call ``add``; one at a
  time holds the queue and the request, under a lock that ``add`` never waits for -- a thread
  that finds it taken leaves its records for the holder or the next call. ``flush`` waits
  for it.
* ``add`` makes no blocking call at all. The two that could take time are made where waiting
  is allowed: the TLS context (its certificates read from disk, tens of ms) and the name
  resolution (``getaddrinfo``, which blocks on DNS) in ``__init__`` (constructing is not a
  step); a name resolved again -- after a failed connection, or when it could not be resolved
  at construction -- only in :meth:`flush`, :meth:`close` and :meth:`idle` (the daemon's idle
  workers call it), never in ``add``. Meanwhile ``add`` tries the other addresses the name had
  (or, with none, counts the attempt as a transient failure and backs off). An application
  that only calls ``add`` (no daemon) keeps the addresses of its start until ``close``: prefer
  an endpoint whose addresses do not change, or an IP address. Proxies (``*_proxy``
  variables) are not used.

A process that stops stepping leaves its request where it was: :meth:`flush` (and
:meth:`close`, which ``Jobs.close`` calls) finish it and drain the queue, waiting on the
network up to ``timeout`` per request; :meth:`waiting_on` and :meth:`due_in` let a loop that
sleeps (the daemon's workers) wake for the tracker's socket and its next attempt instead.
After ``fork()`` the child forgets the parent's queue and request (the parent sends them).

Delivery is at least once and in order. A batch whose response was lost (a timeout after the
server got it) is sent again, so a collector should deduplicate on the records' own fields
(``instance_id``, ``step``, ``event``). Records still queued when the process exits are lost
unless :meth:`Tracker.close` or :meth:`Tracker.flush` gets them out.

Wire format: ``POST <endpoint>`` (HTTP/1.1, ``Connection: close``) with ``Content-Type:
application/json``, ``Authorization: Bearer <service_key>``, ``User-Agent: durajobs/<version>``
and the body ``{"env": "<env>", "sent_at": "2026-01-02T03:04:05.678Z", "records": [...]}``, at
most ``batch_size`` records per request. Records are encoded to JSON when they are added
(``default=str`` for odd values), so later changes to the caller's dicts do not leak into a
batch, and a record that cannot be encoded is rejected on its own.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import select
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.message import Message
from http.client import parse_headers
from importlib import metadata
from typing import Any, Final, Literal

import attrs

from durajobs.errors import ValidationError

__all__ = ["Tracker"]

logger = logging.getLogger("durajobs.tracker")

_BACKOFF_BASE: Final = 1.0  # seconds before the first retry; doubles per consecutive failure
_MAX_BACKOFF_EXPONENT: Final = 62  # 2**62 s is past any backoff_max; avoids float overflow
_TRANSIENT_CLIENT_ERRORS: Final = frozenset({408, 429})  # 4xx codes worth retrying
_MAX_RESPONSE_HEAD: Final = 65536  # a status line and headers longer than this: a failure


def _package_version() -> str:
    try:
        return metadata.version("durajobs")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


USER_AGENT: Final = f"durajobs/{_package_version()}"


@attrs.frozen
class _Outcome:
    """What became of one request."""

    kind: Literal["delivered", "rejected", "transient"]
    reason: str = ""
    status: int | None = None
    retry_after: float | None = None


class _Exchange:
    """One POST over a non-blocking socket: connect, TLS handshake, send, read the response's
    status line and headers (the body is not read; the request says ``Connection: close``).

    ``advance`` does what the socket allows now and never waits: ``None`` until finished.
    ``started`` and the timeout are in real monotonic time (the tracker's clock may be fake).
    """

    def __init__(
        self,
        address: tuple[Any, ...],
        family: int,
        request: bytes,
        tls: ssl.SSLContext | None,
        host: str,
    ) -> None:
        self.started = time.monotonic()
        self.sock: socket.socket = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self._tls = tls
        self._host = host
        self._out = memoryview(request)
        self._head = b""
        self.phase: Literal["connect", "handshake", "send", "receive"] = "connect"
        error = self.sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            raise OSError(error, os.strerror(error))

    def wants(self) -> int:
        """What the socket must become to go on: ``select.POLLIN`` or ``select.POLLOUT``."""
        if self.phase == "receive" or (self.phase == "handshake" and self._want_read):
            return select.POLLIN
        return select.POLLOUT

    _want_read = False

    def advance(self) -> _Outcome | None:
        """Go as far as the socket allows now.

        Raises:
            OSError: the connection failed (``ssl.SSLError`` included).
        """
        try:
            if self.phase == "connect":
                if not _ready(self.sock, select.POLLOUT):
                    return None
                error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error))
                if self._tls is not None:
                    self.sock = self._tls.wrap_socket(
                        self.sock, server_hostname=self._host, do_handshake_on_connect=False
                    )
                    self.phase = "handshake"
                else:
                    self.phase = "send"
            if self.phase == "handshake":
                assert isinstance(self.sock, ssl.SSLSocket)
                self.sock.do_handshake()
                self.phase = "send"
            while self.phase == "send":
                sent = self.sock.send(self._out)
                self._out = self._out[sent:]
                if not self._out:
                    self.phase = "receive"
            while True:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the collector closed the connection without answering")
                self._head += chunk
                end = self._head.find(b"\r\n\r\n")
                if end >= 0:
                    return _response(self._head[: end + 4])
                if len(self._head) > _MAX_RESPONSE_HEAD:
                    raise ConnectionError("the collector's response head is too long")
        except ssl.SSLWantReadError:
            self._want_read = True
            return None
        except ssl.SSLWantWriteError:
            self._want_read = False
            return None
        except BlockingIOError:
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _ready(sock: socket.socket, event: int, timeout_ms: int = 0) -> bool:
    poller = select.poll()
    poller.register(sock, event)
    return bool(poller.poll(timeout_ms))


def _response(head: bytes) -> _Outcome:
    status_line, _, rest = head.partition(b"\r\n")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return _Outcome("transient", reason=f"not an HTTP response: {status_line[:60]!r}")
    headers = parse_headers(io.BytesIO(rest))
    return _classify(int(parts[1]), headers)


class Tracker:
    """Queues history records and POSTs them to an HTTP collector in JSON batches, without
    ever waiting on the network in a step (see the module's notes).

    Pass one to ``Jobs(..., tracker=Tracker(endpoint, env, service_key))``; the engine calls
    :meth:`add` after each commit, its claims released, and :meth:`close` when it closes.
    Times (``now``, ``clock``) are monotonic seconds, not wall-clock datetimes.

    Attributes:
        endpoint: The collector's URL (``http`` or ``https``).
        env: The environment name sent with every batch (``"production"``, ``"staging"``).
        sent: Records delivered (answered with 2xx).
        failures: Requests that failed transiently; their records were kept for a retry.
        rejected: Records dropped as permanently unacceptable: answered with a 4xx other than
            408/429, or not encodable as JSON.
        dropped: Records dropped because the queue was full (oldest first).
    """

    endpoint: str
    env: str
    sent: int
    failures: int
    rejected: int
    dropped: int

    def __init__(
        self,
        endpoint: str,
        env: str,
        service_key: str,
        *,
        batch_size: int = 100,
        flush_interval: float = 5.0,
        timeout: float = 2.0,
        max_buffer: int = 10_000,
        backoff_max: float = 300.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Configure the tracker; nothing is sent until records arrive.

        Args:
            endpoint: The collector's ``http://`` or ``https://`` URL (ASCII; percent-encode).
            env: The environment name put in every batch.
            service_key: The bearer token sent in ``Authorization``; never logged.
            batch_size: The most records in one request.
            flush_interval: Seconds after the last attempt when ``add`` sends a partial batch.
            timeout: Seconds a request may take, from its connection to its answer.
            max_buffer: The most records held; beyond it the oldest are dropped.
            backoff_max: The longest wait, in seconds, between attempts while failing.
            clock: Monotonic seconds; defaults to :func:`time.monotonic`.

        Raises:
            ValidationError: An argument is out of range; the message names it.
        """
        _check_endpoint(endpoint)
        if not env:
            raise ValidationError("Tracker env must be a non-empty string")
        if not service_key or not service_key.isascii() or not service_key.isprintable():
            raise ValidationError(
                "Tracker service_key must be a non-empty string of printable ASCII characters"
            )
        if batch_size < 1:
            raise ValidationError(f"Tracker batch_size must be at least 1, got {batch_size}")
        if max_buffer < 1:
            raise ValidationError(f"Tracker max_buffer must be at least 1, got {max_buffer}")
        _check_seconds("flush_interval", flush_interval, allow_zero=True)
        _check_seconds("timeout", timeout, allow_zero=False)
        _check_seconds("backoff_max", backoff_max, allow_zero=True)

        self.endpoint = endpoint
        self.env = env
        self.sent = 0
        self.failures = 0
        self.rejected = 0
        self.dropped = 0

        self._service_key = service_key
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._timeout = timeout
        self._max_buffer = max_buffer
        self._backoff_max = backoff_max
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._endpoint_for_logs = _redact(endpoint)
        self._env_json = json.dumps(env)
        parts = urllib.parse.urlsplit(endpoint)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._tls = parts.scheme == "https"
        # Made here, not in a step: reading the CA certificates takes tens of milliseconds.
        self._tls_context = ssl.create_default_context() if self._tls else None
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host if parts.port is None else f"{host}:{parts.port}"
        self._addresses: list[tuple[int, tuple[Any, ...]]] = []  # see the notes
        self._resolve_again = True  # resolve the name where waiting is allowed (not in add)

        # Records, already encoded as JSON: received by ``add`` (from any thread), then queued
        # by the thread that holds the lock (it alone touches the queue and the request).
        self._incoming: deque[str] = deque()
        self._buffer: deque[str] = deque()
        self._lock = threading.Lock()  # never waited for in add(); flush() waits for it
        self._in_flight: list[str] = []  # the batch of the request in flight
        self._exchange: _Exchange | None = None
        self._last_attempt_at = self._clock()
        self._retry_at = -math.inf  # no request before this time (backoff)
        self._failure_streak = 0  # consecutive transient failures
        self._overflow_warned = False
        self._warned_statuses: set[int] = set()
        self._resolve()  # constructing is not a step: the one place it blocks unasked
        _LIVE.add(self)

    def __repr__(self) -> str:
        return (
            f"Tracker(endpoint={self._endpoint_for_logs!r}, env={self.env!r}, "
            f"pending={self.pending}, sent={self.sent}, failures={self.failures})"
        )

    @property
    def pending(self) -> int:
        """The number of records queued or in flight, not yet delivered."""
        return len(self._incoming) + len(self._buffer) + len(self._in_flight)

    def add(self, records: Sequence[Mapping[str, Any]], now: float | None = None) -> None:
        """Queue records and move the request in flight along; never waits on the network.

        A request starts when none is in flight, ``batch_size`` records are waiting or
        ``flush_interval`` seconds have passed since the last attempt, and no backoff is
        running. ``add([])`` is a cheap tick that moves a request along or starts a due one.

        Args:
            records: JSON-able dicts, in order; odd values are sent as ``str(value)``.
            now: The current time in the clock's monotonic seconds; read from the clock if
                omitted.

        Raises:
            Nothing: telemetry never fails a step; problems are counted and logged.
        """
        for record in records:
            encoded = self._encode(record)
            if encoded is not None:
                self._incoming.append(encoded)  # atomic: any thread may add at any time
        if not self._lock.acquire(blocking=False):
            return  # another thread is sending (or flushing); it takes these records too
        try:
            self._take_incoming()
            if not self._buffer and self._exchange is None:
                return
            at = self._clock() if now is None else now
            if self._exchange is not None and not self._finish(self._advance(), at):
                return  # still in flight
            if self._due(at):
                self._start(at)
                if self._exchange is not None:
                    self._finish(self._advance(), at)
        finally:
            self._lock.release()

    def flush(self, now: float | None = None, *, force: bool = False) -> bool:
        """Send every queued record now, in batches, waiting on the network (up to ``timeout``
        per request); stops at the first transient failure.

        Args:
            now: The current time in the clock's monotonic seconds; read from the clock if
                omitted.
            force: Send even while a backoff is running (at most one failed attempt still
                ends the flush).

        Returns:
            True when nothing is left to send.

        Raises:
            Nothing: telemetry never fails a step; problems are counted and logged.
        """
        with self._lock:
            self._take_incoming()
            return self._flush(now, force)

    def _flush(self, now: float | None, force: bool) -> bool:
        if self._exchange is not None and not self._wait(now):
            return False
        if self._buffer and self._resolve_again:
            self._resolve()
        if not self._buffer:
            return True
        if not force and (self._clock() if now is None else now) < self._retry_at:
            return False
        while self._buffer:
            self._start(self._clock() if now is None else now)
            if not self._wait(now):
                return False
        return True

    def close(self) -> None:
        """Make one last best-effort flush, ignoring any backoff.

        The tracker holds no resources between requests, so it stays usable after ``close``.

        Raises:
            Nothing: records that cannot be delivered are logged as lost.
        """
        if not self.flush(force=True):
            logger.warning(
                "tracker: closing with %d undelivered records for %s",
                self.pending,
                self._endpoint_for_logs,
            )

    def idle(self, now: float | None = None) -> None:
        """``add([])`` for a loop with nothing else to do (the daemon's idle worker), where
        waiting is allowed: first resolve the collector's name again if a connection failed
        since it was resolved (``getaddrinfo`` may block on DNS).

        Raises:
            Nothing: telemetry never fails a step; problems are counted and logged.
        """
        if self._resolve_again and (self._buffer or self._incoming):
            with self._lock:
                if self._exchange is None:  # a request in flight keeps its address
                    self._resolve()
        self.add([], now)

    def waiting_on(self) -> tuple[socket.socket, bool] | None:
        """The socket of the request in flight and whether it waits to be writable (else
        readable), for a loop that sleeps in ``select``; then call ``add([])``."""
        exchange = self._exchange
        if exchange is None:
            return None
        return exchange.sock, exchange.wants() == select.POLLOUT

    def due_in(self, now: float | None = None) -> float | None:
        """Seconds until ``add([])`` has something to do (0: now), or ``None`` while nothing
        is queued. A request in flight also times out after ``timeout`` seconds."""
        if self._exchange is not None:
            return max(self._exchange.started + self._timeout - time.monotonic(), 0.0)
        if not self._buffer:
            return None
        at = self._clock() if now is None else now
        next_at = max(self._retry_at, self._last_attempt_at + self._flush_interval)
        if len(self._buffer) >= self._batch_size:
            next_at = self._retry_at
        return max(next_at - at, 0.0)

    # -- internals --------------------------------------------------------------------------

    def _due(self, at: float) -> bool:
        if not self._buffer or self._exchange is not None or at < self._retry_at:
            return False
        full = len(self._buffer) >= self._batch_size
        return full or at - self._last_attempt_at >= self._flush_interval

    def _encode(self, record: Mapping[str, Any]) -> str | None:
        try:
            # ensure_ascii (the default) keeps the body pure ASCII, so a lone surrogate in a
            # string cannot make the request itself fail later and wedge the queue.
            return json.dumps(record, default=str, allow_nan=False, separators=(",", ":"))
        except Exception as error:
            # Broad on purpose: default=str runs arbitrary __str__ methods of user values, and a
            # record that cannot be encoded must never fail the step that produced it.
            self.rejected += 1
            logger.warning(
                "tracker: dropped a record that cannot be encoded as JSON (%s)",
                _describe(error),
            )
            return None

    def _take_incoming(self) -> None:
        """Move what ``add`` received into the queue (the lock is held)."""
        incoming = self._incoming
        while incoming:
            self._buffer.append(incoming.popleft())
            self._trim()

    def _trim(self) -> None:
        """Keep the queue (the batch in flight included) within ``max_buffer``."""
        while self._buffer and len(self._buffer) + len(self._in_flight) > self._max_buffer:
            self._buffer.popleft()
            self.dropped += 1
            if not self._overflow_warned:
                self._overflow_warned = True
                logger.warning(
                    "tracker: queue full (%d records); dropping the oldest until %s accepts "
                    "batches again",
                    self._max_buffer,
                    self._endpoint_for_logs,
                )

    def _start(self, at: float) -> None:
        """Take a batch from the queue and open its request (no waiting: a connect in
        progress); a failure to even start is the attempt's transient failure."""
        count = min(self._batch_size, len(self._buffer))
        self._in_flight = [self._buffer.popleft() for _ in range(count)]
        self._last_attempt_at = at
        if not self._addresses:  # no resolver call here: see _resolve
            reason = f"{self._host!r} is not resolved yet (resolved again in flush/close/idle)"
            self._finish(_Outcome("transient", reason=reason), at)
            return
        family, address = self._addresses[0]
        try:
            self._exchange = _Exchange(
                address, family, self._request(), self._tls_context, self._host
            )
        except Exception as error:  # socket creation, an immediate refusal: see _advance
            self._next_address()
            self._finish(_Outcome("transient", reason=_describe(error)), at)

    def _resolve(self) -> None:
        """Resolve the collector's name (``getaddrinfo``: it may block on DNS) -- only where
        waiting is allowed: ``__init__``, ``flush``/``close``, ``idle``. On failure the
        addresses known so far are kept and it is tried again at the next of those."""
        try:
            infos = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except Exception as error:  # socket.gaierror, UnicodeError...: never raised from here
            self._resolve_again = True
            logger.warning(
                "tracker: cannot resolve %r (%s); trying again at the next flush",
                self._host,
                _describe(error),
            )
            return
        self._addresses = [(info[0], info[4]) for info in infos]
        self._resolve_again = False

    def _next_address(self) -> None:
        """A connection failed: the next attempt tries the name's next address, and the
        name is resolved again where waiting is allowed."""
        self._addresses = self._addresses[1:] + self._addresses[:1]
        self._resolve_again = True

    def _request(self) -> bytes:
        body = self._envelope(self._in_flight)
        head = (
            f"POST {self._target} HTTP/1.1\r\n"
            f"Host: {self._host_header}\r\n"
            "Content-Type: application/json\r\n"
            f"Authorization: Bearer {self._service_key}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode("ascii") + body

    def _advance(self) -> _Outcome | None:
        """Move the request in flight along; its outcome once it has one."""
        exchange = self._exchange
        assert exchange is not None
        try:
            outcome = exchange.advance()
        except Exception as error:
            # Broad on purpose: sockets and ssl raise OSError, SSLError, ValueError and more
            # for network trouble, and a collector that is down or misbehaving must never fail
            # a step. Every such failure is transient: the records are kept, the backoff
            # limits the cost of retrying.
            if exchange.phase == "connect":
                self._next_address()  # and resolve again where waiting is allowed
            outcome = _Outcome("transient", reason=_describe(error))
        if outcome is None and time.monotonic() - exchange.started >= self._timeout:
            outcome = _Outcome("transient", reason=f"no answer within {self._timeout:g} s")
        return outcome

    def _wait(self, now: float | None) -> bool:
        """Finish the request in flight, waiting on its socket (``flush``); whether it was
        delivered or rejected (not a transient failure)."""
        while True:
            exchange = self._exchange
            if exchange is None:
                return True
            outcome = self._advance()
            if outcome is not None:
                # Backoff runs from the end of the attempt: a request that waited `timeout`
                # seconds must not be followed at once by another one.
                at = self._clock() if now is None else now
                return self._finish(outcome, at) and self._failure_streak == 0
            left = exchange.started + self._timeout - time.monotonic()
            with contextlib.suppress(OSError, ValueError):  # the next advance() reports it
                _ready(exchange.sock, exchange.wants(), max(1, math.ceil(left * 1000)))

    def _finish(self, outcome: _Outcome | None, at: float) -> bool:
        """Account for the request's outcome; whether the request is over (``None``: not)."""
        if outcome is None:
            return False
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None
        batch, self._in_flight = self._in_flight, []
        self._last_attempt_at = at
        if outcome.kind == "transient":
            self._buffer.extendleft(reversed(batch))
            self._trim()
            self._on_transient_failure(outcome, at)
        elif outcome.kind == "delivered":
            self._on_delivered(len(batch))
        else:
            self._on_rejected(len(batch), outcome)
        return True

    def _envelope(self, batch: list[str]) -> bytes:
        sent_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body = f'{{"env":{self._env_json},"sent_at":"{sent_at}","records":[{",".join(batch)}]}}'
        return body.encode("ascii")

    def _on_delivered(self, count: int) -> None:
        self.sent += count
        if self._failure_streak:
            logger.info(
                "tracker: %s accepts batches again after %d failed attempts",
                self._endpoint_for_logs,
                self._failure_streak,
            )
        self._reset_backoff()
        self._overflow_warned = False

    def _on_rejected(self, count: int, outcome: _Outcome) -> None:
        self.rejected += count
        self._reset_backoff()  # the collector answered: it is up
        status = outcome.status if outcome.status is not None else 0
        log = logger.debug if status in self._warned_statuses else logger.warning
        self._warned_statuses.add(status)
        log(
            "tracker: %s rejected a batch of %d records (%s); dropped it (%d rejected so far)",
            self._endpoint_for_logs,
            count,
            outcome.reason,
            self.rejected,
        )

    def _on_transient_failure(self, outcome: _Outcome, failed_at: float) -> None:
        self.failures += 1
        self._failure_streak += 1
        exponent = min(self._failure_streak - 1, _MAX_BACKOFF_EXPONENT)
        delay = _BACKOFF_BASE * 2.0**exponent
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        delay = min(delay, self._backoff_max)
        self._retry_at = failed_at + delay
        # Warn once per outage; the rest of the streak goes to debug to keep logs readable.
        log = logger.warning if self._failure_streak == 1 else logger.debug
        log(
            "tracker: sending to %s failed (%s); keeping %d records, next attempt in %.3g s",
            self._endpoint_for_logs,
            outcome.reason,
            self.pending,
            delay,
        )

    def _reset_backoff(self) -> None:
        self._failure_streak = 0
        self._retry_at = -math.inf

    def _forked(self) -> None:
        """In a child after ``fork()``: the parent sends what it queued; forget it."""
        if self._exchange is not None:
            self._exchange.close()  # our copy of the descriptor only; no shutdown()
            self._exchange = None
        self._incoming.clear()
        self._buffer.clear()
        self._in_flight = []
        self._lock = threading.Lock()  # another thread may have held it at the fork


_LIVE: weakref.WeakSet[Tracker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for tracker in list(_LIVE):
        tracker._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _classify(status: int, headers: Message | None) -> _Outcome:
    reason = f"HTTP {status}"
    if 200 <= status < 300:
        return _Outcome("delivered", reason=reason, status=status)
    if 400 <= status < 500 and status not in _TRANSIENT_CLIENT_ERRORS:
        return _Outcome("rejected", reason=reason, status=status)
    retry_after = _parse_retry_after(headers.get("Retry-After") if headers is not None else None)
    return _Outcome("transient", reason=reason, status=status, retry_after=retry_after)


def _parse_retry_after(value: str | None) -> float | None:
    """Read ``Retry-After`` given in seconds; the HTTP-date form is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _redact(endpoint: str) -> str:
    """The endpoint without user info, query or fragment, fit for logs."""
    parts = urllib.parse.urlsplit(endpoint)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _check_endpoint(endpoint: str) -> None:
    try:
        parts = urllib.parse.urlsplit(endpoint)
        parts.port  # noqa: B018  (a bad port raises here, not at the first request)
    except ValueError as error:
        raise ValidationError(f"Tracker endpoint {endpoint!r} is not a URL: {error}") from error
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(
            f"Tracker endpoint {endpoint!r} must be an http:// or https:// URL with a host"
        )
    if not endpoint.isascii() or not endpoint.isprintable():
        raise ValidationError(
            f"Tracker endpoint {endpoint!r} must be printable ASCII (percent-encode the rest)"
        )


def _check_seconds(field: str, value: float, *, allow_zero: bool) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "at least 0" if allow_zero else "greater than 0"
        raise ValidationError(f"Tracker {field} must be a finite number {bound}, got {value!r}")
