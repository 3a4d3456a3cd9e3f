"""The store interface: what the engine, the clients, the daemon and the CLI may ask of a store.

Two implementations sit beside this file: ``sqlite`` (one WAL-mode file through apsw, claims as
OFD byte-range locks in ``sqlite.claims``, wake-ups over a Unix datagram socket in ``sqlite.wake``)
and ``postgres`` (psycopg 3, claims as session-level advisory locks in ``postgres.claims``, wake-ups
through ``LISTEN``/``NOTIFY``); both stores are ``sql.SqlStore``, which holds the SQL they share.
``durajobs.stores.open_store`` and friends pick one by the location string. The protocols below
are structural (``typing.Protocol``); ``tests/test_stores.py`` runs one suite against both.

The store's interface is split by audience: ``StepStore`` (what the engine uses to step
instances), ``InspectStore`` (what the CLI, the dashboard and ``Admin`` read) and ``CopyStore``
(``durajobs copy``); ``Store`` is all three, what ``open_store`` returns.

Theory of operation (the one step path, see ``durajobs.engine``)::

    claims.acquire / try_acquire(instance_id)   -> the only thing that serializes steps
    store.load / load_with_queue(instance_id)   -> read AFTER the claim, in its own statement
    ... the pure step and the user's handlers run, outside any transaction ...
    store.commit([Write, ...])                  -> one transaction, each write fenced on its step
    claims.release(token)
    waker.poke()                                -> after the commit, never inside it

What every method may assume and must guarantee is in its docstring. Two rules hold for all:

- every failure of the database is raised as ``StorageError`` naming the location (never a
  password) and the server's or library's reason; nothing else leaks (no apsw or psycopg
  exception crosses this interface);
- a write is *fenced*: it applies only if the instance is still at ``Write.expected_step``
  (or absent, for a new instance). A fenced-out write changes nothing at all (no row, no
  history, no queue change, no idempotency key) and is reported ``False``.

Capabilities: where the stores differ, the interface says so instead of being probed, and no
module outside ``durajobs/stores/`` asks which store it has (``tests/test_layering.py``). The
protocols declare what differs as members every implementation has: ``Claims.batch_claims``
(claims are round trips: claim a group at once with ``try_acquire_many``, a plain loop where
claims are cheap) and ``Claims.hold_daemon_lock`` (SQLite: one daemon per file, a kernel lock;
PostgreSQL: any number, always granted); ``Waker.abandon`` and ``WakeListener.detach`` (what a
forked child does with its parent's). What differs around a location (the files it may
create, who serves it, its health findings) is answered by functions of ``durajobs.stores``:
``created_files``, ``new_database_files``, ``refuse_directory``, ``same_database``,
``claims_may_exist``, ``daemon_listening``, ``health`` and ``serving``. ``query(sql, params)``
(a read-only raw query, in each store's own dialect) is for tests and tools, not part of it.

Copying a database between stores (``durajobs copy``, ``durajobs.copy``): ``export`` reads one
consistent snapshot of every table as batches of rows in the store-neutral layout of
``TABLE_COLUMNS``; ``import_batches`` writes such batches into an empty store in one
transaction, keeping history ids and queue seqs.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

import attrs

from durajobs.core.flow import Rate
from durajobs.core.rows import Instance, Queued, Record
from durajobs.errors import InvalidStateError

__all__ = [
    "END_EVENTS",
    "TABLES",
    "TABLE_COLUMNS",
    "Claims",
    "CopyStore",
    "ExportBatch",
    "Finding",
    "HistoryRow",
    "InspectStore",
    "Opened",
    "Slots",
    "StepStore",
    "Store",
    "WakeListener",
    "Waker",
    "Write",
    "not_empty_error",
]


class Write(NamedTuple):
    """One step's decision, described completely (the store applies it): build one with
    ``Write.step`` or ``Write.enqueue``. A NamedTuple: one is built per step, at a quarter of
    a frozen attrs class's cost.

    ``row`` is the successor (``None`` purges); ``expected_step`` the step it was computed from
    (a new instance's: the last step of its id). ``consumed`` deletes queued events up to that
    seq; ``key`` remembers an idempotency key; ``kind``/``job``/``user_id`` identify the
    instance for history and for reviving a purged Debounce instance whose events were queued
    during its flush; ``trim``: keep only the newest ``history_limit`` records of its history.
    """

    instance_id: str
    kind: str
    job: str
    user_id: str
    expected_step: int
    row: Instance | None
    records: Sequence[Record] = ()
    consumed: int = 0
    key: str | None = None
    requeue: str | None = None
    new: bool = False  # no row existed when the step began
    queue_only: bool = False  # ``Write.enqueue``'s: no row is written, nothing is fenced
    trim: bool = False
    version: int = 1  # the job definition's version ``requeue`` was encoded with

    @classmethod
    def step(
        cls, instance_id: str, job: str, user_id: str, base: int, row: Instance | None,
        records: Sequence[Record] = (), consumed: int = 0, key: str | None = None,
        requeue: str | None = None, new: bool = False, version: int = 1,
    ) -> Write:  # fmt: skip
        """A step computed from step ``base`` (``new``: no row existed): its history is
        trimmed every 32nd step. ``version``: the definition's, which ``requeue`` has."""
        kind = instance_id.partition(":")[0]
        trim = bool(records) and (row.step if row is not None else base + 1) % 32 == 0
        return cls(
            instance_id, kind, job, user_id, base, row, records, consumed, key, requeue, new,
            False, trim, version,
        )  # fmt: skip

    @classmethod
    def enqueue(
        cls, instance_id: str, job: str, user_id: str, event: str, key: str | None,
        version: int = 1,
    ) -> Write:  # fmt: skip
        """Debounce, bulk ``add_many`` on a busy instance: only queue ``event`` (with ``key``,
        written with the definition's ``version``) and make the alarm due now, as
        ``StepStore.enqueue`` does."""
        return cls(
            instance_id, "debounce", job, user_id, 0, None, (), 0, key, event, False, True,
            False, version,
        )  # fmt: skip


# The tables a copy carries and the layout of their rows (the same on every store): instances
# as ``Instance`` tuples, then queued Debounce events, idempotency keys and history, each with
# its own id (a queue seq, a history id) kept.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "instances": (
        "instance_id", "kind", "job", "user_id", "status", "state", "due_at", "scheduled_for",
        "anchor", "reason", "run_count", "attempt", "event_count", "created_at", "started_at",
        "last_error", "step", "updated_at", "version",
    ),
    "inbox": ("seq", "instance_id", "event", "added_at", "version"),
    "event_keys": ("instance_id", "key", "at"),
    "history": (
        "id", "instance_id", "at", "event", "step", "attempt", "duration_ms", "error", "data",
    ),
    "paused": ("target", "at"),  # paused jobs and instances (flow control's rate budgets are
    # not carried: a copy starts with full buckets)
}  # fmt: skip
TABLES = tuple(TABLE_COLUMNS)

