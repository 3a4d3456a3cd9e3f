"""The dashboard as one WSGI application: a small router, one handler per route, Jinja2 views.

Theory of operation
-------------------
The web layer is as thin as the CLI: every handler reads or acts through ``Admin`` (the same
code as ``durajobs ls``, ``show``, ``retry``...) and renders a template; there is no business
logic here or in JavaScript.

- *Threads.* A WSGI server serves requests on threads; each thread gets its own ``Admin`` (so
  its own database connections), opened on first use and closed by ``close()``.
- *Live pages.* A live region of a page polls its own URL with ``fragment=1&v=TOKEN`` (htmx
  ``every Ns``). ``TOKEN`` is taken before the page's data is read, from a change counter of
  the database (``Admin.change_token`` on one long-lived connection) and the time rounded to
  30 s (relative times such as "in 4m" must move on too). A poll whose token is still current
  answers ``204 No Content``: htmx swaps nothing, and the server read no table. Otherwise the
  region is rendered again with the new token in its own poll URL.
- *Actions* are POSTs of plain HTML forms (they work without JavaScript); the answer is a
  redirect back to the instance page (``303``) or, for bulk actions, a confirmation page, then a
  page of results. Bulk actions take at most ``BULK_CAP`` instances.
- *Safety*: see ``security``: the ``authorize`` hook runs first; POSTs must be same-origin
  and are refused (403) when read-only; every response carries the security headers; the
  templates autoescape every value.
- *Prefix.* Links are built from ``SCRIPT_NAME``, so the app works mounted under any path.
"""

from __future__ import annotations

import json
import mimetypes
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

import attrs
import jinja2

from durajobs.admin import (
    FAILING,
    FINISHED_STATUSES,
    KINDS,
    LIST_STATUSES,
    STATUSES,
    ActionResult,
    ActivityBucket,
    Admin,
    FinishedPage,
    InstanceDetail,
    InstancePage,
    Stats,
    error_summary,
    parse_instance_id,
    relative,
    short_duration,
)
from durajobs.clock import Clock
from durajobs.core.steps import safe_text
from durajobs.errors import (
    DurajobsError,
    InstanceBusyError,
    InstanceNotFoundError,
    InvalidStateError,
    StorageError,
    ValidationError,
)
from durajobs.health import healthz as health_json
from durajobs.health import report as health_report
from durajobs.perthread import PerThread
from durajobs.stores import display_location

from .charts import bar_chart

if TYPE_CHECKING:
    from durajobs.metrics import Metrics
from .security import SECURITY_HEADERS, Authorize, host_allowed, host_name, same_origin

__all__ = ["BULK_CAP", "Dashboard", "make_app", "mount"]

StartResponse = Callable[..., Any]
BULK_CAP = 100  # instances one bulk action may touch
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_BODY = 1 << 20  # bytes of a POST body
HISTORY_SHOWN = 50
POLL_LIST = "every 3s"
POLL_OVERVIEW = "every 5s"
STATS_MIN_AGE = 2.0  # seconds the overview's counts are reused at least
SETTLE = 10.0  # seconds after a period ends before its activity counts are taken as final
TOKEN_PERIOD = 30.0  # seconds: a live region re-renders at least this often (relative times)
ACTIONS = (
    "retry", "trigger", "flush", "clear", "terminate", "pause", "resume", "pause_job",
    "resume_job",
)  # fmt: skip
DONE = {
    "retry": "Retry requested: the work is due now and left for the daemon.",
    "trigger": "Triggered: the run is due now and left for the daemon.",
    "flush": "Flush requested: it is due now and left for the daemon.",
    "clear": "Cleared: the batch was discarded.",
    "pause": "Paused: no alarm step of this instance runs until it is resumed.",
    "resume": "Resumed: what it missed is due now and left for the daemon.",
    "pause_job": "Job paused: no alarm step of any of its instances runs until it is resumed.",
    "resume_job": "Job resumed: what its instances missed is due now.",
}  # a terminate needs no banner: the page of a gone instance says so
JOB_CHOICES = 200  # job names the Job filter offers at most


@attrs.frozen(slots=True)
class Response:
    """What a handler answers."""

    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


