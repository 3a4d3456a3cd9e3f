"""The SQL both stores share: one statement catalogue rendered per dialect, and ``SqlStore``.

Theory of operation. ``TEMPLATES`` holds every statement once, in a neutral form: ``?`` for each
parameter (a value used twice is passed twice: no numbered or named parameters) and ``{token}``
where the dialects differ (``Dialect``). ``Dialect.render`` turns the catalogue into a
``Statements`` of ready SQL once per dialect, at import: nothing is formatted per call on the
step path. What only one store has (SQLite's pragmas, PostgreSQL's ``unnest`` group commit and
history horizon) is written in that store's module, in its own dialect.

``SqlStore`` implements the ``Store`` protocols of ``base`` over five primitives that each store
provides: ``_rows`` (a read outside any transaction, errors raised as ``StorageError``),
``_transaction`` (the one write transaction, with the probe that learns an unknown outcome),
``_snapshot`` (a read-only snapshot for export and scans), ``_changed`` (rows changed by a
cursor's last statement) and ``_array`` (a list of ids as one parameter); and over a few hooks
for its fast paths (``_group``, ``_put``, ``_serialize``, ``_import_rows``). The protocols'
docstrings say what each method must do; this module says only how, where it is not plain.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Container, Generator, Iterable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

from durajobs.core.rows import FencedOut, Instance, Queued, RejectedWrite
from durajobs.errors import DuplicateEventError, StorageError
from durajobs.stores.base import (
    END_EVENTS,
    TABLE_COLUMNS,
    TABLES,
    ExportBatch,
    Finding,
    HistoryRow,
    Write,
    not_empty_error,
)

__all__ = [
    "COLUMNS", "HISTORY_COLUMNS", "SCHEMA_VERSION", "TEMPLATES", "Dialect", "SqlStore",
    "Statements",
]  # fmt: skip

SCHEMA_VERSION = 6  # of both stores' tables and indexes (each store migrates its own DDL)
# The oldest schema both stores' reads work on (the statements here and each store's own
# reads): a read-only store opens a database of this schema or newer (up to SCHEMA_VERSION)
# as it is, unmigrated -- `durajobs check` before the deploy that migrates it, `ls` beside old
# daemons. 4 added the version columns the reads select; 5 only indexes (slower counts, same
# answers); 6 the flow control tables the reads join (paused jobs and instances). Raise it
# with a schema that adds a column, table or index name a read uses.
READABLE_SCHEMA = 6

T = TypeVar("T")
Read = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Runs one read statement with its parameters and returns its rows."""

COLUMNS = ", ".join(TABLE_COLUMNS["instances"])
HISTORY_COLUMNS = ", ".join(TABLE_COLUMNS["history"])
_NAMES = TABLE_COLUMNS["instances"]
_ROW = ", ".join("?" * len(_NAMES))
_SET_ALL = ", ".join(f"{c} = excluded.{c}" for c in _NAMES[4:])
_SET_BUT_DUE = ", ".join(f"{c} = excluded.{c}" for c in _NAMES[4:] if c != "due_at")
# The partial index of the records that end instances: its predicate, repeated word for word in
# the queries that use it (SQLite uses a partial index only for a query whose WHERE has its terms).
ENDED_TEST = f"event IN ({', '.join(repr(e) for e in END_EVENTS)})"
# The due reads' test: no row of ``paused`` (``stores.flow``) names the instance or its job. The
# first term is uncorrelated (evaluated once per statement): while nothing is paused, one probe.
_NOT_PAUSED = (
    "(NOT EXISTS (SELECT 1 FROM paused) OR NOT EXISTS (SELECT 1 FROM paused "
    "WHERE paused.target = instances.instance_id OR paused.target = instances.job))"
)
# A new incarnation of an instance id (after a purge) goes on from the last step number in its
# history, so ``ctx.step_key`` ("{instance_id}#{step}") never repeats within history_retention.
_LAST_STEP = (
    "SELECT coalesce((SELECT step FROM history WHERE instance_id = ? ORDER BY id DESC LIMIT 1), 0)"
)


class Dialect(NamedTuple):
    """What differs between the SQL of two stores, as text put into the neutral templates."""

    placeholder: str  # a parameter: "?" or "%s"
    limit: str  # LIMIT of a statement run on every poll (SQLite keeps its plan with ``?+0``)
    in_ids: str  # "instance_id {in_ids}": membership in a list given as one parameter
    least: str  # the smaller of two values
    ilike: str  # an ASCII-case-insensitive LIKE
    bucket: str  # the history bucket of ``at``, from (since, width): an integer, rounded down
    by_due: str  # the index hint for reading alarms in order ("" where the planner needs none)
    by_job: str  # ditto, for a job's instances
    by_end: str  # ditto, for the records that end instances
    change_token: str  # a number that moves when another connection commits (reads no table)

    def render(self, template: str) -> str:
        """``template`` with this dialect's tokens and placeholders (``{{x}}`` stays ``{x}``)."""
        return self.params(template.format(**self._asdict()))

    def params(self, text: str) -> str:
        """``text`` (no tokens) with this dialect's placeholders."""
        if self.placeholder == "?":
            return text
        return text.replace("%", "%%").replace("?", self.placeholder)