# The history events that end an instance (its row is purged, the record keeps the final state):
# the stores index them (``finished_records``). Changing this tuple needs a migration of that
# index in both stores.
END_EVENTS = ("job.terminated", "debounce.flushed", "debounce.cleared")


class ExportBatch(NamedTuple):
    """Up to ``batch_size`` rows of one table of a snapshot (``durajobs copy``).

    ``rows`` are tuples in the order of ``TABLE_COLUMNS[table]``; ``counts`` is how many rows
    every table holds in the snapshot (the same in every batch of one export).
    """

    table: str
    rows: list[tuple[Any, ...]]
    counts: dict[str, int]


def not_empty_error(where: str, counts: dict[str, int]) -> InvalidStateError:
    """The refusal of ``import_batches`` into a store that already holds rows."""
    held = ", ".join(f"{n} {t}" for t, n in counts.items() if n)
    return InvalidStateError(
        f"{where}: the destination is not empty ({held}); copy into a new file or an empty database"
    )


@attrs.frozen(slots=True)
class HistoryRow:
    """One history record as stored."""

    id: int
    instance_id: str
    at: float
    event: str
    step: int
    attempt: int | None
    duration_ms: float | None
    error: str | None
    data: str | None


@attrs.frozen(slots=True)
class Finding:
    """One health finding: ``check`` names it, ``level`` is ``"ok"``, ``"info"``, ``"warn"``
    or ``"fail"``."""

    check: str
    level: str
    detail: str


