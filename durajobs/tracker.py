"""An optional HTTP batch tracker: ships history records to a collector as JSON batches.

Theory of operation
-------------------
durajobs runs no threads and no event loop, so the tracker cannot send in the background. The
engine hands it each step's history records right after the step commits (:meth:`Tracker.add`)
and the tracker decides, from its buffer and its clock, whether this is a good moment to send.
Everything happens synchronously in the calling process, within limits that keep a step fast:

* ``add`` makes **at most one request** per call, and only when a full batch is waiting or
  ``flush_interval`` seconds have passed since the last attempt. A backlog (after an outage)
  drains one batch per step, which outpaces the few records a step produces; ``flush`` and
  ``close`` drain everything.
* A request that fails transiently (connection refused, timeout, HTTP 408, 429 or 5xx, a
  redirect, anything unexpected) keeps its records and starts an exponential backoff: 1 s, 2 s,
  4 s, ... up to ``backoff_max`` (longer when the server sends ``Retry-After`` in seconds, never
  past ``backoff_max``). No request is made before the backoff ends, so a down collector costs one
  failed attempt per backoff period, not one per step. The worst a step pays is one request that
  waits ``timeout`` seconds (name resolution is not covered by the timeout: prefer an endpoint
  whose host resolves reliably, or an IP address).
* Any other 4xx (400, 401, 413, ...) is permanent: that batch is dropped (counted in
  ``rejected``, logged once per status code) so one bad record cannot wedge the queue.
* The buffer is bounded by ``max_buffer``; when it is full the oldest records go first (counted
  in ``dropped``).
* After construction nothing here raises: telemetry never fails a step.

Delivery is at least once and in order. A batch whose response was lost (a timeout after the
server got it) is sent again, so a collector should deduplicate on the records' own fields
(``instance_id``, ``step``, ``event``). Records still buffered when the process exits are lost
unless :meth:`Tracker.close` or :meth:`Tracker.flush` gets them out; a long-running process (the
daemon) should call ``flush()`` before it goes to sleep, which costs nothing while backing off.

Wire format: ``POST <endpoint>`` with ``Content-Type: application/json``,
``Authorization: Bearer <service_key>``, ``User-Agent: durajobs/<version>`` and the body
``{"env": "<env>", "sent_at": "2026-01-02T03:04:05.678Z", "records": [...]}``, at most
``batch_size`` records per request. Records are encoded to JSON when they are added
(``default=str`` for odd values), so later changes to the caller's dicts do not leak into a
batch, and a record that cannot be encoded is rejected on its own.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from email.message import Message
from http.client import HTTPMessage
from importlib import metadata
from typing import IO, Any, Final, Literal

import attrs

from durajobs.errors import ValidationError

__all__ = ["Tracker"]

logger = logging.getLogger("durajobs.tracker")

_BACKOFF_BASE: Final = 1.0  # seconds before the first retry; doubles per consecutive failure
_MAX_BACKOFF_EXPONENT: Final = 62  # 2**62 s is past any backoff_max; avoids float overflow
_TRANSIENT_CLIENT_ERRORS: Final = frozenset({408, 429})  # 4xx codes worth retrying


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


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into an error.

    urllib would follow a 301/302/303 for a POST as a body-less GET and report success, silently
    losing the batch; a misconfigured endpoint must show up as a failure instead.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class Tracker:
    """Buffers history records and POSTs them to an HTTP collector in JSON batches.

    Pass one to ``Jobs(..., tracker=Tracker(endpoint, env, service_key))``; the engine calls
    :meth:`add` after each commit and :meth:`close` when it closes. Times (``now``, ``clock``)
    are monotonic seconds, not wall-clock datetimes.

    Attributes:
        endpoint: The collector's URL (``http`` or ``https``).
        env: The environment name sent with every batch (``"production"``, ``"staging"``).
        sent: Records delivered (answered with 2xx).
        failures: Requests that failed transiently; their records were kept for a retry.
        rejected: Records dropped as permanently unacceptable: answered with a 4xx other than
            408/429, or not encodable as JSON.
        dropped: Records dropped because the buffer was full (oldest first).
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
            timeout: Seconds a request may wait on the network (per connect and per read).
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
        self._opener = urllib.request.build_opener(_RefuseRedirects())
        self._endpoint_for_logs = _redact(endpoint)
        self._env_json = json.dumps(env)

        self._buffer: deque[str] = deque()  # records, already encoded as JSON
        self._last_attempt_at = self._clock()
        self._retry_at = -math.inf  # no request before this time (backoff)
        self._failure_streak = 0  # consecutive transient failures
        self._overflow_warned = False
        self._warned_statuses: set[int] = set()

    def __repr__(self) -> str:
        return (
            f"Tracker(endpoint={self._endpoint_for_logs!r}, env={self.env!r}, "
            f"pending={self.pending}, sent={self.sent}, failures={self.failures})"
        )

    @property
    def pending(self) -> int:
        """The number of records buffered and not yet delivered."""
        return len(self._buffer)

    def add(self, records: Sequence[Mapping[str, Any]], now: float | None = None) -> None:
        """Buffer records and send one batch if one is due.

        A batch is due when ``batch_size`` records are waiting or ``flush_interval`` seconds
        have passed since the last attempt, and no backoff is running. At most one request is
        made per call. ``add([])`` is a cheap tick that sends a due partial batch.

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
                self._append(encoded)
        if not self._buffer:
            return
        at = self._clock() if now is None else now
        if at < self._retry_at:
            return
        full = len(self._buffer) >= self._batch_size
        if full or at - self._last_attempt_at >= self._flush_interval:
            self._send(at, clock_given=now is not None, max_requests=1)

    def flush(self, now: float | None = None, *, force: bool = False) -> bool:
        """Send every buffered record now, in batches, stopping at the first transient failure.

        Args:
            now: The current time in the clock's monotonic seconds; read from the clock if
                omitted.
            force: Send even while a backoff is running (at most one failed attempt still
                ends the flush).

        Returns:
            True when the buffer is empty afterwards.

        Raises:
            Nothing: telemetry never fails a step; problems are counted and logged.
        """
        if not self._buffer:
            return True
        at = self._clock() if now is None else now
        if force or at >= self._retry_at:
            self._send(at, clock_given=now is not None, max_requests=None)
        return not self._buffer

    def close(self) -> None:
        """Make one last best-effort flush, ignoring any backoff.

        The tracker holds no open resources, so it stays usable after ``close``.

        Raises:
            Nothing: records that cannot be delivered are logged as lost.
        """
        if not self.flush(force=True):
            logger.warning(
                "tracker: closing with %d undelivered records for %s",
                len(self._buffer),
                self._endpoint_for_logs,
            )

    # -- internals --------------------------------------------------------------------------

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

    def _append(self, encoded: str) -> None:
        if len(self._buffer) >= self._max_buffer:
            self._buffer.popleft()
            self.dropped += 1
            if not self._overflow_warned:
                self._overflow_warned = True
                logger.warning(
                    "tracker: buffer full (%d records); dropping the oldest until %s accepts "
                    "batches again",
                    self._max_buffer,
                    self._endpoint_for_logs,
                )
        self._buffer.append(encoded)

    def _send(self, at: float, *, clock_given: bool, max_requests: int | None) -> None:
        requests = 0
        while self._buffer and (max_requests is None or requests < max_requests):
            batch = list(itertools.islice(self._buffer, self._batch_size))
            outcome = self._post(batch)
            requests += 1
            # Backoff runs from the end of the attempt: a request that waited `timeout` seconds
            # must not be followed at once by another one.
            finished_at = at if clock_given else self._clock()
            self._last_attempt_at = finished_at
            if outcome.kind == "transient":
                self._on_transient_failure(outcome, finished_at)
                return
            for _ in batch:
                self._buffer.popleft()
            if outcome.kind == "delivered":
                self._on_delivered(len(batch))
            else:
                self._on_rejected(len(batch), outcome)

    def _post(self, batch: list[str]) -> _Outcome:
        request = urllib.request.Request(
            self.endpoint,
            data=self._envelope(batch),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self._service_key}",
                "User-Agent": USER_AGENT,
            },
        )
        try:
            with self._opener.open(request, timeout=self._timeout):
                pass  # any 2xx: the body, if any, carries nothing we need
        except urllib.error.HTTPError as error:
            error.close()
            return _classify(error.code, error.headers)
        except Exception as error:
            # Broad on purpose: urllib and http.client raise URLError, OSError, TimeoutError,
            # HTTPException, ssl errors and ValueError for network trouble, and a collector that
            # is down or misbehaving must never fail a step. Every such failure is transient:
            # the records are kept and the backoff limits the cost of retrying.
            return _Outcome("transient", reason=_describe(error))
        return _Outcome("delivered")

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
            len(self._buffer),
            delay,
        )

    def _reset_backoff(self) -> None:
        self._failure_streak = 0
        self._retry_at = -math.inf


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
    if isinstance(error, urllib.error.URLError) and not isinstance(error.reason, str):
        error = error.reason
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