class Statements(NamedTuple):
    """The catalogue: every statement both stores run, by name. The defaults are the neutral
    templates (``TEMPLATES``); a store's ``sql`` is their ``Dialect.render``-ed copy. Comments
    list the parameters where they are not obvious."""

    load: str = f"SELECT {COLUMNS} FROM instances WHERE instance_id = ?"
    # The row and whether events are queued for it (one statement when none are).
    load_flagged: str = (
        f"SELECT {COLUMNS}, EXISTS (SELECT 1 FROM inbox WHERE inbox.instance_id = "
        "instances.instance_id) FROM instances WHERE instance_id = ?"
    )
    step: str = "SELECT step FROM instances WHERE instance_id = ?"
    # (ids)
    load_many: str = f"SELECT {COLUMNS} FROM instances WHERE instance_id {{in_ids}}"
    # (ids)
    queued_many: str = (
        "SELECT instance_id, seq, event, added_at, version FROM inbox WHERE instance_id {in_ids} "
        "ORDER BY instance_id, seq"
    )
    # (ids)
    last_steps: str = (
        "SELECT instance_id, max(step) FROM history WHERE instance_id {in_ids} GROUP BY instance_id"
    )
    last_step: str = _LAST_STEP
    # (instance_id, step, event)
    find_record: str = (
        "SELECT 1 FROM history WHERE instance_id = ? AND step = ? AND event = ? "
        "ORDER BY id DESC LIMIT 1"
    )
    # (now, limit). Paused jobs and instances are never due (``stores.flow``).
    due: str = (
        f"SELECT {COLUMNS} FROM instances WHERE due_at <= ? AND {_NOT_PAUSED} "
        "ORDER BY due_at LIMIT {limit}"
    )
    # Only the key: an index scan of instances_due; the row is read after the claim.
    # (now, limit)
    due_ids: str = (
        f"SELECT instance_id FROM instances WHERE due_at <= ? AND {_NOT_PAUSED} "
        "ORDER BY due_at LIMIT {limit}"
    )
    # (limit)
    next_due: str = (
        f"SELECT due_at FROM instances WHERE due_at IS NOT NULL AND {_NOT_PAUSED} "
        "ORDER BY due_at LIMIT {limit}"
    )
    queued: str = (
        "SELECT seq, event, added_at, version FROM inbox WHERE instance_id = ? ORDER BY seq"
    )
    # (instance_id, key, cutoff)
    has_key: str = "SELECT 1 FROM event_keys WHERE instance_id = ? AND key = ? AND at >= ?"
    # Insert a new instance, or replace the row if it is still at the step the write was
    # computed from (the fence). A row with no events may be a placeholder ``enqueue`` made.
    # (*row, expected)
    put: str = (
        f"INSERT INTO instances ({COLUMNS}) VALUES ({_ROW}) "
        f"ON CONFLICT (instance_id) DO UPDATE SET {_SET_ALL} WHERE instances.step = ?"
    )
    # Debounce: events queued (and not consumed by this write), or re-queued by it, need a step
    # soon: the alarm becomes due now unless the row is failed or a retry is pending. The queue
    # changes are applied after this statement (only if the fence held), so the test reads the
    # queue as it will be: rows with seq > consumed, or the re-queued event.
    # (*row, requeued, consumed, now, now, expected)
    put_debounce: str = (
        f"INSERT INTO instances ({COLUMNS}) VALUES ({_ROW}) "
        f"ON CONFLICT (instance_id) DO UPDATE SET {_SET_BUT_DUE}, due_at = CASE "
        "WHEN excluded.status <> 'failed' AND excluded.attempt = 1 AND (? OR EXISTS "
        "(SELECT 1 FROM inbox WHERE inbox.instance_id = excluded.instance_id AND inbox.seq > ?)) "
        "THEN {least}(coalesce(excluded.due_at, ?), ?) ELSE excluded.due_at END "
        "WHERE instances.step = ?"
    )
    # (instance_id, expected)
    delete: str = "DELETE FROM instances WHERE instance_id = ? AND step = ?"
    # (instance_id, at, event, step, attempt, duration_ms, error, data)
    history: str = (
        "INSERT INTO history (instance_id, at, event, step, attempt, duration_ms, error, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    # (instance_id, instance_id, keep)
    trim_history: str = (
        "DELETE FROM history WHERE instance_id = ? AND id <= (SELECT id FROM history "
        "WHERE instance_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
    )
    # (instance_id, seq)
    consume: str = "DELETE FROM inbox WHERE instance_id = ? AND seq <= ?"
    # A key older than the window may be reused: it is refreshed, not rejected.
    # (instance_id, key, now, cutoff)
    add_key: str = (
        "INSERT INTO event_keys (instance_id, key, at) VALUES (?, ?, ?) "
        "ON CONFLICT (instance_id, key) DO UPDATE SET at = excluded.at WHERE event_keys.at < ?"
    )
    # (instance_id, job, user_id, now, now, step, now, instance_id); no state yet: version 1
    revive_queued: str = (
        f"INSERT INTO instances ({COLUMNS}) SELECT ?, 'debounce', ?, ?, 'debouncing', NULL, ?, "
        "NULL, NULL, NULL, 0, 1, 0, ?, NULL, NULL, ?, ?, 1 "
        "WHERE EXISTS (SELECT 1 FROM inbox WHERE inbox.instance_id = ?)"
    )
    # (instance_id, event, now, version)
    enqueue: str = "INSERT INTO inbox (instance_id, event, added_at, version) VALUES (?, ?, ?, ?)"
    # Ditto, returning the seq
    enqueue_seq: str = (
        "INSERT INTO inbox (instance_id, event, added_at, version) VALUES (?, ?, ?, ?) "
        "RETURNING seq"
    )
    # (instance_id, job, user_id, now, now, instance_id, now); no state yet: version 1
    enqueue_alarm: str = (
        f"INSERT INTO instances ({COLUMNS}) VALUES (?, 'debounce', ?, ?, 'debouncing', NULL, ?, "
        f"NULL, NULL, NULL, 0, 1, 0, ?, NULL, NULL, ({_LAST_STEP}), ?, 1) "
        "ON CONFLICT (instance_id) DO UPDATE SET due_at = excluded.due_at "
        "WHERE instances.status <> 'failed' "
        "AND (instances.due_at IS NULL OR instances.due_at > excluded.due_at)"
    )
    queue_size: str = "SELECT count(*), min(added_at) FROM inbox WHERE instance_id = ?"
    # (seq, instance_id, event)
    find_queued: str = "SELECT 1 FROM inbox WHERE seq = ? AND instance_id = ? AND event = ?"
    # ``id < ?`` bounds the delete to the old end of the table (the first id at or after the
    # cutoff, found by bisecting ids, which grow with time): ``history`` has no index on ``at``,
    # and a plain ``at < ?`` scans every record ever kept (0.2 s and the write lock for 2 M).
    # (first id kept, cutoff)
    prune_history: str = "DELETE FROM history WHERE id < ? AND at < ?"
    prune_keys: str = "DELETE FROM event_keys WHERE at < ?"
    count_by_status: str = (
        "SELECT kind, job, status, count(*) FROM instances GROUP BY kind, job, status "
        "ORDER BY kind, job, status"
    )
    # Paused alarms wait on purpose: neither due nor overdue.
    count_due: str = (
        f"SELECT count(*), min(due_at) FROM instances WHERE due_at <= ? AND {_NOT_PAUSED}"
    )
    next_after: str = "SELECT min(due_at) FROM instances WHERE due_at > ?"
    # Two subqueries: SQLite reads min() or max() from the end of the b-tree only when the
    # query has just one of them; ``SELECT min(id), max(id)`` scans the whole table.
    history_id_range: str = "SELECT (SELECT min(id) FROM history), (SELECT max(id) FROM history)"
    history_at_id: str = "SELECT at FROM history WHERE id >= ? ORDER BY id LIMIT 1"
    # (first id, since)
    history_counts: str = (
        "SELECT count(*), count(*) FILTER (WHERE event = 'job.failed'), "
        "count(DISTINCT instance_id || ':' || step) FROM history WHERE id >= ? AND at >= ?"
    )
    # (instance_id, limit)
    history_of: str = (
        f"SELECT {HISTORY_COLUMNS} FROM history WHERE instance_id = ? ORDER BY id DESC LIMIT ?"
    )
    # (after_id, limit)
    history_since: str = f"SELECT {HISTORY_COLUMNS} FROM history WHERE id > ? ORDER BY id LIMIT ?"
    # (limit)
    history_recent: str = f"SELECT {HISTORY_COLUMNS} FROM history ORDER BY id DESC LIMIT ?"
    # Candidate final records of finished instances, newest first: a keyset range of one event
    # in the history_ended index; the last column says whether the record still ends its
    # instance (no later record, no row: two index probes) and matches the id prefixes
    # (``{prefixes}``, see ``base.newest_finished``).
    # (*prefix tests, event, before, limit)
    finished: str = (
        f"SELECT {HISTORY_COLUMNS}, ({{{{prefixes}}}}) AND NOT EXISTS (SELECT 1 FROM history "
        "AS later WHERE later.instance_id = h.instance_id AND later.id > h.id) "
        "AND NOT EXISTS (SELECT 1 FROM instances WHERE instances.instance_id = h.instance_id) "
        f"FROM history AS h {{by_end}} WHERE {ENDED_TEST} AND event = ? AND id < ? "
        "ORDER BY id DESC LIMIT ?"
    )
    # One prefix's test (its length and text)
    prefix_test: str = "substr(h.instance_id, 1, ?) = ?"
    # Dashboard pages (keyset: each page starts after the last row of the previous one, so a
    # page reads only its own rows from an index: no OFFSET, no count). ``{where}``: the filters.
    page_by_id: str = (
        f"SELECT {COLUMNS} FROM instances WHERE {{{{where}}}} ORDER BY instance_id LIMIT ?"
    )
    # A job's instances in (kind, instance_id) order read the instances_job index in order; it
    # is the instance_id order too, since an instance id starts with its kind and no kind is a
    # prefix of another.
    page_by_job: str = (
        f"SELECT {COLUMNS} FROM instances {{by_job}} WHERE {{{{where}}}} "
        "ORDER BY kind, instance_id LIMIT ?"
    )
    page_by_alarm: str = (
        f"SELECT {COLUMNS} FROM instances {{by_due}} WHERE {{{{where}}}} "
        "ORDER BY due_at, instance_id LIMIT ?"
    )
    # ``list_instances``/``scan_instances``: alarmed instances from the due_at index in order,
    # then the others by id.
    select_alarmed: str = f"SELECT {COLUMNS} FROM instances {{by_due}} WHERE {{{{where}}}}"
    select_idle: str = f"SELECT {COLUMNS} FROM instances WHERE {{{{where}}}}"
    count_where: str = "SELECT count(*) FROM instances WHERE {{where}}"
    # (since, width, first id, since, until)
    history_buckets: str = (
        "SELECT {bucket} AS bucket, count(DISTINCT instance_id || ':' || step), "
        "count(*) FILTER (WHERE event = 'job.failed') FROM history "
        "WHERE id >= ? AND at >= ? AND at < ? GROUP BY bucket"
    )
    change_token: str = "{change_token}"


TEMPLATES = Statements()  # the neutral catalogue (its defaults)

# Copying a whole database (``durajobs copy``): each table read in key order, a page at a time
# (keyset: after the last key of the previous page).
_EXPORT_KEYS = {"instances": ("instance_id",), "inbox": ("seq",),
                "event_keys": ("instance_id", "key"), "history": ("id",),
                "paused": ("target",)}  # fmt: skip


@functools.cache
def render(dialect: Dialect) -> Statements:
    """The catalogue in ``dialect``'s SQL."""
    return Statements(*(dialect.render(template) for template in TEMPLATES))


def export_statements(dialect: Dialect) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """Per table: the first page's statement, the next pages' (after a key), the key's columns."""
    found = {}
    for table, names in TABLE_COLUMNS.items():
        keys = _EXPORT_KEYS[table]
        order = ", ".join(keys)
        select = f"SELECT {', '.join(names)} FROM {table}"
        after = f"WHERE ({order}) > ({', '.join('?' * len(keys))})"
        found[table] = (
            dialect.params(f"{select} ORDER BY {order} LIMIT ?"),
            dialect.params(f"{select} {after} ORDER BY {order} LIMIT ?"),
            tuple(names.index(k) for k in keys),
        )
    return found


COUNT_ROWS = {t: f"SELECT count(*) FROM {t}" for t in TABLES}


def check_import_counts(
    where: str, expected: dict[str, int], written: dict[str, int], stored: dict[str, int]
) -> None:
    """Raise unless every table holds as many rows as the snapshot had and the import wrote.

    Raises:
        StorageError: a table's counts differ (the caller rolls back).
    """
    for table in TABLES:
        want = expected.get(table, 0)
        if not want == written[table] == stored[table]:
            raise StorageError(
                f"{where}: import: {table}: the source snapshot has {want} rows, "
                f"{written[table]} were read and {stored[table]} are stored; nothing was copied"
            )


def newest_finished(
    query: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]],
    statement: str,
    prefix_test: tuple[str, str, str],
    *,
    events: Sequence[str],
    prefixes: Sequence[str] | None,
    before_id: int | None,
    limit: int,
) -> list[HistoryRow]:
    """``Store.finished_records``, the walk both stores share.

    ``statement`` (``{prefixes}`` to fill, then the parameters ``event``, ``before``,
    ``count``) reads up to ``count`` records of ``event`` with ``id < before``, newest first,
    straight from the index of ending records: no filter in its WHERE clause, so that a
    planner never trades the ordered index scan for a sort. Its rows are the ``HistoryRow``
    columns and a last one, true when the record still ends a finished instance that the
    prefixes keep. ``prefix_test`` is the dialect's ``(one prefix's test with its length and
    text as parameters, true, false)``. Per event, chunks are read until ``limit`` rows
    qualify; the newest ``limit`` of all events are returned.
    """
    term, true, false = prefix_test
    if prefixes is None:
        sql, flat = statement.format(prefixes=true), []
    else:
        sql = statement.format(prefixes=" OR ".join([term] * len(prefixes)) or false)
        flat = [v for prefix in prefixes for v in (len(prefix), prefix)]
    chunk = min(max(2 * limit, 64), 1000)
    found: list[HistoryRow] = []
    for event in events:
        before, kept = (1 << 63) - 1 if before_id is None else before_id, 0
        while kept < limit:
            rows = query(sql, (*flat, event, before, chunk))
            for *columns, finished in rows:
                if finished:
                    found.append(HistoryRow(*columns))
                    kept += 1
            if len(rows) < chunk:
                break
            before = rows[-1][0]
    return sorted(found, key=lambda r: r.id, reverse=True)[:limit]