class Opened(Protocol):
    """An open store, of any audience.

    Not shared between threads: ``Jobs`` opens one per thread. After ``fork()`` a store must
    never use its parent's connection: ``Jobs`` drops its handles in the child and opens new
    ones on first use (PostgreSQL's links also refuse to reuse a parent's session).

    Attributes:
        path: the location as given, printable: never contains a password.
    """

    path: str

    def schema_version(self) -> int:
        """The schema version the database is at.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def close(self) -> None:
        """Close the connection (idempotent).

        Raises:
            StorageError: closing failed (the data is safe either way).
        """
        ...


class StepStore(Opened, Protocol):
    """The step path (``durajobs.engine``): where instances, queued Debounce events,
    idempotency keys and history live. Reads take no transaction and never wait for writers;
    each write is one transaction.

    Attributes:
        key_window: seconds an idempotency key is remembered (``Jobs`` sets it after opening).
    """

    key_window: float

    def load(self, instance_id: str) -> Instance | None:
        """The committed row of an instance, or ``None``.

        Called after the claim; must be a fresh read (a statement of its own, not a snapshot
        taken before the claim was granted).

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def load_with_queue(self, instance_id: str) -> tuple[Instance | None, list[Queued]]:
        """The row and its queued events (Debounce), oldest first; ``(None, [])`` if no row.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def load_many(
        self, instance_ids: Sequence[str], *, with_queue: bool = False
    ) -> dict[str, tuple[Instance | None, list[Queued]]]:
        """``load`` (``with_queue``: ``load_with_queue``) of many instances at once, for bulk
        calls, read after their claims: every id maps to ``(row or None, queued events)``.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def last_steps(self, instance_ids: Sequence[str]) -> dict[str, int]:
        """``last_step`` of many ids at once (ids without history are left out).

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def queued(self, instance_id: str) -> list[Queued]:
        """Events stored by ``enqueue`` and not yet consumed, oldest (lowest seq) first.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def last_step(self, instance_id: str) -> int:
        """The step of the newest history record of ``instance_id`` (0 if none).

        A new incarnation of a purged id numbers its steps on from there, so ``ctx.step_key``
        never repeats while its history is kept.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def due(self, now: float, limit: int, prefixes: Sequence[str] | None = None) -> list[Instance]:
        """Up to ``limit`` instances whose alarm is at or before ``now``, earliest first.

        ``prefixes`` keeps only instance ids starting with one of them (``"kind:job:"``: the
        jobs a registry can run), so that instances of unknown jobs never crowd them out.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def due_ids(self, now: float, limit: int, prefixes: Sequence[str] | None = None) -> list[str]:
        """The ids ``due`` would return (an index-only read: the row is read after the claim).

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def next_due(self, skip: int = 0, prefixes: Sequence[str] | None = None) -> list[float]:
        """The earliest ``skip + 1`` alarm times, ascending (fewer if fewer alarms exist).

        ``prefixes``: as for ``due``.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def has_key(self, instance_id: str, key: str, now: float) -> bool:
        """Whether ``key`` was accepted for the instance at or after ``now - key_window``.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def commit(
        self, writes: Sequence[Write], now: float, history_limit: int, *, atomic: bool = False
    ) -> list[bool]:
        """Apply the writes in ONE transaction; returns, per write, whether its fence held.

        ``atomic`` (bulk calls): all or nothing -- a fenced-out or duplicate-key write raises
        ``FencedOut(index)`` and nothing of the transaction is applied.

        May assume: the caller holds the claim of every written instance, and the writes of
        one instance come in step order. Must, per write, atomically with all the others:

        - ``row`` given: insert it if no row exists, else replace the row only if its step is
          ``expected_step`` (the fence). Debounce: if events are queued after this write's own
          queue changes and the row is neither failed nor retrying (``attempt == 1``), make
          the alarm due at ``min(row.due_at, now)``.
        - ``row`` is ``None``: delete the row if its step is ``expected_step`` (a missing row
          fails the fence unless ``new``). Debounce: if events are still queued afterwards,
          insert a fresh ``debouncing`` row due ``now`` with step ``expected_step + 1``.
        - delete queued events with ``seq <= consumed``; queue ``requeue`` as a new event
          (with the write's ``version``);
        - insert ``records`` into history at ``now`` with the write's step (``row.step``, or
          ``expected_step + 1`` for a purge); if ``trim``, trim the instance's history to its
          newest ``history_limit`` records;
        - ``key``: remember the idempotency key at ``now``; a key already accepted within
          ``key_window`` fails the write (nothing of it applies).
        - ``queue_only``: append ``requeue`` to the queue (and ``key``), and set the alarm due
          ``now`` as ``enqueue`` does (creating the placeholder row if none exists).

        A fenced-out (or duplicate-key) write changes nothing and is ``False``; the others
        still commit.

        Raises:
            DuplicateEventError: a single keyed write (``len(writes) == 1``) whose key was
                taken meanwhile; nothing changed.
            RejectedWrite: write ``index`` holds a value this store cannot keep (its content,
                not the database, is at fault: text SQLite or PostgreSQL refuses, an integer
                past 64 bits); nothing of the transaction is applied, and the engine records
                that instance's failure and commits the others again.
            StorageError: the transaction failed and the database is unchanged, or (with
                "outcome unknown" in the message) the commit's fate could not be learned.
            FencedOut: ``atomic`` and write ``index`` was fenced out or its key was taken.
        """
        ...

    def enqueue(
        self,
        instance_id: str,
        job: str,
        user_id: str,
        event: str,
        key: str | None,
        now: float,
        version: int = 1,
    ) -> tuple[int, float, float]:
        """Queue a Debounce event for an instance whose step runs elsewhere (no claim held).

        In one transaction: remember ``key`` (duplicate: change nothing and raise); append
        the event (written with the definition's ``version``); make the instance's alarm due
        ``now`` (create a placeholder ``debouncing`` row numbered from ``last_step`` if there
        is none; leave a failed row's alarm alone; never move an earlier alarm later).
        Serializes with ``commit`` of the same instance so that a concurrent purge either sees
        the event (and revives the batch) or the event recreates the row.

        Returns ``(queued events, first added_at, now)``.

        Raises:
            DuplicateEventError: the key was already accepted for this instance.
            StorageError: the event could not be stored.
        """
        ...

    def prune(self, history_before: float, keys_before: float) -> None:
        """Delete history older than ``history_before`` and idempotency keys older than
        ``keys_before`` (one transaction; never a live row).

        Raises:
            StorageError: the transaction failed.
        """
        ...

    # -- flow control (``durajobs.stores.flow``) --------------------------------------------

    def set_paused(self, target: str, paused: bool, now: float) -> bool:
        """Pause (or resume) ``target``, a job's name or an instance id; returns whether that
        changed anything. ``due``, ``due_ids`` and ``next_due`` never return an instance that
        is paused or whose job is.

        Raises:
            StorageError: the transaction failed.
        """
        ...

    def paused_targets(self) -> frozenset[str]:
        """Every paused job name and instance id.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def is_paused(self, instance_id: str, job: str) -> bool:
        """Whether the instance or its job is paused.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def take_token(self, job: str, rate: Rate, now: float) -> float | None:
        """Take one token of ``job``'s rate budget, shared by every process and host, in one
        transaction (``durajobs.core.flow.take``): ``None`` when granted, else the time the
        next token will be there (nothing taken).

        Raises:
            StorageError: the transaction failed.
        """
        ...


class InspectStore(Opened, Protocol):
    """Inspection (the CLI, the dashboard, ``Admin``): reads that take no transaction and
    never wait for writers (the scans take one read-only snapshot)."""

    def list_instances(
        self,
        *,
        kind: str | None = None,
        job: str | None = None,
        status: str | None = None,
        due_before: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Instance]:
        """Instances by next alarm (then by id; those without an alarm last), filtered, paged.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def scan_instances(
        self,
        *,
        kind: str | None = None,
        job: str | None = None,
        status: str | None = None,
        due_before: float | None = None,
        batch_size: int = 1000,
    ) -> Generator[list[Instance]]:
        """Every instance ``list_instances`` lists with these filters, in its order, from ONE
        consistent snapshot (as ``export``), in batches of at most ``batch_size`` read by key
        (keyset pages: no OFFSET). Writers are never blocked; the store must not be used for
        anything else until the iterator is exhausted or closed.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def finished_records(
        self,
        *,
        events: Sequence[str] = END_EVENTS,
        prefixes: Sequence[str] | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[HistoryRow]:
        """The final records of finished instances, newest (highest id) first.

        A finished instance has no row, and its newest history record is one of ``events``
        (a subset of ``END_EVENTS``). Only records with ``id < before_id`` (keyset pages);
        ``prefixes`` keeps instance ids starting with one of them (``"kind:"``,
        ``"kind:job:"``). Reads an index of the ``END_EVENTS`` records, newest first, in
        chunks (``sql.newest_finished``); records superseded by a later record or a live row of
        their instance, and ids the prefixes leave out, are skipped one by one.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def history(self, instance_id: str, limit: int = 20) -> list[HistoryRow]:
        """The latest ``limit`` records of an instance (live or purged), oldest first.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def history_since(self, after_id: int, limit: int = 1000) -> list[HistoryRow]:
        """Records with ``id > after_id`` (all instances), by id, without gaps: once a record
        is returned, no record with a lower id appears later (one whose transaction is still
        open holds back the records after it; a later call returns them).

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def recent_history(self, limit: int) -> list[HistoryRow]:
        """The latest ``limit`` records of all instances, oldest first, of those
        ``history_since`` would return (following on from the last one misses none).

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def count_by_status(self) -> list[tuple[str, str, str, int]]:
        """``(kind, job, status, count)`` for every combination present, sorted.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def count_due(self, before: float) -> tuple[int, float | None]:
        """How many alarms are at or before ``before``, and the earliest of them (paused
        instances and jobs left out, as ``due`` leaves them out).

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def next_alarm_after(self, after: float) -> float | None:
        """The earliest alarm strictly after ``after``, or ``None``.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def history_counts(self, since: float) -> tuple[int, int, int]:
        """``(records, failures, distinct steps)`` of the history written at or after ``since``.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def page_instances(
        self,
        *,
        kind: str | None = None,
        job: str | None = None,
        status: str | None = None,
        id_prefix: str | None = None,
        user_id_prefix: str | None = None,
        error_contains: str | None = None,
        order: str = "id",
        after_id: str | None = None,
        after_due: float | None = None,
        limit: int = 50,
    ) -> list[Instance]:
        """One keyset page of instances matching every filter (the dashboard; no OFFSET).

        ``order="id"``: by ``instance_id`` (byte order), after ``after_id``; with ``job`` and
        no ``kind``: by ``(kind, instance_id)``. ``order="alarm"``: alarmed instances only, by
        ``(due_at, instance_id)``, after ``(after_due, after_id)``. Prefixes are
        case-sensitive; ``error_contains`` is an ASCII-case-insensitive substring.

        Raises:
            ValueError: an unknown ``order`` or an incomplete ``after_*`` pair.
            StorageError: the database cannot be read.
        """
        ...

    def change_token(self) -> int:
        """A number that changes when another connection may have changed the database.

        Equal answers mean nothing was committed in between (reads no table; compare only
        answers of one store object).

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def history_buckets(self, since: float, width: float, count: int) -> list[tuple[int, int]]:
        """``count`` pairs ``(distinct steps, job.failed records)`` of the history written in
        ``[since + i * width, since + (i + 1) * width)``.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def instance_gauges(self) -> list[tuple[str, str, str, int]]:
        """``(kind, job, status, count)`` for every job with instances and every status its
        kind can have (zeros included), plus ``"failing"`` for Continuous jobs (running, last
        run failed and skipped: ``attempt`` 1 with a ``last_error``; also counted as running).
        One statement, for metrics and health at scrape time.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def failing_instances(
        self, *, job: str | None = None, after_id: str | None = None, limit: int = 50
    ) -> list[Instance]:
        """One keyset page of failing Continuous instances by ``instance_id`` after
        ``after_id`` (only ``job``'s if given).

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def count_flagged(self) -> tuple[int, int]:
        """``(parked, failing)``: how many instances are parked (status ``"failed"``) and how
        many are failing (as in ``instance_gauges``), for health checks.

        Raises:
            StorageError: the database cannot be read.
        """
        ...


class CopyStore(Opened, Protocol):
    """Copying a whole database (``durajobs copy``)."""

    def table_counts(self) -> dict[str, int]:
        """How many rows each table of ``TABLES`` holds now.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def export(self, batch_size: int = 5000) -> Generator[ExportBatch]:
        """Every row of every table of ``TABLES``, in that order, from ONE consistent snapshot
        (SQLite: one read transaction; PostgreSQL: ``REPEATABLE READ``), in batches of at most
        ``batch_size`` rows (each table's rows by their key). Writers are never blocked.

        The snapshot stays open until the iterator is exhausted or closed (close it:
        ``contextlib.closing``); the store must not be used for anything else meanwhile.

        Raises:
            StorageError: the database cannot be read.
        """
        ...

    def import_batches(self, batches: Iterable[ExportBatch]) -> dict[str, int]:
        """Write the rows of ``batches`` (an ``export`` of any store) into this EMPTY store, in
        one transaction: all of them or nothing. History ids and queue seqs are kept (and the
        store's own id counters continue after them); every other value is stored as given.

        Before committing, counts each table inside the transaction and compares with the
        batches' ``counts``; returns those counts.

        Raises:
            InvalidStateError: the store is not empty (nothing is written).
            StorageError: the rows could not be written, or the counts differ (nothing is
                written).
        """
        ...


class Store(StepStore, InspectStore, CopyStore, Protocol):
    """Every audience's interface: what ``durajobs.stores.open_store`` returns."""


class Claims(Protocol):
    """Per-instance claims: the one thing that serializes the steps of an instance.

    A claim writes nothing, and is released by the system when its holder dies (OFD lock:
    the kernel; advisory lock: the server, when the session ends). Tokens are opaque ints.
    Not shared between threads. A claim already held by THIS object is never granted again
    (re-entrant use is refused: ``try_acquire`` returns ``None``, ``acquire`` waits and
    times out), although the underlying lock would be re-entrant.

    Fairness: a caller waiting in ``acquire`` announces itself; ``try_acquire`` yields to it
    (returns ``None``), so a process stepping an instance back to back cannot starve it.
    """

    # Whether a claim costs a round trip (PostgreSQL): then ``run_due`` claims a group of due
    # instances with one ``try_acquire_many`` and reads their rows with one ``load_many``;
    # False (SQLite: a claim costs a microsecond): one ``try_acquire`` and one read each.
    batch_claims: bool
    # Whether several daemons may serve the database (PostgreSQL, on any number of hosts):
    # then a daemon's dispatcher spreads its reads over a backlog (``dispatch``, "Spread");
    # False (SQLite: one daemon per file, ``hold_daemon_lock``).
    several_daemons: bool

    def try_acquire(self, instance_id: str) -> int | None:
        """Claim without waiting: a token, or ``None`` if held elsewhere or someone waits.

        Raises:
            StorageError: the claim could not be attempted.
        """
        ...

    def try_acquire_many(self, instance_ids: Sequence[str]) -> list[int | None]:
        """``try_acquire`` of each instance, in order (one round trip where ``batch_claims``,
        else a loop): a token or ``None`` for each; ``None`` also for an id named twice (the
        second time).

        Raises:
            StorageError: the claims could not be attempted.
        """
        ...

    def acquire(self, instance_id: str, timeout: float) -> int:
        """Claim, waiting up to ``timeout`` seconds for the holder to release it.

        Raises:
            InstanceBusyError: still held after ``timeout``.
            StorageError: the claim could not be attempted.
        """
        ...

    def release(self, token: int) -> None:
        """Drop a claim (never raises; a claim lost with its connection is simply forgotten)."""
        ...

    def release_many(self, tokens: list[int]) -> None:
        """Drop many claims at once (a bulk call's); never raises."""
        ...

    def release_at_commit(self, token: int) -> None:
        """The store's next single-write commit may drop this claim in its own round trip,
        right after its ``COMMIT`` (claims on the store's session); ``release(token)`` after
        that commit is still called and costs nothing then. Claims that cannot (SQLite's: a
        release costs no round trip) ignore it. Never raises."""
        ...

    def anyone_waiting(self) -> bool:
        """Whether some caller may wait for a claim this process holds (cheap, may over-report).

        Raises:
            StorageError: the check failed.
        """
        ...

    def waited_for(self, token: int) -> bool:
        """Whether another caller waits for the claim ``token`` stands for.

        Raises:
            StorageError: the check failed.
        """
        ...

    def is_locked(self, instance_id: str) -> bool:
        """Whether anyone (this object included) holds the instance's claim now (doctor).

        Raises:
            StorageError: the check failed.
        """
        ...

    def hold_daemon_lock(self) -> bool:
        """Take the "daemons serving this database" lock for as long as this object is open:
        ``False`` if another daemon holds it. SQLite: one daemon per file (a kernel lock that
        dies with its process); PostgreSQL: any number of daemons, so always ``True``.

        Raises:
            StorageError: the lock could not be attempted.
        """
        ...

    def close(self) -> None:
        """Release every claim and close (idempotent)."""
        ...


class Slots(Protocol):
    """Per-job concurrency slots (``concurrency=N``: N slots per job), shared by every process
    and host of the store. Like a claim, a slot writes nothing and dies with its holder
    (SQLite: an OFD lock on the claims' file; PostgreSQL: a session advisory lock). Tokens are
    opaque ints. Not shared between threads."""

    def try_acquire(self, job: str, limit: int) -> int | None:
        """One of ``job``'s ``limit`` slots, or ``None`` if all are held (this object's too).

        Raises:
            StorageError: the slot could not be attempted.
        """
        ...

    def release(self, token: int) -> None:
        """Give a slot back (never raises)."""
        ...

    def in_use(self, job: str, limit: int) -> int:
        """How many of ``job``'s slots are held now, by anyone.

        Raises:
            StorageError: the check failed.
        """
        ...

    def close(self) -> None:
        """Release every slot and close (idempotent)."""
        ...


class Waker(Protocol):
    """Tells sleeping daemons that the earliest alarm may have changed. Never raises."""

    def poke(self) -> None:
        """Send one wake-up (after a commit, never inside a write transaction)."""
        ...

    def poke_at_commit(self) -> None:
        """The store's next single-write commit may send the wake-up in its own round trip,
        after its ``COMMIT`` (PostgreSQL, a waker on the store's session); ``poke()`` after
        that commit is still called and costs nothing then. Others ignore it."""
        ...

    def close(self) -> None:
        """Release the waker's resources."""
        ...

    def abandon(self) -> None:
        """In a forked child: let go of the parent's resources without using or closing them
        (they stay the parent's; the child opens its own)."""
        ...


class WakeListener(Protocol):
    """The daemon's end of the wake-ups, for a ``selectors`` loop.

    A wake-up is only a hint: the daemon re-reads the earliest alarm after every drain, on
    its own timer, and after every reconnect.
    """

    def fileno(self) -> int:
        """The descriptor to select for reading (may change after ``drain``: re-register)."""
        ...

    def drain(self) -> int:
        """Consume pending wake-ups; returns how many (at least 1 after a reconnect).

        Raises:
            StorageError: PostgreSQL only: the connection is lost and cannot be reopened now.
        """
        ...

    def close(self) -> None:
        """Stop listening."""
        ...

    def detach(self) -> None:
        """In a forked child (a daemon's worker): close this process's copy, leaving the
        parent listening (SQLite: its socket file stays; PostgreSQL: its session stays)."""
        ...
