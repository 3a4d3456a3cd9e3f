"""``Jobs``: a registry of job definitions bound to one database file."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from . import steps
from .client import ContinuousClient, DebounceClient, ResumeResult, TaskClient
from .clock import Clock, SystemClock
from .definitions import Continuous, Debounce, Definition, Task
from .durations import parse_duration
from .engine import Engine
from .errors import InstanceNotFoundError, InvalidStateError, JobNotFoundError
from .stores.ofd_claims import InstanceLocks
from .stores.sqlite import Store
from .tracker import Tracker
from .wake import Waker

__all__ = ["Jobs"]

log = logging.getLogger("durajobs")

PRUNE_EVERY = 600.0  # seconds of wall time between history/key pruning passes


class Jobs:
    """Job definitions bound to one SQLite database file.

    Args:
        path: the database file (created if missing; its directory must exist).
        registry: job name -> ``Continuous`` / ``Debounce`` / ``Task`` definition.
        clock: a ``FakeClock`` for virtual time; default the system clock.
        durability: ``"full"`` (default; a returned call survives power loss) or ``"normal"``.
        wait_timeout: seconds a call waits for another step of the same instance.
        busy_timeout: seconds to wait for SQLite's write lock.
        history_limit: history records kept per instance.
        history_retention: how long history of any instance is kept (duration or seconds).
        key_window: how long idempotency keys are remembered (duration or seconds).
        on_record: called after each commit with each history record (a dict); never fails a
            step.
        tracker: a ``Tracker`` that ships the same records over HTTP in batches.
        wake: poke a listening daemon after commits that set alarms.
        vfs: an apsw VFS name (for fault-injection tests).

    Raises:
        StorageError: the file cannot be opened or is not a durajobs database.
        ValueError: a job name is empty or contains ":".
        TypeError: the registry is not a mapping of definitions, or a state or event type
            cannot be stored (the message names the job).

    ``Jobs`` is not shared between threads (like a SQLite connection): create one per thread.
    Steps of one instance are still serialized across all of them.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        registry: Mapping[str, Definition],
        *,
        clock: Clock | None = None,
        durability: str = "full",
        wait_timeout: float = 30.0,
        busy_timeout: float = 5.0,
        history_limit: int = 100,
        history_retention: timedelta | str | float = "30 days",
        key_window: timedelta | str | float = "1 day",
        on_record: Callable[[dict[str, Any]], None] | None = None,
        tracker: Tracker | None = None,
        wake: bool = True,
        vfs: str | None = None,
    ) -> None:
        self._options: dict[str, Any] = {
            "durability": durability, "wait_timeout": wait_timeout, "busy_timeout": busy_timeout,
            "history_limit": history_limit, "history_retention": history_retention,
            "key_window": key_window, "on_record": on_record, "tracker": tracker, "wake": wake,
            "vfs": vfs, "clock": clock,
        }  # fmt: skip
        self._abandoned: list[Engine] = []
        self.registry = _check_registry(registry)
        self.path = os.fspath(path)
        self.clock: Clock = clock or SystemClock()
        self.on_record = on_record
        self.tracker = tracker
        self.history_retention = parse_duration(history_retention, field="history_retention")
        self.key_window = parse_duration(key_window, field="key_window")
        self._owner = threading.get_ident()
        self._closed = False
        self._last_prune = float("-inf")
        self._open()

    def _open(self) -> None:
        options = self._options  # the constructor's arguments (also for with_path)
        store = Store(
            self.path, durability=options["durability"], busy_timeout=options["busy_timeout"],
            vfs=options["vfs"],
        )  # fmt: skip
        store.key_window = self.key_window
        try:
            locks = InstanceLocks(self.path + ".lock")
        except BaseException:
            store.close()
            raise
        hooks = self.on_record is not None or self.tracker is not None
        self.engine = Engine(
            store, locks, self.registry, clock=self.clock,
            wait_timeout=options["wait_timeout"], history_limit=options["history_limit"],
            on_records=self._deliver if hooks else None,
            waker=Waker(self.path) if options["wake"] else None,
        )  # fmt: skip
        self._clients: dict[tuple[str, str], Any] = {}

    def reopen_after_fork(self) -> None:
        """In a forked child: drop the parent's connection, lock file and socket, open anew.

        The parent's objects are abandoned, not closed: closing them here could release the
        parent's SQLite locks.
        """
        self._owner = threading.get_ident()
        # Keep the parent's objects alive: if they were garbage-collected here, closing them
        # could release the parent's SQLite locks.
        self._abandoned.append(self.engine)
        self._open()

    def with_path(self, path: str | os.PathLike[str], **overrides: Any) -> Jobs:
        """A new ``Jobs`` on another file with this one's registry, settings and hooks.

        ``overrides`` replace constructor arguments (e.g. ``clock=``, ``wake=False``). The
        tracker, if any, is shared: close only one of the two objects' trackers.

        Raises:
            StorageError: the file cannot be opened.
        """
        options = {**self._options, **overrides}
        return Jobs(path, self.registry, **options)

    # -- guard ----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise InvalidStateError(f"{self.path}: this Jobs is closed")
        if threading.get_ident() != self._owner:
            raise InvalidStateError(
                "a Jobs object belongs to the thread that made it; create one Jobs per thread "
                "(steps of an instance stay serialized across them)"
            )

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
            client = self._clients[(kind, name)] = cls(self.engine, name, job, self._check)
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
        left to that process.

        Raises:
            StorageError: a commit failed (those steps stay due and run again).
        """
        self._check()
        count = self.engine.run_due()
        self._maintain()
        return count

    def next_alarm(self) -> datetime | None:
        """The earliest pending alarm of any instance, or ``None``.

        Raises:
            StorageError: the database cannot be read.
        """
        self._check()
        due = self.engine.store.next_due()
        return datetime.fromtimestamp(due[0], UTC) if due else None

    def retry(self, instance_id: str) -> ResumeResult:
        """Resume a parked instance by its full id (``"task:orders:o-1"``).

        Raises:
            InstanceNotFoundError: no such instance.
            InvalidStateError: it is not parked.
            StorageError: the database failed.
        """
        self._check()
        try:
            decision = self.engine.apply(steps.Resume(), instance_id)
        except InstanceNotFoundError:
            raise InstanceNotFoundError(f"{instance_id}: no such instance") from None
        row = decision.instance
        due = None if row is None or row.due_at is None else datetime.fromtimestamp(row.due_at, UTC)
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
        """Flush the tracker and close the database (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.tracker is not None:
            self.tracker.close()
        engine = self.engine
        engine.locks.close()
        if engine.waker is not None:
            engine.waker.close()
        engine.store.close()

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