def schema_finding(version: int) -> Finding:
    """``doctor``'s finding on a database at schema ``version``: ok at this durajobs's; a
    warning where reads work as it is (the application's or the daemon's next open migrates
    it); a failure otherwise."""
    detail = f"schema version {version} (this durajobs: {SCHEMA_VERSION})"
    if version == SCHEMA_VERSION:
        return Finding("schema", "ok", detail)
    if READABLE_SCHEMA <= version < SCHEMA_VERSION:
        detail += ": readable; the application's or the daemon's next open migrates it"
        return Finding("schema", "warn", detail)
    return Finding("schema", "fail", detail)


def needs_migration(where: str, version: int, readonly: bool) -> bool:
    """Whether a database at schema ``version`` is to be migrated forward.

    A read-only store never migrates: it reads a schema from ``READABLE_SCHEMA`` on as it is.

    Raises:
        StorageError: ``version`` is newer than this durajobs's, or the store is read-only and
            ``version`` older than its reads work on (a writer of this version migrates it).
    """
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"{where}: schema version {version} is newer than this durajobs understands "
            f"({SCHEMA_VERSION}); upgrade durajobs"
        )
    if version == SCHEMA_VERSION or (readonly and version >= READABLE_SCHEMA):
        return False
    if readonly:
        raise StorageError(
            f"{where}: not a durajobs database (schema version 0)"
            if version == 0
            else f"{where}: schema version {version} is older than this durajobs "
            f"({SCHEMA_VERSION}); it is migrated when the application or the daemon of "
            "this version opens it"
        )
    return True


