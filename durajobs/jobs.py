"""``Jobs``: a registry of job definitions bound to one database file.

A ``Jobs`` opens its database when it is made (a bad location fails at once, the schema is
migrated by the first writer of a new version). One exception: under ``definitions_only()``
(``durajobs check`` and ``durajobs doctor --app`` import the application under it, through
``durajobs.apploader``), ``Jobs(...)`` checks its arguments and keeps its registry but opens,
creates and migrates nothing: importing an application to learn its definitions must not
migrate the database its old daemons still serve. Such a ``Jobs`` refuses every use that
needs the database (``InvalidStateError``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from .client import (
    ContinuousClient,
    DebounceClient,
    PauseResult,
    ResumeResult,
    TaskClient,
    _set_paused,
)
from .clock import Clock, SystemClock
from .core import steps
from .core.definitions import Continuous, Debounce, Definition, Task
from .core.durations import parse_duration, to_datetime
from .core.schedules import check_fires_after
from .engine import Engine, Hooks, check_types
from .errors import InstanceNotFoundError, InvalidStateError, JobNotFoundError
from .perthread import PerThread
from .stores import (
    created_files,
    display_location,
    open_claims,
    open_slots,
    open_store,
    open_waker,
)
from .tracing import step_watch
from .tracker import Tracker

__all__ = ["Jobs", "definitions_only"]

log = logging.getLogger("durajobs")

PRUNE_EVERY = 600.0  # seconds of wall time between history/key pruning passes

_DEFINITIONS_ONLY = contextvars.ContextVar("durajobs_definitions_only", default=False)


@contextlib.contextmanager
def definitions_only() -> Iterator[None]:
    """While the block runs (in this thread), ``Jobs(...)`` opens nothing.

    It checks its arguments and keeps its registry, location and clock as usual, but opens no
    store, creates no file and migrates nothing; every use that needs the database (clients,
    ``engine``, ``run_due``, ``next_alarm``, ``retry``, ``with_path``) raises
    ``InvalidStateError``. For tools that import an application only to read its definitions
    (``durajobs check``, ``durajobs doctor --app``, through ``durajobs.apploader``).
    """
    token = _DEFINITIONS_ONLY.set(True)
    try:
        yield
    finally:
        _DEFINITIONS_ONLY.reset(token)


class Jobs:
    """Job definitions bound to one database: a SQLite file, or PostgreSQL.

    Args:
        path: the location: a SQLite file path (created if missing; its directory must
            exist), or a ``postgresql://`` / ``postgres://`` URL (libpq's parameters such as
            ``sslmode``; the password may come from the URL, ``PGPASSWORD`` or ``~/.pgpass``;
            needs ``pip install 'durajobs[postgres]'``).
        registry: job name -> ``Continuous`` / ``Debounce`` / ``Task`` definition.
        clock: a ``FakeClock`` for virtual time; default the system clock.
        durability: ``"full"`` (default; a returned call survives power loss) or ``"normal"``.
        wait_timeout: how long a call waits for another step of the same instance (a
            duration: seconds, ``"10s"``, a ``timedelta``).
        busy_timeout: how long to wait for the database's write lock (a duration).
        history_limit: history records kept per instance (at least 1).
        history_retention: how long history of any instance is kept (a duration).
        key_window: how long idempotency keys are remembered (a duration).
        on_record: called after each commit with each history record (a dict); never fails a
            step.
        tracker: a ``Tracker`` that ships the same records over HTTP in batches, after the
            step's claim is released, without ever waiting on the network.
        tracing: OpenTelemetry spans, one ``durajobs.step`` per step (extra ``otel``):
            ``None`` (default) once the application sets a global ``TracerProvider``,
            ``True`` always, a ``TracerProvider`` of its own, or ``False`` (never; see
            ``durajobs.tracing``).
        wake: poke a listening daemon after commits that set alarms.
        vfs: an apsw VFS name (for fault-injection tests).

    Raises:
        StorageError: the database cannot be opened or is not a durajobs database (the
            message names the file, or host, port and database -- never a password).
        ValueError: a job name is empty or contains ":", or an option is out of range
            (``ValidationError``: ``tracing`` asks for OpenTelemetry and it is not installed).
        TypeError: the registry is not a mapping of definitions, a state or event type cannot
            be stored (the message names the job), or an option has the wrong type.
        SchedulerError: a duration option cannot be parsed, or a Continuous job's cron can
            never fire again (its years are past).

    A ``Jobs`` may be shared by any number of threads: each thread gets its own connection
    and claim handle, opened on its first call and closed when the thread ends (the library
    starts no thread; a server that starts a thread per request keeps no more connections
    than it has live threads). One created before ``fork()`` works in the child without any
    call: the child never uses the parent's connection, claim handle or wake socket (it opens
    its own on first use). Steps of one instance stay serialized across threads, processes and
    daemons. Checks happen before anything is opened: a ``Jobs()`` that raises leaves no file
    behind. Under ``definitions_only()`` it opens nothing at all (see the module's text).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        registry: Mapping[str, Definition],
        *,
        clock: Clock | None = None,
        durability: str = "full",
        wait_timeout: timedelta | str | float = 30.0,
        busy_timeout: timedelta | str | float = 5.0,
        history_limit: int = 100,
        history_retention: timedelta | str | float = "30 days",
        key_window: timedelta | str | float = "1 day",
        on_record: Callable[[dict[str, Any]], None] | None = None,
        tracker: Tracker | None = None,
        tracing: bool | Any = None,
        wake: bool = True,
        vfs: str | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "durability": durability, "wait_timeout": wait_timeout, "busy_timeout": busy_timeout,
            "history_limit": history_limit, "history_retention": history_retention,
            "key_window": key_window, "on_record": on_record, "tracker": tracker, "wake": wake,
            "vfs": vfs, "clock": clock, "tracing": tracing,
        }  # fmt: skip
        self._closed = True  # until opened
        self.registry = _check_registry(registry)
        self._codecs = check_types(self.registry)  # an unstorable type fails before any I/O
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
        self.location = os.fspath(path)  # may hold a password: never shown
        self.path = display_location(self.location)  # what messages and repr show
        if clock is not None and not callable(getattr(clock, "time", None)):
            raise TypeError(f"clock must have a time() method (e.g. FakeClock), got {clock!r}")
        self.clock: Clock = clock or SystemClock()
        now = self.clock.time()
        for name, job in self.registry.items():
            if isinstance(job, Continuous):  # a cron whose years are all past: refused now
                check_fires_after(job.schedule, now, job=name)
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        self.wait_timeout = parse_duration(wait_timeout, field="wait_timeout")
        self.busy_timeout = parse_duration(busy_timeout, field="busy_timeout")
        if isinstance(history_limit, bool) or not isinstance(history_limit, int):
            raise TypeError(f"history_limit must be an int, got {history_limit!r}")
        if history_limit < 1:
            raise ValueError(f"history_limit must be at least 1, got {history_limit}")
        if on_record is not None and not callable(on_record):
            raise TypeError(f"on_record must be callable, got {on_record!r}")
        self.on_record = on_record
        self.tracker = tracker
        self._watch = step_watch(tracing)  # None: no span, nothing per step
        self.history_retention = parse_duration(history_retention, field="history_retention")
        self.key_window = parse_duration(key_window, field="key_window")
        self._last_prune = float("-inf")
        # One engine (connection + claim handle + wake socket) per thread, opened on first use
        # and closed when the thread ends (``durajobs.perthread``: no thread of ours watches).
        self._engines = PerThread(self._open_engine, _close_engine)
        self._clients: dict[tuple[str, str], Any] = {}
        self._definitions_only = _DEFINITIONS_ONLY.get()
        if self._definitions_only:
            self._closed = False  # open, for its definitions only: nothing to open or close
            return
        files = created_files(self.location)
        existed = {p for p in files if os.path.lexists(p)}
        self._closed = False
        try:
            self._engines.get()  # checks the database
        except BaseException:
            self._closed = True
            for leftover in files:
                if leftover not in existed:
                    with contextlib.suppress(OSError):
                        os.unlink(leftover)
            raise
        _LIVE.add(self)

    def _open_engine(self) -> Engine:
        options = self._options  # the constructor's arguments (also for with_path)
        store = open_store(
            self.location, durability=options["durability"], busy_timeout=self.busy_timeout,
            vfs=options["vfs"],
        )  # fmt: skip
        store.key_window = self.key_window
        try:
            claims = open_claims(self.location, store)
            waker = open_waker(self.location, store) if options["wake"] else None
        except BaseException:
            store.close()
            raise
        hooks = self.on_record is not None or self.tracker is not None
        return Engine(
            store, claims, self.registry, clock=self.clock, wait_timeout=self.wait_timeout,
            history_limit=options["history_limit"],
            hooks=Hooks(self._deliver if hooks else None, waker=waker, watch=self._watch),
            codecs=self._codecs,
            slots=functools.partial(open_slots, self.location),
        )  # fmt: skip

    @property
    def engine(self) -> Engine:
        """The calling thread's engine (opened on its first call in this thread or process;
        closed when the thread ends).

        Raises:
            InvalidStateError: this ``Jobs`` is closed, or was made under
                ``definitions_only()``.
            StorageError: the database cannot be opened.
        """
        if self._definitions_only:
            raise self._refused()
        if self._closed:
            raise InvalidStateError(f"{self.path}: this Jobs is closed")
        return self._engines.get()

    def _refused(self) -> InvalidStateError:
        return InvalidStateError(
            f"{self.path}: this Jobs was made under durajobs.jobs.definitions_only() (to read "
            "its definitions, e.g. by durajobs check): it opens no database"
        )

    def _forked(self) -> None:
        """In a child process right after ``fork()``: forget the parent's handles.

        The parent's connections are abandoned, never closed here (closing a SQLite
        connection could checkpoint or remove the parent's WAL), and the child's copies of the
        claim descriptors are closed at once: they share the parent's locks, and a copy kept
        open would keep a dead parent's claims alive. The child opens its own on first use.
        """
        for engine in self._engines.forget():
            # SQLite: an OFD lock lives on while any copy of its descriptor does, so close
            # ours; PostgreSQL: a connection copied by fork is left to the parent (no-op here).
            engine.locks.close()
            engine.gate.close()  # slots: as the claims
            if engine.hooks.waker is not None:
                engine.hooks.waker.abandon()
            _ABANDONED.append(engine)

    def with_path(self, path: str | os.PathLike[str], **overrides: Any) -> Jobs:
        """A new ``Jobs`` on another file with this one's registry, settings and hooks.

        ``overrides`` replace constructor arguments (e.g. ``clock=``, ``wake=False``). The
        tracker, if any, is shared: close only one of the two objects' trackers.

        Raises:
            InvalidStateError: this ``Jobs`` was made under ``definitions_only()``.
            StorageError: the file cannot be opened.
        """
        if self._definitions_only:
            raise self._refused()
        options = {**self._options, **overrides}
        return Jobs(path, self.registry, **options)

    def _engine_for_call(self) -> Engine:
        return self.engine

    # -- clients --------------------------------------------------------------------------

    def _client(self, name: str, kind: str, cls: type[Any]) -> Any:
        client = self._clients.get((kind, name))
        if client is None:
            job = self.registry.get(name)
            if job is None or job.kind != kind:
                known = ", ".join(f"{n} ({j.kind})" for n, j in sorted(self.registry.items()))
                raise JobNotFoundError(
                    f"no {kind} job named {name!r} is registered (registered: {known or 'none'})"
                )
            client = self._clients[(kind, name)] = cls(self._engine_for_call, name, job)
        return client

    def continuous(self, name: str) -> ContinuousClient[Any]:
        """The client of the Continuous job ``name``.

        Raises:
            JobNotFoundError: no Continuous job of that name is registered.
        """
        return self._client(name, "continuous", ContinuousClient)  # type: ignore[no-any-return]

    def debounce(self, name: str) -> DebounceClient[Any, Any]:
        """The client of the Debounce job ``name``.

        Raises:
            JobNotFoundError: no Debounce job of that name is registered.
        """
        return self._client(name, "debounce", DebounceClient)  # type: ignore[no-any-return]

    def task(self, name: str) -> TaskClient[Any, Any]:
        """The client of the Task job ``name``.

        Raises:
            JobNotFoundError: no Task job of that name is registered.
        """
        return self._client(name, "task", TaskClient)  # type: ignore[no-any-return]

    # -- running --------------------------------------------------------------------------

    def run_due(self) -> int:
        """Run, in this process, every step whose alarm is due at the clock's now.

        Returns the number of steps committed. Instances whose step is running elsewhere are
        left to that process; paused ones, and those their job's ``concurrency`` or ``rate``
        holds back, stay due (higher ``priority`` runs first).

        Raises:
            StorageError: a commit failed (those steps stay due and run again).
        """
        count = self.engine.run_due()
        self._maintain()
        return count

    def next_alarm(self) -> datetime | None:
        """The earliest pending alarm of an instance this registry can run, or ``None``.

        Raises:
            StorageError: the database cannot be read.
        """
        engine = self.engine
        due = engine.store.next_due(0, engine.prefixes)
        return to_datetime(due[0]) if due else None

    def pause(self, job_name: str) -> PauseResult:
        """Pause the job ``job_name``: none of its instances -- those created later too --
        runs an alarm step, in any process or host, until ``resume``. Alarms and stored
        events are kept; client calls still work (``send`` runs ``on_event``, ``add`` folds,
        ``terminate`` terminates). Per instance: the clients' ``pause``/``resume``.

        Raises:
            JobNotFoundError: no job of that name is registered.
            StorageError: the database failed.
        """
        return _set_paused(self.engine, self._job_name(job_name), True)

    def resume(self, job_name: str) -> PauseResult:
        """Resume the job ``job_name``: its alarms missed meanwhile are due now and follow
        the job's catch-up rules (instances paused one by one stay paused).

        Raises:
            JobNotFoundError: no job of that name is registered.
            StorageError: the database failed.
        """
        return _set_paused(self.engine, self._job_name(job_name), False)

    def paused(self) -> frozenset[str]:
        """The paused jobs (their names) and instances (their ids).

        Raises:
            StorageError: the database cannot be read.
        """
        return self.engine.store.paused_targets()

    def _job_name(self, job_name: str) -> str:
        if job_name not in self.registry:
            known = ", ".join(sorted(self.registry)) or "none"
            raise JobNotFoundError(f"no job named {job_name!r} is registered (registered: {known})")
        return job_name

    def retry(self, instance_id: str) -> ResumeResult:
        """Resume a parked instance by its full id (``"task:orders:o-1"``).

        Raises:
            InstanceNotFoundError: no such instance.
            InvalidStateError: it is not parked.
            StorageError: the database failed.
        """
        try:
            decision = self.engine.apply(steps.Resume(), instance_id)
        except InstanceNotFoundError:
            raise InstanceNotFoundError(f"{instance_id}: no such instance") from None
        row = decision.instance
        due = None if row is None else to_datetime(row.due_at)
        return ResumeResult(instance_id, True, due)

    def _maintain(self) -> None:
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        t = self.clock.time()
        self.engine.store.prune(t - self.history_retention, t - self.key_window)

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        hook = self.on_record
        if hook is not None:
            for record in records:
                try:
                    hook(record)
                except Exception:  # a hook must never fail a step that already committed
                    log.exception("durajobs: on_record hook raised (ignored)")
        if self.tracker is not None:
            self.tracker.add(records)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Flush the tracker and close every thread's connection (idempotent).

        Call it when no other thread is in a call on this ``Jobs``.

        Raises:
            StorageError: a final checkpoint failed (the data is safe in the WAL).
        """
        if self._closed:
            return
        self._closed = True
        _LIVE.discard(self)
        if self.tracker is not None:
            self.tracker.close()
        failures = self._engines.close_all()
        if failures:
            raise failures[-1]

    def __enter__(self) -> Jobs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Jobs({self.path!r}, {sorted(self.registry)!r})"


def _close_engine(engine: Engine) -> None:
    """Close an engine's claim handle, wake socket and connection.

    Raises:
        StorageError: the final checkpoint failed (the data is safe in the WAL).
    """
    engine.locks.close()
    engine.gate.close()
    if engine.hooks.waker is not None:
        engine.hooks.waker.close()
    engine.store.close()


_LIVE: weakref.WeakSet[Jobs] = weakref.WeakSet()  # for the fork hook
_ABANDONED: list[Engine] = []  # parents' engines in a forked child: kept alive, never closed


def _after_fork_in_child() -> None:
    for jobs in list(_LIVE):
        jobs._forked()  # the module's own hook


os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_registry(registry: Mapping[str, Definition]) -> dict[str, Definition]:
    if not isinstance(registry, Mapping):
        raise TypeError(f"registry must be a mapping of job name -> definition, got {registry!r}")
    checked: dict[str, Definition] = {}
    for name, job in registry.items():
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"job name must be a non-empty str without ':', got {name!r}")
        if not isinstance(job, Continuous | Debounce | Task):
            raise TypeError(f"job {name!r} must be Continuous, Debounce or Task, got {job!r}")
        checked[name] = job
    return checked