_REASONS = {
    200: "OK", 204: "No Content", 303: "See Other", 304: "Not Modified", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 413: "Content Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}  # fmt: skip


class HTTPError(Exception):
    """Answer ``status`` with an error page saying ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """The parts of a WSGI environ the handlers use."""

    def __init__(self, environ: dict[str, Any], role: str) -> None:
        self.environ = environ
        self.method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        self.path = str(environ.get("PATH_INFO", "")) or "/"
        self.root = str(environ.get("SCRIPT_NAME", "")).rstrip("/")
        self.query = {
            key: values[-1]
            for key, values in parse_qs(str(environ.get("QUERY_STRING", ""))).items()
        }
        self.role = role
        self._form: dict[str, list[str]] | None = None

    @property
    def can_act(self) -> bool:
        """Whether this request may change anything."""
        return self.role == "admin"

    def url(self, path: str, **params: Any) -> str:
        """A link under the mount point, with the non-empty parameters as its query."""
        query = urlencode([(k, v) for k, v in params.items() if v not in (None, "")], doseq=True)
        return self.root + path + ("?" + query if query else "")

    def form(self) -> dict[str, list[str]]:
        """The POSTed ``application/x-www-form-urlencoded`` fields.

        Raises:
            HTTPError: a body too large (413) or not a form (400).
        """
        if self._form is None:
            try:
                length = int(self.environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                raise HTTPError(400, "bad Content-Length") from None
            if length > MAX_BODY:
                raise HTTPError(413, "the request body is too large")
            body = self.environ["wsgi.input"].read(length) if length > 0 else b""
            ctype = str(self.environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower()
            if body and ctype != "application/x-www-form-urlencoded":
                raise HTTPError(400, "expected a form (application/x-www-form-urlencoded)")
            form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            _check_text("form field", ((k, v) for k, values in form.items() for v in values))
            self._form = form
        return self._form

    def field(self, name: str, default: str = "") -> str:
        """One POSTed field (the last one of that name)."""
        values = self.form().get(name)
        return values[-1] if values else default


def _check_text(what: str, fields: Iterable[tuple[str, str]]) -> None:
    """Refuse a NUL character: no store holds one in text (PostgreSQL refuses it outright), so
    it is bad input (400), never a database failure (503).

    Raises:
        HTTPError: a name or value holds a NUL character (400).
    """
    for name, value in fields:
        if "\x00" in name or "\x00" in value:
            raise HTTPError(400, f"the {what} {safe_text(name)!r} contains a NUL character")


Handler = Callable[["Dashboard", Request], Response]
_ROUTES: dict[tuple[str, str], Handler] = {}


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    """Register a handler for ``method`` and an exact ``path``."""

    def register(handler: Handler) -> Handler:
        _ROUTES[(method, path)] = handler
        return handler

    return register


# -- the application ------------------------------------------------------------------------


class Dashboard:
    """The dashboard WSGI application of one database; see ``make_app``."""

    def __init__(
        self,
        location: str,
        *,
        read_only: bool = False,
        authorize: Authorize | None = None,
        clock: Clock | None = None,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.location = location
        self.read_only = read_only
        self.authorize = authorize
        self.allowed_hosts = allowed_hosts
        self.clock = clock
        # One Admin per thread, closed when its thread ends (a server may start a thread per
        # request: no connection may outlive its thread).
        self._admins = PerThread(lambda: Admin(self.location, clock=self.clock), Admin.close)
        self._lock = threading.Lock()
        self._watcher: Admin | None = None
        self._seen_version: int | None = None
        self._generation = 0
        self._stats: tuple[float, float, Stats] | None = None  # (taken at, good for, stats)
        self._metrics: Metrics | None = None
        self._buckets: dict[float, dict[float, ActivityBucket]] = {}  # width -> start -> bucket
        self._static = resources.files("durajobs.web") / "static"
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("durajobs.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["ago"] = self._ago
        self.templates.filters["at"] = _at
        self.templates.filters["ms"] = _ms
        self.templates.globals["STATUSES"] = STATUSES
        self.templates.globals["FINISHED_STATUSES"] = FINISHED_STATUSES
        self.templates.filters["summary"] = error_summary
        self.templates.globals["KINDS"] = KINDS

    # -- connections ------------------------------------------------------------------

    def admin(self) -> Admin:
        """This thread's ``Admin``, opened on first use.

        Raises:
            StorageError: the database cannot be opened.
        """
        return self._admins.get()

    def check(self) -> None:
        """Open the database now (``durajobs serve`` reports a bad location before serving).

        Raises:
            StorageError: the database cannot be opened or is not a durajobs database.
        """
        self.admin()

    def close(self) -> None:
        """Close every connection the app opened (idempotent)."""
        with self._lock:
            watcher, self._watcher = self._watcher, None
        self._admins.close_all()
        if watcher is not None:
            watcher.close()

    def metrics(self) -> Metrics:
        """The ``/metrics`` series (the store's gauges; this process runs no steps).

        Raises:
            HTTPError: prometheus_client is not installed (501, naming ``durajobs[metrics]``).
        """
        from durajobs.metrics import Metrics, MetricsUnavailable

        with self._lock:
            if self._metrics is None:
                try:
                    self._metrics = Metrics(self.admin)
                except MetricsUnavailable as exc:
                    raise HTTPError(501, str(exc)) from None
            return self._metrics

    def token(self) -> str:
        """The change token of live regions (see the module's theory of operation).

        Raises:
            StorageError: the database cannot be read.
        """
        with self._lock:
            if self._watcher is None:
                self._watcher = Admin(self.location, clock=self.clock)
            version = self._watcher.change_token()
            if version != self._seen_version:
                self._seen_version = version
                self._generation += 1
            generation = self._generation
        return f"{generation}.{int(self.now() // TOKEN_PERIOD)}"

    def stats(self, admin: Admin) -> Stats:
        """``admin.stats()``, reused for a while when counting is slow.

        Counting by status reads every instance (about 2 s at 1,000,000 here), so a result is
        kept for ten times what it cost, at least ``STATS_MIN_AGE`` seconds: a small file is
        counted at every refresh, a huge one every half minute or so.

        Raises:
            StorageError: the database cannot be read.
        """
        with self._lock:
            cached = self._stats
        started = time.monotonic()
        if cached is not None and started - cached[0] < cached[1]:
            return cached[2]
        stats = admin.stats()
        cost = time.monotonic() - started
        with self._lock:
            self._stats = (started, max(STATS_MIN_AGE, 10 * cost), stats)
        return stats

    def activity(self, admin: Admin, width: float, count: int) -> list[ActivityBucket]:
        """``admin.activity(width=..., count=...)``, reading only the periods not seen before.

        A period that ended more than ``SETTLE`` seconds ago does not change any more (history
        is only appended, with the writer's clock), so it is kept and not read again: after the
        first view, a refresh reads only the current period.

        Raises:
            StorageError: the database cannot be read.
        """
        now = self.now()
        current = (now // width) * width
        starts = [current - (count - 1 - i) * width for i in range(count)]
        with self._lock:
            known = dict(self._buckets.get(width, {}))
        missing = [start for start in starts if start not in known]
        fresh = {
            b.start.timestamp(): b
            for b in admin.activity(width=width, count=int((current - missing[0]) // width) + 1)
        }
        settled = {s: b for s, b in fresh.items() if s + width <= now - SETTLE}
        with self._lock:
            kept = self._buckets.setdefault(width, {})
            kept.update(settled)
            for start in [s for s in kept if s < starts[0]]:
                del kept[start]
        return [
            known.get(start) or fresh.get(start) or ActivityBucket(_utc(start), 0, 0)
            for start in starts
        ]

    def now(self) -> float:
        """The dashboard's clock."""
        return self.clock.time() if self.clock is not None else time.time()

    # -- WSGI -------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request."""
        head = str(environ.get("REQUEST_METHOD", "GET")).upper() == "HEAD"
        try:
            response = self._respond(environ)
        except Exception:  # a bug here must answer 500, not kill the server's thread
            environ["wsgi.errors"].write(traceback.format_exc())
            response = self._error_page(environ, 500, "internal error: see the server's log")
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *SECURITY_HEADERS,
            *response.headers,
        ]
        if not any(name == "Cache-Control" for name, _ in response.headers):
            headers.append(("Cache-Control", "no-store"))
        reason = _REASONS.get(response.status, "Unknown")
        start_response(f"{response.status} {reason}", headers)
        return [b""] if head else [response.body]

    def _respond(self, environ: dict[str, Any]) -> Response:
        if self.allowed_hosts is not None and not host_allowed(environ, self.allowed_hosts):
            name = host_name(str(environ.get("HTTP_HOST")))
            return Response(
                400,
                f"Host {name!r} is not allowed here (no DNS rebinding): start durajobs serve "
                f"with --allow-host {name} (make_app's allowed_hosts) to answer it\n".encode(),
                "text/plain; charset=utf-8",
            )
        role = "read_only" if self.read_only else "admin"
        if self.authorize is not None:
            granted = self.authorize(environ)
            if granted not in ("admin", "read_only"):
                return Response(
                    401, b"authentication required\n", "text/plain; charset=utf-8",
                    (("WWW-Authenticate", 'Basic realm="durajobs", charset="UTF-8"'),),
                )  # fmt: skip
            if granted == "read_only":
                role = "read_only"
        request = Request(environ, role)
        method = "GET" if request.method == "HEAD" else request.method
        try:
            _check_text("query parameter", request.query.items())
            if request.path.startswith("/static/") and method == "GET":
                return self._static_file(request.path.removeprefix("/static/"))
            handler = _ROUTES.get((method, request.path))
            if handler is None:
                if any(path == request.path for _, path in _ROUTES):
                    raise HTTPError(405, f"{request.method} is not allowed here")
                raise HTTPError(404, f"no page {request.path}")
            if method == "POST":
                if not request.can_act:
                    raise HTTPError(403, "this dashboard is read-only")
                if not same_origin(environ):
                    raise HTTPError(403, "cross-site request refused")
            return handler(self, request)
        except HTTPError as exc:
            return self._error_page(environ, exc.status, exc.message, request)
        except ValidationError as exc:
            return self._error_page(environ, 400, str(exc), request)
        except InstanceNotFoundError as exc:
            return self._error_page(environ, 404, str(exc), request)
        except (InvalidStateError, InstanceBusyError) as exc:
            return self._error_page(environ, 409, str(exc), request)
        except StorageError as exc:
            return self._error_page(environ, 503, str(exc), request)

    def _error_page(
        self, environ: dict[str, Any], status: int, message: str, request: Request | None = None
    ) -> Response:
        request = request or Request(environ, "read_only")
        html = self.templates.get_template("error.html").render(
            self._context(request, "Error", status=status, message=message)
        )
        return Response(status, html.encode())

    def _static_file(self, name: str) -> Response:
        if not name or "/" in name or name.startswith("."):
            raise HTTPError(404, "no such file")
        file = self._static / name
        if not file.is_file():
            raise HTTPError(404, "no such file")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "image/svg+xml"):
            ctype += "; charset=utf-8"
        return Response(200, file.read_bytes(), ctype, (("Cache-Control", "max-age=3600"),))

    # -- rendering --------------------------------------------------------------------

    def _context(self, request: Request, title: str, **values: Any) -> dict[str, Any]:
        return {
            "request": request,
            "url": request.url,
            "title": title,
            "can_act": request.can_act,
            "read_only": not request.can_act,
            "now": self.now(),
            **values,
        }

    def render(
        self, request: Request, template: str, title: str, fragment: str | None = None,
        **values: Any,
    ) -> Response:  # fmt: skip
        """Render a page, or only its live region ``fragment`` for a poll.

        Raises:
            StorageError: the database cannot be read.
        """
        context = self._context(request, title, **values)
        name = fragment if fragment and request.query.get("fragment") else template
        return Response(200, self.templates.get_template(name).render(context).encode())

    def live(self, request: Request) -> tuple[str, Response | None]:
        """The token for a live region, and a 204 answer if the poll's token is still current.

        Raises:
            StorageError: the database cannot be read.
        """
        token = self.token()
        if request.query.get("fragment") and request.query.get("v") == token:
            return token, Response(
                204, content_type="text/plain", headers=(("Vary", "HX-Request"),)
            )
        return token, None

    def poll_url(self, request: Request, token: str) -> str:
        """This page's URL asking for its live region only, as of ``token``."""
        params = {k: v for k, v in request.query.items() if k not in ("fragment", "v", "done")}
        return request.url(request.path, **params, fragment="1", v=token)

    def _ago(self, value: datetime | None) -> str:
        return "" if value is None else relative(value.timestamp(), self.now())


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _at(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S} UTC"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} ms" if value < 1000 else short_duration(value / 1000)


# -- pages ----------------------------------------------------------------------------------


@route("GET", "/")
def overview(app: Dashboard, request: Request) -> Response:
    """Counts, activity charts, the next and the overdue alarms."""
    token, unchanged = app.live(request)
    if unchanged:
        return unchanged
    admin = app.admin()
    stats = app.stats(admin)
    minutes = app.activity(admin, 60.0, 60)
    hours = app.activity(admin, 3600.0, 24)
    charts = [
        bar_chart(
            "Last hour, per minute", [(b.start, b.steps, b.failures) for b in minutes],
            label_format="%H:%M", label_every=10, unit="Minute",
        ),
        bar_chart(
            "Last day, per hour", [(b.start, b.steps, b.failures) for b in hours],
            label_format="%H:00", label_every=4, unit="Hour",
        ),
    ]  # fmt: skip
    return app.render(
        request, "overview.html", "Overview", "_overview.html",
        poll=app.poll_url(request, token), trigger=POLL_OVERVIEW, stats=stats,
        by_kind=stats.by("kind"), by_status=stats.by("status"), charts=charts,
        upcoming=admin.upcoming(10), overdue=admin.overdue(limit=10),
    )  # fmt: skip


def _list_filters(request: Request) -> dict[str, Any]:
    query = request.query
    kind = query.get("kind") or None
    status = query.get("status") or None
    if kind is not None and kind not in KINDS:
        raise ValidationError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if status is not None and status not in LIST_STATUSES + FINISHED_STATUSES:
        known = ", ".join(LIST_STATUSES + FINISHED_STATUSES)
        raise ValidationError(f"status {status!r} is not one of {known}")
    order = query.get("sort") or "id"
    if order not in ("id", "alarm"):
        raise ValidationError(f"sort {order!r} is not 'id' or 'alarm'")
    error = query.get("error", "").strip() or None
    if status in FINISHED_STATUSES and (error or order != "id"):
        raise ValidationError(
            f"status {status}: finished instances are listed newest first, without the "
            "error filter or another order"
        )
    try:
        limit = int(query.get("limit") or PAGE_SIZE)
    except ValueError:
        raise ValidationError(f"limit {query.get('limit')!r} is not a number") from None
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}")
    return {
        "kind": kind,
        "job": query.get("job") or None,
        "status": status,
        "q": query.get("q", "").strip() or None,
        "error": error,
        "sort": order if order != "id" else None,
        "limit": limit if limit != PAGE_SIZE else None,
    }


def _instance_list(app: Dashboard, request: Request, title: str, *, failed: bool) -> Response:
    filters = _list_filters(request)
    show = None
    if failed:  # parked, or with ?show=failing the failing ones
        show = FAILING if request.query.get("show") == FAILING else None
        filters["status"] = show or "failed"
    token, unchanged = app.live(request)
    if unchanged:
        return unchanged
    after = request.query.get("after") or None
    admin = app.admin()
    page: InstancePage | FinishedPage
    if filters["status"] in FINISHED_STATUSES:  # gone: read from the history
        fragment = "_finished.html"
        page = admin.finished(
            status=filters["status"], kind=filters["kind"], job=filters["job"],
            search=filters["q"], after=after, limit=filters["limit"] or PAGE_SIZE,
        )  # fmt: skip
    else:
        fragment = "_instances.html"
        page = admin.instances(
            kind=filters["kind"], job=filters["job"], status=filters["status"],
            search=filters["q"], error=filters["error"], order=filters["sort"] or "id",
            after=after, limit=filters["limit"] or PAGE_SIZE,
        )  # fmt: skip
    shown = {k: v for k, v in filters.items() if not (failed and k == "status")}
    if show:
        shown["show"] = show
    return app.render(
        request, "instances.html", title, fragment, list_template=fragment,
        poll=app.poll_url(request, token), trigger=POLL_LIST, page=page, filters=filters,
        jobs=[] if request.query.get("fragment") else known_jobs(app.admin()),
        first_url=request.url(request.path, **shown) if after else None,
        next_url=request.url(request.path, **shown, after=page.after) if page.after else None,
        failed_page=failed, bulk_cap=BULK_CAP,
    )  # fmt: skip


def known_jobs(admin: Admin, limit: int = JOB_CHOICES) -> list[tuple[str, str]]:
    """``(kind, job)`` of the jobs that have instances (``Admin.jobs``), at most ``limit``.

    Raises:
        StorageError: the database cannot be read.
    """
    return admin.jobs(limit)


@route("GET", "/instances")
def instances(app: Dashboard, request: Request) -> Response:
    """Instances filtered by kind, job, status, id prefix and error text; keyset pages."""
    return _instance_list(app, request, "Instances", failed=False)


@route("GET", "/failed")
def failed(app: Dashboard, request: Request) -> Response:
    """Parked instances, with bulk retry, clear and terminate; ``?show=failing``: the failing
    ones (running on their schedule, their last run failed)."""
    return _instance_list(app, request, "Failed", failed=True)


@route("GET", "/instance")
def instance(app: Dashboard, request: Request) -> Response:
    """One instance: status, alarm, counters, state, last error, history, actions."""
    instance_id = parse_instance_id(request.query.get("id", ""))
    token, unchanged = app.live(request)
    if unchanged:
        return unchanged
    detail: InstanceDetail = app.admin().show(instance_id, history=HISTORY_SHOWN)
    done = request.query.get("done")
    return app.render(
        request, "instance.html", instance_id, "_instance.html",
        poll=app.poll_url(request, token), trigger=POLL_LIST, detail=detail, info=detail.info,
        state_json=json.dumps(detail.state, indent=2, ensure_ascii=False, sort_keys=True),
        history=list(reversed(detail.history)), done=DONE.get(done or ""),
        actions=_actions_for(detail),
    )  # fmt: skip


def _actions_for(detail: InstanceDetail) -> list[str]:
    """The actions that make sense for the instance as it is (the server checks again)."""
    info = detail.info
    if info is None:
        return []
    if info.status == "failed":
        shown = ["retry"]
    elif info.kind == "debounce":
        shown = ["flush", "clear"]
    else:
        shown = ["trigger"]
    # A paused instance offers both resumes: its own pause or its job's may be the one.
    flow = ["resume", "resume_job"] if info.paused else ["pause", "pause_job"]
    return [*shown, *flow, "terminate"]


@route("GET", "/health")
def health(app: Dashboard, request: Request) -> Response:
    """What ``durajobs doctor`` reports."""
    report = health_report(app.admin, app.location, thorough=True)
    return app.render(
        request, "health.html", "Health", report=report, location=display_location(app.location)
    )


@route("GET", "/healthz")
def healthz(app: Dashboard, request: Request) -> Response:
    """The health checks as JSON for probes: 200 ok or degraded, 503 failing
    (``durajobs.health``; no integrity check)."""
    code, body = health_json(health_report(app.admin, app.location))
    return Response(code, body, "application/json")


@route("GET", "/metrics")
def metrics(app: Dashboard, request: Request) -> Response:
    """The Prometheus metrics (``durajobs.metrics``; needs ``durajobs[metrics]``)."""
    from durajobs.metrics import CONTENT_TYPE

    return Response(200, app.metrics().render(), CONTENT_TYPE)


# -- actions --------------------------------------------------------------------------------


def _act(admin: Admin, action: str, instance_id: str, reason: str | None) -> ActionResult:
    if action == "terminate":
        return admin.terminate(instance_id, reason or "terminated from the dashboard")
    if action in ("retry", "trigger", "flush", "clear", "pause", "resume"):
        result: ActionResult = getattr(admin, action)(instance_id)
        return result
    if action in ("pause_job", "resume_job"):  # the instance's job
        job = instance_id.split(":", 2)[1]
        return admin.pause(job) if action == "pause_job" else admin.resume(job)
    raise ValidationError(f"unknown action {action!r}: expected one of {', '.join(ACTIONS)}")


@route("POST", "/action")
def action(app: Dashboard, request: Request) -> Response:
    """One action on one instance, then back to its page."""
    instance_id = parse_instance_id(request.field("id"))
    name = request.field("action")
    _act(app.admin(), name, instance_id, request.field("reason").strip() or None)
    return Response(
        303, headers=(("Location", request.url("/instance", id=instance_id, done=name)),)
    )


@route("POST", "/bulk")
def bulk(app: Dashboard, request: Request) -> Response:
    """An action on many instances (at most ``BULK_CAP``): confirm first, then results."""
    name = request.field("action")
    if name not in ACTIONS:
        raise ValidationError(f"unknown action {name!r}: expected one of {', '.join(ACTIONS)}")
    admin = app.admin()
    more = False
    if request.field("all_failed") == "1":
        page = admin.instances(status="failed", limit=BULK_CAP)
        ids, more = [i.instance_id for i in page.instances], page.after is not None
    else:
        ids = list(dict.fromkeys(request.form().get("id", [])))
    if not ids:
        raise ValidationError("select at least one instance")
    if len(ids) > BULK_CAP:
        raise ValidationError(f"at most {BULK_CAP} instances at a time, got {len(ids)}")
    ids = [parse_instance_id(i) for i in ids]
    if request.field("confirm") != "1":
        return app.render(
            request, "confirm.html", f"Confirm {name}", action=name, ids=ids, more=more,
            bulk_cap=BULK_CAP,
        )  # fmt: skip
    results: list[tuple[str, bool, str]] = []
    for instance_id in ids:
        try:
            results.append((instance_id, True, _act(admin, name, instance_id, None).message))
        except DurajobsError as exc:  # one refusal must not stop the others
            results.append((instance_id, False, str(exc)))
    done = sum(1 for _, ok, _ in results if ok)
    return app.render(
        request, "results.html", f"Bulk {name}", action=name, results=results, done_count=done
    )


WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def mount(prefix: str, dashboard: WSGIApp, other: WSGIApp) -> WSGIApp:
    """A WSGI application sending ``prefix`` and everything under it to ``dashboard`` (with
    ``SCRIPT_NAME`` extended, so its links stay under the prefix) and the rest to ``other``.

    For hosts without a dispatcher of their own, e.g. Django's ``wsgi.py``.

    Raises:
        ValueError: ``prefix`` does not start with ``/`` or ends with one.
    """
    if not prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError(f"prefix must look like '/jobs', got {prefix!r}")

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path == prefix or path.startswith(prefix + "/"):
            environ = {
                **environ,
                "SCRIPT_NAME": str(environ.get("SCRIPT_NAME", "")) + prefix,
                "PATH_INFO": path[len(prefix) :],
            }
            return dashboard(environ, start_response)
        return other(environ, start_response)

    return application


def make_app(
    location: str | os.PathLike[str],
    *,
    read_only: bool = False,
    authorize: Authorize | None = None,
    clock: Clock | None = None,
    allowed_hosts: Iterable[str] | None = None,
) -> Dashboard:
    """The dashboard of one database as a WSGI application.

    Mount it under a prefix of another application (Flask's ``DispatcherMiddleware``, Django,
    FastAPI through ``a2wsgi.WSGIMiddleware``): links follow ``SCRIPT_NAME``. Call ``close()``
    on shutdown to close its connections.

    Args:
        location: the database: a SQLite file path or a ``postgresql://`` URL. It is opened
            on the first request.
        read_only: hide the action buttons and answer 403 to every POST.
        authorize: ``authorize(environ) -> "admin" | "read_only" | None``, asked on every
            request; ``None`` (or anything else) answers 401 with a Basic challenge,
            ``"read_only"`` makes that request read-only. Without it, everyone who can reach
            the app is admitted (fine on 127.0.0.1, or behind the host application's own
            authentication).
        clock: the clock for "due now" and relative times (tests pass a ``FakeClock``).
        allowed_hosts: the names and addresses a request's ``Host`` may name (the port is not
            compared); any other is answered 400, so that a page whose name is re-pointed to
            this server (DNS rebinding) reads and does nothing. ``"0.0.0.0"`` or ``"::"``
            allow every address literal. ``None`` answers every ``Host``: mounted in another
            application, that application checks it (Django's ``ALLOWED_HOSTS``).

    Raises:
        TypeError: ``authorize`` is not callable, or ``allowed_hosts`` is one string.
        ValueError: an empty entry in ``allowed_hosts``.
    """
    if authorize is not None and not callable(authorize):
        raise TypeError("authorize must be a callable taking the WSGI environ")
    hosts = None
    if allowed_hosts is not None:
        if isinstance(allowed_hosts, str):
            raise TypeError("allowed_hosts is a list of names, e.g. ['dash.example.com']")
        hosts = frozenset(host_name(host) for host in allowed_hosts)
        if "" in hosts:
            raise ValueError("allowed_hosts holds an empty name")
    return Dashboard(
        os.fspath(location), read_only=read_only, authorize=authorize, clock=clock,
        allowed_hosts=hosts,
    )  # fmt: skip