def first_history_id(read: Read, statements: Statements, since: float) -> int | None:
    """The first history id whose record is at or after ``since`` (one past the newest if none
    is; ``None``: no history). Ids grow with time (up to clock skew between writers): bisect
    them, never scan ``at``."""
    first, last = read(statements.history_id_range, ())[0]
    if first is None:
        return None
    low, high = int(first), int(last) + 1
    while low < high:
        middle = (low + high) // 2
        found = read(statements.history_at_id, (middle,))
        if found and found[0][0] < since:
            low = middle + 1
        else:
            high = middle
    return low


class SqlStore:
    """What the SQLite and PostgreSQL stores share (see the module's docstring).

    A store names its dialect when it subclasses: ``class SqliteStore(SqlStore,
    dialect=SQLITE)`` renders the catalogue for it (``sql``, ``exports``).
    """

    sql: ClassVar[Statements]
    dialect: ClassVar[Dialect]
    exports: ClassVar[dict[str, tuple[str, str, tuple[int, ...]]]]
    content_errors: tuple[type[BaseException], ...]  # a write's values, not the database
    import_prologue: ClassVar[tuple[str, ...]] = ()  # run before an import's rows
    import_epilogue: ClassVar[tuple[str, ...]] = ()  # and after them

    def __init_subclass__(cls, *, dialect: Dialect, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.dialect = dialect
        cls.sql = render(dialect)
        cls.exports = export_statements(dialect)

    def __init__(self, path: str, where: str) -> None:
        self.path = path  # the location as given, without a password
        self.where = where  # the location for messages
        self.key_window = 86400.0  # seconds idempotency keys are remembered (set by Jobs)
        self._filtered: dict[tuple[str, int], str] = {}  # see _for_jobs

    # -- what each store provides -------------------------------------------------------------

    def _rows(
        self, statement: str, params: Sequence[Any] = (), doing: str = "read"
    ) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _transaction(
        self, doing: str, body: Callable[[Any], T], probe: Callable[[Read], bool]
    ) -> T:
        """``body(cursor)`` in one write transaction. ``probe(read)`` says whether the
        transaction's effect is in the database; it is asked only when COMMIT failed in a way
        that leaves the outcome open."""
        raise NotImplementedError

    def _snapshot(self, doing: str) -> contextlib.AbstractContextManager[Read]:
        """Reads from one consistent snapshot, until the context ends (writers not blocked)."""
        raise NotImplementedError

    def _changed(self, cur: Any) -> int:
        raise NotImplementedError

    def _array(self, ids: Sequence[str]) -> Any:
        raise NotImplementedError

    def _import_rows(self, cur: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _group(
        self, cur: Any, writes: Sequence[Write], now: float, history_limit: int
    ) -> Container[int]:
        """Before the writes of a commit are applied one by one: the indexes of those a store's
        fast path applied already (none here)."""
        return ()

    def _serialize(self, cur: Any, instance_ids: Sequence[str]) -> None:
        """Serialize with ``enqueue`` on these instances (a store with a single writer: no-op)."""

    # -- reads --------------------------------------------------------------------------------

    def load(self, instance_id: str) -> Instance | None:
        rows = self._rows(self.sql.load, (instance_id,))
        return Instance(*rows[0]) if rows else None

    def load_with_queue(self, instance_id: str) -> tuple[Instance | None, list[Queued]]:
        rows = self._rows(self.sql.load_flagged, (instance_id,))
        if not rows:
            return None, []
        row = rows[0]
        return Instance(*row[:-1]), self.queued(instance_id) if row[-1] else []

    def load_many(
        self, instance_ids: Sequence[str], *, with_queue: bool = False
    ) -> dict[str, tuple[Instance | None, list[Queued]]]:
        ids = self._array(instance_ids)
        found: dict[str, tuple[Instance | None, list[Queued]]]
        found = {instance_id: (None, []) for instance_id in instance_ids}
        for row in self._rows(self.sql.load_many, (ids,)):
            found[row[0]] = (Instance(*row), [])
        if with_queue:
            for instance_id, *queued in self._rows(self.sql.queued_many, (ids,)):
                found[instance_id][1].append(Queued(*queued))
        return found

    def last_steps(self, instance_ids: Sequence[str]) -> dict[str, int]:
        rows = self._rows(self.sql.last_steps, (self._array(instance_ids),))
        return {str(i): int(step) for i, step in rows}

    def last_step(self, instance_id: str) -> int:
        return int(self._rows(self.sql.last_step, (instance_id,))[0][0])

    def queued(self, instance_id: str) -> list[Queued]:
        return [Queued(*row) for row in self._rows(self.sql.queued, (instance_id,))]

    def due(self, now: float, limit: int, prefixes: Sequence[str] | None = None) -> list[Instance]:
        sql, params = self._for_jobs(self.sql.due, prefixes, (now, limit))
        return [Instance(*row) for row in self._rows(sql, params)]

    def due_ids(self, now: float, limit: int, prefixes: Sequence[str] | None = None) -> list[str]:
        sql, params = self._for_jobs(self.sql.due_ids, prefixes, (now, limit))
        return [str(row[0]) for row in self._rows(sql, params)]

    def next_due(self, skip: int = 0, prefixes: Sequence[str] | None = None) -> list[float]:
        sql, params = self._for_jobs(self.sql.next_due, prefixes, (skip + 1,))
        return [float(row[0]) for row in self._rows(sql, params)]

    def _for_jobs(
        self, sql: str, prefixes: Sequence[str] | None, params: tuple[Any, ...]
    ) -> tuple[str, tuple[Any, ...]]:
        """``sql`` restricted to instance ids with one of ``prefixes`` (an index-only test: the
        due_at index holds the id), with its parameters; cached per statement and count.

        Each prefix is a range of ids (``prefix <= id < prefix`` with its last character
        bumped; ids compare by code point on both stores), which no LIKE wildcard in a job name
        can widen, inside ``coalesce``: a test whose selectivity PostgreSQL cannot estimate
        and so does not take as rare. It took ``substr(id, 1, n) = p`` to match 0.5 % of the
        rows, and a bare range as rare too while the table had no statistics yet: with many
        rows due it then read and sorted every one of them (5-9 ms for 20,000, at each
        daemon read) instead of reading the due index in order up to the limit (0.1 ms)."""
        if prefixes is None:
            return sql, params
        key = (sql, len(prefixes))
        filtered = self._filtered.get(key)
        if filtered is None:
            test = " OR ".join(
                ["coalesce(instance_id >= ? AND instance_id < ?, FALSE)"] * len(prefixes)
            )
            test = test or "FALSE"
            head, _, tail = sql.partition(" ORDER BY ")
            where = "AND" if " WHERE " in head else "WHERE"
            filtered = f"{head} {where} ({self.dialect.params(test)}) ORDER BY {tail}"
            self._filtered[key] = filtered
        # The filter's parameters go before ORDER BY's: the statements' LIMIT is the last one.
        flat = [v for p in prefixes for v in (p, p[:-1] + chr(ord(p[-1]) + 1))]
        return filtered, (*params[:-1], *flat, params[-1])

    def has_key(self, instance_id: str, key: str, now: float) -> bool:
        return bool(self._rows(self.sql.has_key, (instance_id, key, now - self.key_window)))

    # -- writes -------------------------------------------------------------------------------

    def commit(
        self, writes: Sequence[Write], now: float, history_limit: int, *, atomic: bool = False
    ) -> list[bool]:
        if not writes:
            return []
        single = len(writes) == 1

        def body(cur: Any) -> list[bool]:
            done = self._group(cur, writes, now, history_limit)
            applied = []
            for index, write in enumerate(writes):
                if index in done:
                    applied.append(True)
                    continue
                try:
                    if write.key is None:
                        applied.append(self._apply(cur, write, now, history_limit))
                    else:
                        applied.append(self._apply_keyed(cur, write, now, history_limit, single))
                except self.content_errors as exc:
                    # This write's content (not the database) is at fault: roll back, let the
                    # engine record it as that instance's failure and commit the others.
                    raise RejectedWrite(index, exc) from None
                except DuplicateEventError:
                    if atomic:
                        raise FencedOut(index) from None
                    raise
                if atomic and not applied[-1]:
                    raise FencedOut(index)
            return applied

        def probe(read: Read) -> bool:
            first = writes[0]
            if first.records:  # step numbers never repeat for an id: its record is proof
                step = first.row.step if first.row is not None else first.expected_step + 1
                params = (first.instance_id, step, first.records[-1][0])
                return bool(read(self.sql.find_record, params))
            rows = read(self.sql.step, (first.instance_id,))
            if first.row is not None:
                return bool(rows) and rows[0][0] == first.row.step
            return not rows or rows[0][0] != first.expected_step

        return self._transaction("commit", body, probe)

    def _apply_keyed(
        self, cur: Any, write: Write, now: float, history_limit: int, single: bool
    ) -> bool:
        cur.execute("SAVEPOINT keyed")
        ok = self._apply(cur, write, now, history_limit)
        if ok:
            params = (write.instance_id, write.key, now, now - self.key_window)
            cur.execute(self.sql.add_key, params)
            if not self._changed(cur):
                cur.execute("ROLLBACK TO SAVEPOINT keyed")
                cur.execute("RELEASE SAVEPOINT keyed")
                if single:
                    raise DuplicateEventError(
                        f"{write.instance_id}: an event with key {write.key!r} was already accepted"
                    )
                return False
        cur.execute("RELEASE SAVEPOINT keyed")
        return ok

    def _apply(self, cur: Any, write: Write, now: float, history_limit: int) -> bool:
        """One write; ``False`` (and nothing changed) when its fence fails."""
        sql = self.sql
        instance_id = write.instance_id
        if write.queue_only:  # add_many on a busy instance: queue it, as enqueue does
            cur.execute(sql.enqueue, (instance_id, write.requeue, now, write.version))
            cur.execute(sql.enqueue_alarm, (
                instance_id, write.job, write.user_id, now, now, instance_id, now,
            ))  # fmt: skip
            return True
        row = write.row
        if row is None:
            cur.execute(sql.delete, (instance_id, write.expected_step))
            if not self._changed(cur) and not write.new:
                return False  # fenced out: nothing of this write is applied
            step = write.expected_step + 1
            if write.kind == "debounce":
                self._queue_changes(cur, write, now)
                # The step consumed the events it saw; any queued since (during a flush, a
                # terminate or a clear) open the next batch: nothing acknowledged is dropped.
                # The new batch goes on from this step's number: step keys never repeat.
                cur.execute(sql.revive_queued, (
                    instance_id, write.job, write.user_id, now, now, step, now, instance_id,
                ))  # fmt: skip
            if write.records:
                self._record(cur, instance_id, step, write.records, now)
        else:
            if not self._put(cur, write, now):
                return False
            if write.kind == "debounce":
                self._queue_changes(cur, write, now)
        if write.trim:
            cur.execute(sql.trim_history, (instance_id, instance_id, history_limit))
        return True

    def _put(self, cur: Any, write: Write, now: float) -> bool:
        """Write the row (fenced) and, if the fence held, its history records."""
        row: Any = write.row
        if write.kind == "debounce":
            cur.execute(self.sql.put_debounce, (
                *row, write.requeue is not None, write.consumed, now, now, write.expected_step,
            ))  # fmt: skip
        else:
            cur.execute(self.sql.put, (*row, write.expected_step))
        if not self._changed(cur):
            return False
        if write.records:
            self._record(cur, write.instance_id, row.step, write.records, now)
        return True

    def _record(
        self, cur: Any, instance_id: str, step: int, records: Sequence[Any], now: float
    ) -> None:
        if len(records) == 1:
            event, *rest = records[0]
            cur.execute(self.sql.history, (instance_id, now, event, step, *rest))
        else:
            cur.executemany(
                self.sql.history,
                [(instance_id, now, event, step, *rest) for (event, *rest) in records],
            )

    def _queue_changes(self, cur: Any, write: Write, now: float) -> None:
        if write.consumed:
            cur.execute(self.sql.consume, (write.instance_id, write.consumed))
        if write.requeue is not None:
            cur.execute(self.sql.enqueue, (write.instance_id, write.requeue, now, write.version))

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
        sql = self.sql
        seq = [0]

        def body(cur: Any) -> tuple[int, float, float]:
            self._serialize(cur, (instance_id,))
            if key is not None:
                cur.execute(sql.add_key, (instance_id, key, now, now - self.key_window))
                if not self._changed(cur):
                    raise DuplicateEventError(
                        f"{instance_id}: an event with key {key!r} was already accepted"
                    )
            params = (instance_id, event, now, version)
            seq[0] = int(cur.execute(sql.enqueue_seq, params).fetchall()[0][0])
            cur.execute(sql.enqueue_alarm, (
                instance_id, job, user_id, now, now, instance_id, now,
            ))  # fmt: skip
            count, first = cur.execute(sql.queue_size, (instance_id,)).fetchall()[0]
            return int(count), float(first), now

        def probe(read: Read) -> bool:
            return bool(read(sql.find_queued, (seq[0], instance_id, event)))

        return self._transaction("enqueue", body, probe)

    def prune(self, history_before: float, keys_before: float) -> None:
        sql = self.sql

        def body(cur: Any) -> None:
            low = first_history_id(
                lambda s, p: list(cur.execute(s, p).fetchall()), sql, history_before
            )
            if low is not None:
                # Records below that id and older than the cutoff: never a newer one (a clock
                # stepped back may leave a few old ones above it, for a later prune).
                cur.execute(sql.prune_history, (low, history_before))
            cur.execute(sql.prune_keys, (keys_before,))

        self._transaction("prune", body, lambda read: True)

    # -- inspection ---------------------------------------------------------------------------

    def _filters(
        self, kind: str | None, job: str | None, status: str | None
    ) -> tuple[list[str], list[Any]]:
        where, params = ["TRUE"], []
        for column, value in (("kind", kind), ("job", job), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return where, params

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
        sql = self.dialect.params
        where, params = self._filters(kind, job, status)
        alarmed_where = " AND ".join([*where, "due_at IS NOT NULL"])
        alarmed_params = list(params)
        if due_before is not None:
            alarmed_where += " AND due_at <= ?"
            alarmed_params.append(due_before)
        select = self.sql.select_alarmed.format(where=sql(alarmed_where))
        rows = [
            Instance(*r)
            for r in self._rows(
                f"{select} ORDER BY due_at, instance_id {sql('LIMIT ? OFFSET ?')}",
                (*alarmed_params, limit, offset),
            )
        ]
        if len(rows) >= limit or due_before is not None:
            return rows
        skipped = 0
        if offset:
            count = self.sql.count_where.format(where=sql(alarmed_where))
            skipped = max(0, offset - int(self._rows(count, alarmed_params)[0][0]))
        select = self.sql.select_idle.format(where=sql(" AND ".join([*where, "due_at IS NULL"])))
        rows += [
            Instance(*r)
            for r in self._rows(
                f"{select} ORDER BY instance_id {sql('LIMIT ? OFFSET ?')}",
                (*params, limit - len(rows), skipped),
            )
        ]
        return rows

    def scan_instances(
        self,
        *,
        kind: str | None = None,
        job: str | None = None,
        status: str | None = None,
        due_before: float | None = None,
        batch_size: int = 1000,
    ) -> Generator[list[Instance]]:
        sql = self.dialect.params
        where, params = self._filters(kind, job, status)
        alarmed, alarmed_params = [*where, "due_at IS NOT NULL"], list(params)
        if due_before is not None:
            alarmed.append("due_at <= ?")
            alarmed_params.append(due_before)
        phases: list[tuple[str, tuple[str, ...], list[Any]]] = [(
            self.sql.select_alarmed.format(where=sql(" AND ".join(alarmed))),
            ("due_at", "instance_id"), alarmed_params,
        )]  # fmt: skip
        if due_before is None:  # then those without an alarm
            idle = sql(" AND ".join([*where, "due_at IS NULL"]))
            phases.append((self.sql.select_idle.format(where=idle), ("instance_id",), params))
        with self._snapshot("read") as read:
            for select, keys, values in phases:
                order = ", ".join(keys)
                after = sql(f" AND ({order}) > ({', '.join('?' * len(keys))})")
                limit = sql(f" ORDER BY {order} LIMIT ?")
                last: tuple[Any, ...] = ()
                while True:
                    statement = f"{select}{after if last else ''}{limit}"
                    rows = [Instance(*r) for r in read(statement, (*values, *last, batch_size))]
                    if rows:
                        yield rows
                    if len(rows) < batch_size:
                        break
                    last = tuple(getattr(rows[-1], key) for key in keys)

    def history(self, instance_id: str, limit: int = 20) -> list[HistoryRow]:
        rows = self._rows(self.sql.history_of, (instance_id, limit))
        return [HistoryRow(*r) for r in reversed(rows)]

    def history_since(self, after_id: int, limit: int = 1000) -> list[HistoryRow]:
        return [HistoryRow(*r) for r in self._rows(self.sql.history_since, (after_id, limit))]

    def recent_history(self, limit: int) -> list[HistoryRow]:
        rows = self._rows(self.sql.history_recent, (limit,))
        return [HistoryRow(*r) for r in reversed(rows)]

    def finished_records(
        self,
        *,
        events: Sequence[str] = END_EVENTS,
        prefixes: Sequence[str] | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[HistoryRow]:
        return newest_finished(
            self._rows, self.sql.finished, (self.sql.prefix_test, "TRUE", "FALSE"),
            events=events, prefixes=prefixes, before_id=before_id, limit=limit,
        )  # fmt: skip

    def count_by_status(self) -> list[tuple[str, str, str, int]]:
        rows = self._rows(self.sql.count_by_status)
        return [(str(k), str(j), str(s), int(n)) for k, j, s, n in rows]

    def count_due(self, before: float) -> tuple[int, float | None]:
        count, earliest = self._rows(self.sql.count_due, (before,))[0]
        return int(count), earliest

    def next_alarm_after(self, after: float) -> float | None:
        value: float | None = self._rows(self.sql.next_after, (after,))[0][0]
        return value

    def history_counts(self, since: float) -> tuple[int, int, int]:
        low = first_history_id(self._rows, self.sql, since)
        if low is None:
            return 0, 0, 0
        records, failures, steps = self._rows(self.sql.history_counts, (low, since))[0]
        return int(records), int(failures), int(steps)

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
        if order not in ("id", "alarm"):
            raise ValueError(f"order must be 'id' or 'alarm', got {order!r}")
        if after_due is not None and after_id is None:
            raise ValueError("after_due needs after_id")
        where: list[str] = []
        params: list[Any] = []

        def add(term: str, *values: Any) -> None:
            where.append(term)
            params.extend(values)

        if kind is not None:
            add("kind = ?", kind)
            if not id_prefix:  # an instance id starts with "KIND:": a range of the primary key
                add("instance_id >= ? AND instance_id < ?", kind + ":", kind + ";")
        if job is not None:
            add("job = ?", job)
        if status == "failed":
            # A literal, not a parameter: SQLite uses the instances_failed partial index only
            # for a query whose WHERE names it.
            where.append("status = 'failed'")
        elif status is not None:
            add("status = ?", status)
        if id_prefix:  # a range of the primary key: everything that starts with the prefix
            add("instance_id >= ? AND instance_id < ?", id_prefix, id_prefix + "\U0010ffff")
        if user_id_prefix:
            add("user_id >= ? AND user_id < ?", user_id_prefix, user_id_prefix + "\U0010ffff")
        if error_contains:
            escaped = error_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            add(f"last_error {self.dialect.ilike} ? ESCAPE '\\'", f"%{escaped}%")
        if order == "alarm":
            where.append("due_at IS NOT NULL")
            if after_id is not None:
                if after_due is None:
                    raise ValueError("order='alarm' pages after (after_due, after_id)")
                add("(due_at, instance_id) > (?, ?)", after_due, after_id)
            sql = self.sql.page_by_alarm
        elif job is not None and kind is None:
            if after_id is not None:
                add("(kind, instance_id) > (?, ?)", after_id.split(":", 1)[0], after_id)
            sql = self.sql.page_by_job
        else:
            if after_id is not None:
                add("instance_id > ?", after_id)
            sql = self.sql.page_by_id
        text = sql.format(where=self.dialect.params(" AND ".join(where) or "TRUE"))
        return [Instance(*r) for r in self._rows(text, (*params, limit))]

    def change_token(self) -> int:
        return int(self._rows(self.sql.change_token)[0][0])

    def history_buckets(self, since: float, width: float, count: int) -> list[tuple[int, int]]:
        buckets = [(0, 0)] * count
        low = first_history_id(self._rows, self.sql, since) if count > 0 else None
        if low is None:
            return buckets
        params = (since, width, low, since, since + width * count)
        for bucket, steps, failures in self._rows(self.sql.history_buckets, params):
            if 0 <= bucket < count:
                buckets[bucket] = (int(steps), int(failures))
        return buckets

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query in this store's own dialect (tests and tools; not in the protocol).

        Raises:
            StorageError: the query failed.
        """
        return self._rows(sql, tuple(params))

    # -- copying a whole database -------------------------------------------------------------

    def table_counts(self) -> dict[str, int]:
        return {t: int(self._rows(COUNT_ROWS[t])[0][0]) for t in TABLES}

    def export(self, batch_size: int = 5000) -> Generator[ExportBatch]:
        with self._snapshot("export") as read:
            counts = {t: int(read(COUNT_ROWS[t], ())[0][0]) for t in TABLES}
            for table in TABLES:
                first, after, keys = self.exports[table]
                last: tuple[Any, ...] | None = None
                while True:
                    if last is None:
                        rows = read(first, (batch_size,))
                    else:
                        rows = read(after, (*last, batch_size))
                    if rows:
                        yield ExportBatch(table, rows, counts)
                    if len(rows) < batch_size:
                        break
                    last = tuple(rows[-1][i] for i in keys)

    def import_batches(self, batches: Iterable[ExportBatch]) -> dict[str, int]:
        expected: dict[str, int] = {}

        def count(cur: Any) -> dict[str, int]:
            return {t: int(cur.execute(COUNT_ROWS[t]).fetchall()[0][0]) for t in TABLES}

        def body(cur: Any) -> dict[str, int]:
            for statement in self.import_prologue:
                cur.execute(statement)
            before = count(cur)
            if any(before.values()):
                raise not_empty_error(self.where, before)
            written = dict.fromkeys(TABLES, 0)
            for batch in batches:
                expected.update(batch.counts)
                self._import_rows(cur, batch.table, batch.rows)
                written[batch.table] += len(batch.rows)
            for statement in self.import_epilogue:
                cur.execute(statement)
            after = count(cur)
            check_import_counts(self.where, expected, written, after)
            return after

        def probe(read: Read) -> bool:
            return {t: int(read(COUNT_ROWS[t], ())[0][0]) for t in TABLES} == expected

        return self._transaction("import", body, probe)

    # -- operating it (metrics, health): appended for issue 20 -------------------------------

    def instance_gauges(self) -> list[tuple[str, str, str, int]]:
        """``(kind, job, status, count)`` of every job that has instances, for every status its
        kind can have (zeros included), plus ``"failing"`` for Continuous jobs: instances whose
        last run failed and was skipped (``status = 'running'``, ``attempt = 1``, a
        ``last_error``). Failing instances are also counted under ``"running"``.

        One statement (``GAUGES``): the jobs are found by skipping along the primary key (one
        probe per job), then each count is a range of an index. Cheap at any size only with
        the ``instances_status`` and ``instances_erred`` indexes (see ``GAUGES``); without
        them each count reads its job's rows.

        Raises:
            StorageError: the database cannot be read.
        """
        rows = self._rows(self.dialect.params(GAUGES))
        return [(str(k), str(j), str(s), int(n)) for k, j, s, n in rows]

    def failing_instances(
        self, *, job: str | None = None, after_id: str | None = None, limit: int = 50
    ) -> list[Instance]:
        """One keyset page of failing Continuous instances (see ``instance_gauges``), by
        ``instance_id``, after ``after_id``, of ``job`` if given.

        Raises:
            StorageError: the database cannot be read.
        """
        where, params = FAILING, [after_id or ""]
        if job is not None:
            where += " AND job = ?"
            params.append(job)
        statement = self.dialect.params(
            f"SELECT {COLUMNS} FROM instances WHERE {where} ORDER BY instance_id LIMIT ?"
        )
        return [Instance(*r) for r in self._rows(statement, (*params, limit))]

    def count_flagged(self) -> tuple[int, int]:
        """``(parked, failing)``: instances with status ``"failed"``, and failing ones (see
        ``instance_gauges``), for health checks. The first reads the ``instances_failed``
        partial index; the second the continuous range of the primary key (or, once it
        exists, the ``instances_erred`` index).

        Raises:
            StorageError: the database cannot be read.
        """
        parked, failing = self._rows(self.dialect.params(FLAGGED), ("",))[0]
        return int(parked), int(failing)


# What ``instance_gauges`` counts. Each kind's statuses (``core.rows.Status``); a failing
# Continuous instance is a running one whose last run failed after its retries and was skipped
# (``on_exhausted="skip"``: attempt back to 1, the error kept; a success clears it). Literals,
# not parameters, so that the planner can match partial indexes. Cheap at a million instances
# with two indexes (schema 5; measured in benchmarks/bench_metrics.py):
#   CREATE INDEX instances_status ON instances (job, kind, status)
#   CREATE INDEX instances_erred ON instances (kind, status, attempt, job)
#       WHERE last_error IS NOT NULL
# The first makes each (job, status) count a range of index entries; the second holds only the
# rows with an error (few) and serves the failing counts and lists (``count_flagged``,
# ``failing_instances``). An extra index entry per step that changes a status or an error.
_KIND_STATUSES = {"continuous": ("running", "failed"), "debounce": ("debouncing", "failed"),
                  "task": ("active", "idle", "failed")}  # fmt: skip
_FAILING_TERMS = "status = 'running' AND attempt = 1 AND last_error IS NOT NULL"
FAILING = (
    f"kind = 'continuous' AND {_FAILING_TERMS} "
    "AND instance_id >= 'continuous:' AND instance_id < 'continuous;' AND instance_id > ?"
)
_NEXT_JOB = (
    "(SELECT i.{column} FROM instances AS i WHERE i.instance_id > "
    "jobs.kind || ':' || jobs.job || ';' ORDER BY i.instance_id LIMIT 1)"
)
GAUGES = (
    "WITH RECURSIVE jobs(kind, job) AS ("
    "SELECT kind, job FROM (SELECT kind, job FROM instances ORDER BY instance_id LIMIT 1) AS first"
    f" UNION ALL SELECT {_NEXT_JOB.format(column='kind')}, {_NEXT_JOB.format(column='job')} "
    "FROM jobs WHERE jobs.kind IS NOT NULL), "
    "statuses(kind, status) AS (VALUES "
    + ", ".join(f"('{k}', '{s}')" for k, statuses in _KIND_STATUSES.items() for s in statuses)
    + ") SELECT jobs.kind, jobs.job, statuses.status, (SELECT count(*) FROM instances AS i "
    "WHERE i.job = jobs.job AND i.kind = jobs.kind AND i.status = statuses.status) "
    "FROM jobs JOIN statuses ON statuses.kind = jobs.kind "
    "UNION ALL SELECT jobs.kind, jobs.job, 'failing', (SELECT count(*) FROM instances AS i "
    "WHERE i.job = jobs.job AND i.kind = jobs.kind AND "
    f"i.{_FAILING_TERMS.replace(' AND ', ' AND i.')}) "
    "FROM jobs WHERE jobs.kind = 'continuous'"
)
FLAGGED = (
    "SELECT (SELECT count(*) FROM instances WHERE status = 'failed'), "
    f"(SELECT count(*) FROM instances WHERE {FAILING})"
)
