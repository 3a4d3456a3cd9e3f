"""The SQLite store: the only module that speaks SQL.

One file in WAL mode, through apsw. The interface is narrow so that another store (say
PostgreSQL) can implement it:

- reads (no transaction, never wait for writers): ``load``, ``queued``, ``due``, ``next_due``,
  ``has_key`` and the inspection queries the CLI uses;
- ``commit(writes)``: apply the decisions of one or many steps in ONE write transaction
  (``BEGIN IMMEDIATE ... COMMIT``). Each write is fenced on the step number it was computed
  from; a write whose fence fails is skipped and reported, the others commit;
- ``enqueue``: store a Debounce event for an instance whose step is running elsewhere.

Every apsw error is turned into ``StorageError`` naming the path and SQLite's reason. An error
raised by COMMIT does not prove a rollback (apsw re-raises e.g. a failed checkpoint after the
data committed), so the store re-reads a commit counter to learn what happened.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import apsw

from durajobs.core.rows import FencedOut, Instance, Queued, RejectedWrite
from durajobs.errors import DuplicateEventError, StorageError
from durajobs.stores.base import (  # store-neutral; HistoryRow and Write re-exported here
    END_EVENTS,
    TABLE_COLUMNS,
    TABLES,
    ExportBatch,
    HistoryRow,
    Write,
    check_import_counts,
    newest_finished,
    not_empty_error,
)

__all__ = ["HistoryRow", "Store", "Write"]

SCHEMA_VERSION = 3
BUSY_NAP = 0.00005  # first nap of the busy handler (seconds); doubles per try
BUSY_NAP_MAX = 0.001

# The partial index's predicate, repeated word for word in the queries that use it (SQLite uses
# a partial index only for a query whose WHERE contains its terms).
SQL_ENDED_TEST = f"event IN ({', '.join(repr(e) for e in END_EVENTS)})"

# Forward migrations: MIGRATIONS[n] takes a database at user_version n to n + 1.
MIGRATIONS: list[tuple[str, ...]] = [
    (
        """CREATE TABLE instances (
            instance_id TEXT PRIMARY KEY NOT NULL,
            kind TEXT NOT NULL,
            job TEXT NOT NULL,
            user_id TEXT NOT NULL,
            status TEXT NOT NULL,
            state TEXT,
            due_at REAL,
            scheduled_for REAL,
            anchor REAL,
            reason TEXT,
            run_count INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            event_count INTEGER NOT NULL,
            created_at REAL NOT NULL,
            started_at REAL,
            last_error TEXT,
            step INTEGER NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX instances_due ON instances(due_at) WHERE due_at IS NOT NULL",
        "CREATE INDEX instances_job ON instances(job, kind)",
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY,
            instance_id TEXT NOT NULL,
            at REAL NOT NULL,
            event TEXT NOT NULL,
            step INTEGER NOT NULL,
            attempt INTEGER,
            duration_ms REAL,
            error TEXT,
            data TEXT
        )""",
        "CREATE INDEX history_instance ON history(instance_id, id)",
        """CREATE TABLE inbox (
            seq INTEGER PRIMARY KEY,
            instance_id TEXT NOT NULL,
            event TEXT NOT NULL,
            added_at REAL NOT NULL
        )""",
        "CREATE INDEX inbox_instance ON inbox(instance_id, seq)",
        """CREATE TABLE event_keys (
            instance_id TEXT NOT NULL,
            key TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (instance_id, key)
        ) WITHOUT ROWID""",
    ),
    # 1 -> 2: find parked instances without walking the whole table (`durajobs ls --status
    # failed`, `doctor`); tiny, since it holds only the failed rows.
    ("CREATE INDEX instances_failed ON instances(instance_id) WHERE status = 'failed'",),
    # 2 -> 3: list finished instances (`durajobs ls --status terminated`, the dashboard) from
    # the records that end them, newest first, without reading the rest of the history.
    (f"CREATE INDEX history_ended ON history(event, id) WHERE {SQL_ENDED_TEST}",),
]

COLUMNS = (
    "instance_id, kind, job, user_id, status, state, due_at, scheduled_for, anchor, reason, "
    "run_count, attempt, event_count, created_at, started_at, last_error, step, updated_at"
)
# Text that is not UTF-8 (only another program can have written it) cannot be read as str: the
# inspection reads then fetch the text columns as bytes and show them with escapes, so one odd
# row never stops a listing (``durajobs ls``, the dashboard, the daemon's due reads).
_TEXT_COLUMNS = ("instance_id", "kind", "job", "user_id", "status", "state", "reason",
                 "last_error", "event", "error", "data")  # fmt: skip
HISTORY_COLUMNS = "id, instance_id, at, event, step, attempt, duration_ms, error, data"
_SAFE_COLUMNS = ", ".join(
    f"CAST({c} AS BLOB)" if c in _TEXT_COLUMNS else c for c in COLUMNS.split(", ")
)
_SAFE_HISTORY = ", ".join(
    f"CAST({c} AS BLOB)" if c in _TEXT_COLUMNS else c for c in HISTORY_COLUMNS.split(", ")
)
_SET_ALL = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS.split(", ")[4:])

# -- named statements -------------------------------------------------------------------------
SQL_LOAD = f"SELECT {COLUMNS} FROM instances WHERE instance_id = ?"
SQL_LOAD_FLAGGED = (
    f"SELECT {COLUMNS}, EXISTS (SELECT 1 FROM inbox WHERE inbox.instance_id = ?1) "
    "FROM instances WHERE instance_id = ?1"
)
SQL_STEP = "SELECT step FROM instances WHERE instance_id = ?"
# Bulk calls read all their instances in one statement each (ids as a JSON array).
SQL_LOAD_MANY = (
    f"SELECT {COLUMNS} FROM instances WHERE instance_id IN (SELECT value FROM json_each(?))"
)
SQL_QUEUED_MANY = (
    "SELECT instance_id, seq, event, added_at FROM inbox "
    "WHERE instance_id IN (SELECT value FROM json_each(?)) ORDER BY instance_id, seq"
)
SQL_LAST_STEPS = (
    "SELECT instance_id, max(step) FROM history "
    "WHERE instance_id IN (SELECT value FROM json_each(?)) GROUP BY instance_id"
)
# A new incarnation of an instance id (after a purge) goes on from the last step number in its
# history, so ``ctx.step_key`` ("{instance_id}#{step}") never repeats within history_retention.
SQL_LAST_STEP_EXPR = (
    "SELECT coalesce((SELECT step FROM history WHERE instance_id = ?1 ORDER BY id DESC LIMIT 1), 0)"
)
SQL_FIND_RECORD = (
    "SELECT 1 FROM history WHERE instance_id = ?1 AND step = ?2 AND event = ?3 "
    "ORDER BY id DESC LIMIT 1"
)
# ``LIMIT ?+0``, not ``LIMIT ?``: SQLite (3.54) plans ORDER BY ... LIMIT with the bound value of
# a plain ``LIMIT ?`` and so re-prepares the statement at every execution (~14 us here); an
# expression keeps the prepared plan. These two run on every poll of run_due and the daemon.
SQL_DUE = f"SELECT {COLUMNS} FROM instances WHERE due_at <= ? ORDER BY due_at LIMIT ?+0"
# Only the key: an index-only scan of instances_due (it stores the primary key); the row is read
# after the claim anyway.
SQL_DUE_IDS = "SELECT instance_id FROM instances WHERE due_at <= ? ORDER BY due_at LIMIT ?+0"
SQL_NEXT_DUE = "SELECT due_at FROM instances WHERE due_at IS NOT NULL ORDER BY due_at LIMIT ?+0"
SQL_QUEUED = "SELECT seq, event, added_at FROM inbox WHERE instance_id = ? ORDER BY seq"
SQL_HAS_KEY = "SELECT 1 FROM event_keys WHERE instance_id = ? AND key = ? AND at >= ?"
# Insert a new instance, or replace the row if it is still at the step the write was computed
# from (the fence). A row with no events may be a placeholder that ``enqueue`` made.
SQL_PUT = (
    f"INSERT INTO instances ({COLUMNS}) VALUES ({', '.join('?' * 18)}) "
    f"ON CONFLICT(instance_id) DO UPDATE SET {_SET_ALL} WHERE instances.step = ?"
)
# Debounce: events queued while this step ran need a step soon, so the alarm becomes due now
# (unless a retry alarm is pending: the retry folds them, after its backoff).
SQL_PUT_DEBOUNCE = (
    f"INSERT INTO instances ({COLUMNS}) VALUES ({', '.join(f'?{i}' for i in range(1, 19))}) "
    f"ON CONFLICT(instance_id) DO UPDATE SET {_SET_ALL}, due_at = CASE "
    "WHEN excluded.status != 'failed' AND excluded.attempt = 1 AND EXISTS "
    "(SELECT 1 FROM inbox WHERE inbox.instance_id = excluded.instance_id) "
    "THEN min(coalesce(excluded.due_at, ?20), ?20) ELSE excluded.due_at END "
    "WHERE instances.step = ?19"
)
SQL_DELETE = "DELETE FROM instances WHERE instance_id = ? AND step = ?"
SQL_HISTORY = (
    "INSERT INTO history (instance_id, at, event, step, attempt, duration_ms, error, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SQL_TRIM_HISTORY = (
    "DELETE FROM history WHERE instance_id = ?1 AND id <= (SELECT id FROM history "
    "WHERE instance_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)"
)
SQL_CONSUME = "DELETE FROM inbox WHERE instance_id = ? AND seq <= ?"
# A key older than the window may be reused: it is refreshed, not rejected.
SQL_ADD_KEY = (
    "INSERT INTO event_keys (instance_id, key, at) VALUES (?1, ?2, ?3) "
    "ON CONFLICT(instance_id, key) DO UPDATE SET at = ?3 WHERE event_keys.at < ?4"
)
SQL_REVIVE_QUEUED = (
    f"INSERT INTO instances ({COLUMNS}) SELECT ?1, 'debounce', ?2, ?3, 'debouncing', NULL, ?4, "
    "NULL, NULL, NULL, 0, 1, 0, ?4, NULL, NULL, ?5, ?4 "
    "WHERE EXISTS (SELECT 1 FROM inbox WHERE inbox.instance_id = ?1)"
)
SQL_ENQUEUE = "INSERT INTO inbox (instance_id, event, added_at) VALUES (?, ?, ?)"
SQL_ENQUEUE_ALARM = (
    f"INSERT INTO instances ({COLUMNS}) VALUES (?1, 'debounce', ?2, ?3, 'debouncing', NULL, ?4, "
    f"NULL, NULL, NULL, 0, 1, 0, ?4, NULL, NULL, ({SQL_LAST_STEP_EXPR}), ?4) "
    "ON CONFLICT(instance_id) DO UPDATE SET due_at = excluded.due_at "
    "WHERE instances.status != 'failed' "
    "AND (instances.due_at IS NULL OR instances.due_at > excluded.due_at)"
)
SQL_QUEUE_SIZE = "SELECT count(*), min(added_at) FROM inbox WHERE instance_id = ?"
SQL_FIND_QUEUED = "SELECT 1 FROM inbox WHERE seq = ? AND instance_id = ? AND event = ?"
# ``id < ?1`` bounds the delete to the old end of the table (the first id at or after the
# cutoff, found by bisecting ids, which grow with time): ``history`` has no index on ``at``, and a
# plain ``at < ?`` scans every record ever kept -- 0.2 s and the write lock for 2 million.
SQL_PRUNE_HISTORY = "DELETE FROM history WHERE id < ?1 AND at < ?2"
SQL_PRUNE_KEYS = "DELETE FROM event_keys WHERE at < ?"
# Inspection (durajobs stats/doctor/tail). Alarm counts use the due_at partial index; the
# history window is found by bisecting ids (they grow with time), never by scanning ``at``.
SQL_COUNT_BY_STATUS = (
    "SELECT kind, job, status, count(*) FROM instances GROUP BY kind, job, status "
    "ORDER BY kind, job, status"
)
SQL_COUNT_DUE = "SELECT count(*), min(due_at) FROM instances WHERE due_at <= ?"
SQL_NEXT_AFTER = "SELECT min(due_at) FROM instances WHERE due_at > ?"
# Two subqueries: SQLite reads min() or max() from the end of the b-tree only when the query
# has just one of them; ``SELECT min(id), max(id)`` scans the whole table.
SQL_HISTORY_ID_RANGE = "SELECT (SELECT min(id) FROM history), (SELECT max(id) FROM history)"
SQL_HISTORY_AT_ID = "SELECT at FROM history WHERE id >= ? ORDER BY id LIMIT 1"
SQL_HISTORY_COUNTS = (
    "SELECT count(*), count(*) FILTER (WHERE event = 'job.failed'), "
    "count(DISTINCT instance_id || ':' || step) FROM history WHERE id >= ? AND at >= ?"
)
SQL_HISTORY_RECENT = f"SELECT {HISTORY_COLUMNS} FROM history ORDER BY id DESC LIMIT ?"
# Candidate final records of finished instances, newest first: a keyset range of one event in the
# history_ended index; the last column says whether the record still ends its instance (no later
# record, no row: two index probes) and matches the id prefixes (see base.newest_finished).
SQL_FINISHED = (
    f"SELECT {HISTORY_COLUMNS}, ({{prefixes}}) AND NOT EXISTS (SELECT 1 FROM history AS later "
    "WHERE later.instance_id = h.instance_id AND later.id > h.id) "
    "AND NOT EXISTS (SELECT 1 FROM instances WHERE instances.instance_id = h.instance_id) "
    f"FROM history AS h INDEXED BY history_ended WHERE {SQL_ENDED_TEST} AND event = ? AND id < ? "
    "ORDER BY id DESC LIMIT ?"
)
# One prefix's test of SQL_FINISHED (its length and text as parameters), true, false.
SQL_FINISHED_PREFIX = ("substr(h.instance_id, 1, ?) = ?", "1", "0")
# Dashboard pages (keyset: each page starts after the last row of the previous one, so a page
# reads only its own rows from an index: no OFFSET, no count). Filters are joined with AND.
SQL_PAGE_BY_ID = f"SELECT {COLUMNS} FROM instances WHERE {{where}} ORDER BY instance_id LIMIT ?"
# A job's instances in (kind, instance_id) order read the instances_job index in order; it is
# the instance_id order too, since an instance id starts with its kind and no kind is a prefix
# of another.
SQL_PAGE_BY_JOB = (
    f"SELECT {COLUMNS} FROM instances INDEXED BY instances_job WHERE {{where}} "
    "ORDER BY kind, instance_id LIMIT ?"
)
SQL_PAGE_BY_ALARM = (
    f"SELECT {COLUMNS} FROM instances INDEXED BY instances_due WHERE {{where}} "
    "ORDER BY due_at, instance_id LIMIT ?"
)
# A constant, not a parameter: SQLite uses the instances_failed partial index only for a query
# whose WHERE names its literal.
SQL_PAGE_FAILED = "status = 'failed'"
SQL_DATA_VERSION = "PRAGMA data_version"
SQL_HISTORY_BUCKETS = (
    "SELECT CAST((at - ?2) / ?3 AS INTEGER) AS bucket, count(DISTINCT instance_id || ':' || step), "
    "count(*) FILTER (WHERE event = 'job.failed') FROM history "
    "WHERE id >= ?1 AND at >= ?2 AND at < ?4 GROUP BY bucket"
)

# Copying a whole database (``durajobs copy``): each table read in key order, a page at a time
# (keyset: after the last key of the previous page), and written back with its ids.
_EXPORT_KEYS = {"instances": ("instance_id",), "inbox": ("seq",),
                "event_keys": ("instance_id", "key"), "history": ("id",)}  # fmt: skip


def _export_sql(table: str) -> tuple[str, str, tuple[int, ...]]:
    names = TABLE_COLUMNS[table]
    columns = {"instances": COLUMNS, "history": HISTORY_COLUMNS}.get(table, ", ".join(names))
    keys = _EXPORT_KEYS[table]
    order = ", ".join(keys)
    after = f"({order}) > ({', '.join('?' * len(keys))})"
    return (
        f"SELECT {columns} FROM {table} ORDER BY {order} LIMIT ?",
        f"SELECT {columns} FROM {table} WHERE {after} ORDER BY {order} LIMIT ?",
        tuple(names.index(k) for k in keys),
    )


SQL_EXPORT = {t: _export_sql(t) for t in TABLES}
SQL_IMPORT = {
    t: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})"
    for t, c in TABLE_COLUMNS.items()
}
SQL_COUNT_ROWS = {t: f"SELECT count(*) FROM {t}" for t in TABLES}

P = ParamSpec("P")
T = TypeVar("T")


# Errors that a write's values cause while binding (apsw encodes str as UTF-8 and ints as
# 64-bit), as opposed to failures of the database: they reject that write, not the group.
_CONTENT_ERRORS = (
    UnicodeError,
    OverflowError,
    TypeError,
    apsw.TooBigError,
    apsw.MismatchError,
    apsw.RangeError,
)


def _count(cur: apsw.Cursor, table: str) -> int:
    count: int = cur.execute(SQL_COUNT_ROWS[table]).fetchall()[0][0]  # type: ignore[assignment]
    return count


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    name = type(exc).__name__
    return text if name in text else f"{name}: {text}"


class Store:
    """A durajobs database file.

    Args:
        path: the database file; created if missing (its directory must exist).
        durability: ``"full"`` (synchronous=FULL: a commit survives power loss) or
            ``"normal"`` (faster; power loss may lose the latest commits, never tears one).
        busy_timeout: seconds to wait for another writer's transaction before giving up.
        readonly: open for inspection only; never creates or migrates.
        vfs: an apsw VFS name (tests use a fault-injecting one).

    Raises:
        StorageError: the file cannot be opened or is not a durajobs database.
        ValueError: ``durability`` is not ``"full"`` or ``"normal"``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "full",
        busy_timeout: float = 5.0,
        readonly: bool = False,
        vfs: str | None = None,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        self.path = os.fspath(path)
        self.durability = durability
        self.readonly = readonly
        self.key_window = 86400.0  # seconds idempotency keys are remembered (set by Jobs)
        self._filtered_sql: dict[tuple[str, int], str] = {}
        if readonly:
            if not os.path.exists(self.path):
                raise StorageError(f"{self.path}: no such database file")
            flags = apsw.SQLITE_OPEN_READONLY
        else:
            flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        try:
            self._connect(self.path, flags, vfs, busy_timeout)
        except StorageError:
            folder = os.path.dirname(os.path.abspath(self.path))
            if not readonly or os.path.exists(self.path + "-wal") or os.access(folder, os.W_OK):
                raise
            # A reader that cannot write the directory cannot create the -shm file WAL needs.
            # With no -wal file everything is in the main file: read it as immutable.
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?immutable=1"
            self._connect(uri, flags | apsw.SQLITE_OPEN_URI, vfs, busy_timeout)

    # -- plumbing -------------------------------------------------------------------------

    def _connect(self, name: str, flags: int, vfs: str | None, busy_timeout: float) -> None:
        try:
            conn = apsw.Connection(name, flags=flags, vfs=vfs)
        except apsw.Error as exc:
            raise self._error(exc, "cannot open") from None
        self._conn = conn
        try:
            self._busy_timeout = busy_timeout
            self._busy_since = 0.0
            conn.set_busy_handler(self._busy)
            # Refuse another application's file (or a newer schema) before changing anything
            # in it: switching to WAL mode would be permanent.
            self._check_schema()
            # One statement per execute: apsw runs later statements only when iterated.
            if not self.readonly:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
                if mode != "wal":
                    raise StorageError(f"{self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.durability.upper()}")
            conn.execute("PRAGMA temp_store=MEMORY")
            self._migrate()
        except StorageError:
            conn.close()
            raise
        except apsw.Error as exc:
            conn.close()
            raise self._error(exc, "cannot open") from None

    def _busy(self, tries: int) -> bool:
        """SQLite's busy handler: wait for another connection's write lock, in short naps.

        SQLite's own handler (``set_busy_timeout``) sleeps 1, 2, 5, 10, 15, 20 ms... between
        tries, but a durajobs transaction holds the lock for a fraction of a millisecond: a
        client sending while the daemon commits a group (or the daemon firing an alarm while a
        client commits) would lose a millisecond or more on every collision. Naps here start
        at 50 us and double up to 1 ms; the total wait is still bounded by ``busy_timeout``.
        """
        now = time.monotonic()
        if tries == 0:
            self._busy_since = now
        elif now - self._busy_since >= self._busy_timeout:
            return False
        time.sleep(min(BUSY_NAP * (1 << min(tries, 5)), BUSY_NAP_MAX))
        return True

    def _error(self, exc: BaseException, doing: str) -> StorageError:
        reason = _reason(exc)
        if isinstance(exc, apsw.BusyError):
            reason = f"database is locked by another process past the busy timeout ({reason})"
        elif isinstance(exc, apsw.FullError):
            reason = f"disk or database full ({reason})"
        elif isinstance(exc, apsw.NotADBError):
            reason = f"not a database ({reason})"
        elif isinstance(exc, apsw.CorruptError):
            reason = f"database is corrupt ({reason})"
        elif isinstance(exc, apsw.ReadOnlyError):
            reason = f"read-only ({reason})"
        elif isinstance(exc, apsw.CantOpenError):
            folder = os.path.dirname(os.path.abspath(self.path))
            if not os.path.isdir(folder):
                reason = f"directory {folder} does not exist"
            elif not os.access(folder, os.W_OK) or (
                os.path.exists(self.path) and not os.access(self.path, os.W_OK)
            ):
                reason = (
                    f"read-only: the file or its directory is not writable (WAL mode writes "
                    f"{os.path.basename(self.path)}-wal and -shm beside it) ({reason})"
                )
        return StorageError(f"{self.path}: {doing}: {reason}")

    def _check_schema(self) -> int:
        conn = self._conn
        version: int = conn.execute("PRAGMA user_version").fetchall()[0][0]  # type: ignore[assignment]
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{self.path}: schema version {version} is newer than this durajobs "
                f"understands ({SCHEMA_VERSION}); upgrade durajobs"
            )
        if version == 0 and self._has_foreign_tables():
            raise StorageError(f"{self.path}: not a durajobs database (it has other tables)")
        return version

    def _migrate(self) -> None:
        conn = self._conn
        version = self._check_schema()
        if version == SCHEMA_VERSION:
            return
        if self.readonly:  # inspection never migrates: a writer of this version must
            raise StorageError(
                f"{self.path}: not a durajobs database (schema version 0)"
                if version == 0
                else f"{self.path}: schema version {version} is older than this durajobs "
                f"({SCHEMA_VERSION}); it is migrated when the application or the daemon of "
                "this version opens it"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            current: int = conn.execute("PRAGMA user_version").fetchall()[0][0]  # type: ignore[assignment]
            for target in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise

    def _has_foreign_tables(self) -> bool:
        rows = self._conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        return any(not name.startswith("sqlite_") for (name,) in rows)

    @contextmanager
    def _mapped(self, doing: str) -> Iterator[None]:
        """Map apsw errors to StorageError (for the cold inspection paths)."""
        try:
            yield
        except apsw.Error as exc:
            raise self._error(exc, doing) from None

    def _transaction(
        self, doing: str, body: Callable[[apsw.Cursor], T], probe: Callable[[], bool]
    ) -> T:
        """The one write-transaction helper: ``BEGIN IMMEDIATE``, ``body``, ``COMMIT``.

        ``probe()`` re-reads whether the transaction's effect is in the database; it is asked
        only when COMMIT raised yet no transaction is open any more, because apsw re-raises
        errors (such as a failed checkpoint) that SQLite hit after the data committed.
        """
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except apsw.Error as exc:
            raise self._error(exc, doing) from None
        try:
            result = body(conn.cursor())
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, apsw.Error):
                raise self._error(exc, doing) from None
            raise
        try:
            conn.execute("COMMIT")
        except apsw.Error as exc:
            if not conn.get_autocommit():
                self._rollback()
                raise self._error(exc, doing) from None
            try:
                committed = probe()
            except apsw.Error:
                raise self._error(exc, doing + " (outcome unknown)") from None
            if not committed:
                raise self._error(exc, doing) from None
        return result

    def _rollback(self) -> None:
        conn = self._conn
        if not conn.get_autocommit():
            try:
                conn.execute("ROLLBACK")
            except apsw.Error as exc:
                raise self._error(exc, "rollback") from None

    def close(self) -> None:
        """Close the connection (idempotent).

        Closing checkpoints the WAL; if that fails, the data stays safe in the WAL (the next
        open replays it), the connection is closed anyway, and the error is reported.

        Raises:
            StorageError: the final checkpoint failed.
        """
        try:
            self._conn.close()
        except apsw.Error as exc:
            with contextlib.suppress(apsw.Error):
                self._conn.close(True)
            raise self._error(exc, "close") from None

    # -- reads ----------------------------------------------------------------------------

    def load(self, instance_id: str) -> Instance | None:
        """The committed row of an instance, or ``None``.

        Raises:
            StorageError: the file cannot be read.
        """
        try:
            for row in self._conn.execute(SQL_LOAD, (instance_id,)):
                return Instance(*row)
        except apsw.Error as exc:
            raise self._error(exc, "read") from None
        except UnicodeDecodeError:  # an odd row written by another program: shown escaped
            with self._mapped("read"):
                rows = self._rows(SQL_LOAD, (instance_id,))
            return Instance(*rows[0]) if rows else None
        return None

    def load_with_queue(self, instance_id: str) -> tuple[Instance | None, list[Queued]]:
        """The row and its queued events (Debounce), with one query when none are queued.

        Raises:
            StorageError: the file cannot be read.
        """
        try:
            for row in self._conn.execute(SQL_LOAD_FLAGGED, (instance_id,)):
                inst = Instance(*row[:-1])
                return inst, self.queued(instance_id) if row[-1] else []
        except apsw.Error as exc:
            raise self._error(exc, "read") from None
        return None, []

    def load_many(
        self, instance_ids: Sequence[str], *, with_queue: bool = False
    ) -> dict[str, tuple[Instance | None, list[Queued]]]:
        """``load_with_queue`` (or ``load``) of many instances in one statement or two (bulk
        calls): every id maps to its row (or ``None``) and its queued events.

        Raises:
            StorageError: the file cannot be read.
        """
        ids = json.dumps(list(instance_ids))
        found: dict[str, tuple[Instance | None, list[Queued]]]
        found = {instance_id: (None, []) for instance_id in instance_ids}
        try:
            for row in self._conn.execute(SQL_LOAD_MANY, (ids,)):
                found[row[0]] = (Instance(*row), [])
            if with_queue:
                for instance_id, *queued in self._conn.execute(SQL_QUEUED_MANY, (ids,)):
                    found[instance_id][1].append(Queued(*queued))
        except apsw.Error as exc:
            raise self._error(exc, "read") from None
        return found

    def last_steps(self, instance_ids: Sequence[str]) -> dict[str, int]:
        """``last_step`` of many instance ids (ids with no history are left out).

        Raises:
            StorageError: the file cannot be read.
        """
        try:
            rows = self._conn.execute(SQL_LAST_STEPS, (json.dumps(list(instance_ids)),))
            return {str(i): int(step) for i, step in rows}
        except apsw.Error as exc:
            raise self._error(exc, "read") from None

    def last_step(self, instance_id: str) -> int:
        """The last step number recorded for an instance id (0 if none): a new instance with
        that id numbers its steps on from there.

        Raises:
            StorageError: the file cannot be read.
        """
        try:
            last: Any = self._conn.execute(SQL_LAST_STEP_EXPR, (instance_id,)).fetchall()[0][0]
            return int(last)
        except apsw.Error as exc:
            raise self._error(exc, "read") from None

    def queued(self, instance_id: str) -> list[Queued]:
        """Events stored by ``enqueue`` and not yet folded, oldest first.

        Raises:
            StorageError: the file cannot be read.
        """
        try:
            return [Queued(*row) for row in self._conn.execute(SQL_QUEUED, (instance_id,))]
        except apsw.Error as exc:
            raise self._error(exc, "read") from None

    def due(self, now: float, limit: int, prefixes: Sequence[str] | None = None) -> list[Instance]:
        """Instances whose alarm is at or before ``now``, earliest first.

        ``prefixes`` keeps only instance ids starting with one of them (``"kind:job:"``: the
        jobs a registry can run), so that instances of unknown jobs never crowd them out.

        Raises:
            StorageError: the file cannot be read.
        """
        sql, params = self._for_jobs(SQL_DUE, prefixes, (now, limit))
        try:
            return [Instance(*row) for row in self._rows(sql, params)]
        except apsw.Error as exc:
            raise self._error(exc, "read") from None

    def due_ids(self, now: float, limit: int, prefixes: Sequence[str] | None = None) -> list[str]:
        """Ids of the instances whose alarm is at or before ``now``, earliest first.

        ``prefixes``: as for ``due``.

        Raises:
            StorageError: the file cannot be read.
        """
        sql, params = self._for_jobs(SQL_DUE_IDS, prefixes, (now, limit))
        try:
            return [row[0] for row in self._conn.execute(sql, params)]
        except apsw.Error as exc:
            raise self._error(exc, "read") from None

    def next_due(self, skip: int = 0, prefixes: Sequence[str] | None = None) -> list[float]:
        """The earliest ``skip + 1`` alarm times (ascending).

        ``prefixes``: as for ``due``.

        Raises:
            StorageError: the file cannot be read.
        """
        sql, params = self._for_jobs(SQL_NEXT_DUE, prefixes, (skip + 1,))
        try:
            return [row[0] for row in self._conn.execute(sql, params)]
        except apsw.Error as exc:
            raise self._error(exc, "read") from None

    def _for_jobs(
        self, sql: str, prefixes: Sequence[str] | None, params: tuple[Any, ...]
    ) -> tuple[str, tuple[Any, ...]]:
        """``sql`` restricted to instance ids with one of ``prefixes`` (an index-only test: the
        due_at index holds the id), with its parameters; cached per statement and count."""
        if prefixes is None:
            return sql, params
        key = (sql, len(prefixes))
        filtered = self._filtered_sql.get(key)
        if filtered is None:
            test = " OR ".join(["substr(instance_id, 1, ?) = ?"] * len(prefixes)) or "0"
            head, _, tail = sql.partition(" ORDER BY ")
            where = "WHERE" if " WHERE " not in head else "AND"
            filtered = self._filtered_sql[key] = f"{head} {where} ({test}) ORDER BY {tail}"
        # The filter's parameters go before ORDER BY's: the statements' LIMIT is the last one.
        flat = [v for prefix in prefixes for v in (len(prefix), prefix)]
        return filtered, (*params[:-1], *flat, params[-1])

    def has_key(self, instance_id: str, key: str, now: float) -> bool:
        """Whether an idempotency key was accepted for the instance within ``key_window``.

        Raises:
            StorageError: the file cannot be read.
        """
        params = (instance_id, key, now - self.key_window)
        try:
            return bool(self._conn.execute(SQL_HAS_KEY, params).fetchall())
        except apsw.Error as exc:
            raise self._error(exc, "read") from None

    # -- writes ---------------------------------------------------------------------------

    def commit(
        self, writes: Sequence[Write], now: float, history_limit: int, *, atomic: bool = False
    ) -> list[bool]:
        """Apply the writes in one transaction; returns, per write, whether its fence held.

        ``atomic``: all or nothing (bulk calls): a fenced-out write or a taken key raises
        ``FencedOut`` and nothing is applied.

        Raises:
            StorageError: the transaction could not be committed: the live database is
                unchanged (if the final fsync failed, its frames may still be replayed after a
                crash: the caller was not acknowledged either way).
            DuplicateEventError: a single keyed write whose key was taken meanwhile.
            RejectedWrite: one write's content cannot be stored (e.g. text that is not valid
                UTF-8, an integer out of range); nothing of the transaction is applied.
        """

        def body(cur: apsw.Cursor) -> list[bool]:
            applied = []
            for index, write in enumerate(writes):
                try:
                    if write.key is None:
                        applied.append(self._apply(cur, write, now, history_limit))
                    else:
                        applied.append(self._apply_keyed(cur, write, now, history_limit, writes))
                except _CONTENT_ERRORS as exc:
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

        def probe() -> bool:
            first = writes[0]
            if first.records:  # step numbers never repeat for an id: its record is proof
                step = first.row.step if first.row is not None else first.expected_step + 1
                params = (first.instance_id, step, first.records[-1][0])
                return bool(self._conn.execute(SQL_FIND_RECORD, params).fetchall())
            rows = self._conn.execute(SQL_STEP, (first.instance_id,)).fetchall()
            if first.row is not None:
                return bool(rows) and rows[0][0] == first.row.step
            return not rows or rows[0][0] != first.expected_step

        return self._transaction("commit", body, probe)

    def _apply_keyed(
        self, cur: apsw.Cursor, write: Write, now: float, history_limit: int, writes: Any
    ) -> bool:
        cur.execute("SAVEPOINT keyed")
        ok = self._apply(cur, write, now, history_limit)
        if ok:
            cur.execute(SQL_ADD_KEY, (write.instance_id, write.key, now, now - self.key_window))
            if self._conn.changes() == 0:
                cur.execute("ROLLBACK TO keyed")
                cur.execute("RELEASE keyed")
                if len(writes) == 1:
                    raise DuplicateEventError(
                        f"{write.instance_id}: an event with key {write.key!r} was already accepted"
                    )
                return False
        cur.execute("RELEASE keyed")
        return ok

    def _apply(self, cur: apsw.Cursor, write: Write, now: float, history_limit: int) -> bool:
        if write.queue_only:
            cur.execute(SQL_ENQUEUE, (write.instance_id, write.requeue, now))
            cur.execute(SQL_ENQUEUE_ALARM, (write.instance_id, write.job, write.user_id, now))
            return True
        row = write.row
        instance_id = write.instance_id
        debounce = write.kind == "debounce"
        queue_changes = debounce and (write.consumed or write.requeue is not None)
        if row is None:
            cur.execute(SQL_DELETE, (instance_id, write.expected_step))
            if self._conn.changes() == 0 and not write.new:
                return False  # fenced out: nothing of this write is applied
            step = write.expected_step + 1
            if queue_changes:
                self._queue_changes(cur, write, now)
            if debounce:
                # The step consumed the events it saw; any queued since (during a flush, a
                # terminate or a clear) open the next batch: nothing acknowledged is dropped.
                # The new batch goes on from this step's number: step keys never repeat.
                cur.execute(SQL_REVIVE_QUEUED, (instance_id, write.job, write.user_id, now, step))
        elif queue_changes:
            # The upsert decides from the queue whether the alarm is due now, so the queue
            # changes go first, undone if the fence then fails.
            cur.execute("SAVEPOINT queue")
            self._queue_changes(cur, write, now)
            cur.execute(SQL_PUT_DEBOUNCE, (*row, write.expected_step, now))
            fenced_out = self._conn.changes() == 0
            if fenced_out:
                cur.execute("ROLLBACK TO queue")
            cur.execute("RELEASE queue")
            if fenced_out:
                return False
            step = row.step
        else:
            cur.execute(SQL_PUT_DEBOUNCE if debounce else SQL_PUT, (
                *row, write.expected_step, *((now,) if debounce else ()),
            ))  # fmt: skip
            if self._conn.changes() == 0:
                return False
            step = row.step
        records = write.records
        if records:
            if len(records) == 1:
                event, *rest = records[0]
                cur.execute(SQL_HISTORY, (instance_id, now, event, step, *rest))
            else:
                cur.executemany(
                    SQL_HISTORY,
                    [(instance_id, now, event, step, *rest) for (event, *rest) in records],
                )
            if step % 32 == 0:
                cur.execute(SQL_TRIM_HISTORY, (instance_id, history_limit))
        return True

    @staticmethod
    def _queue_changes(cur: apsw.Cursor, write: Write, now: float) -> None:
        if write.consumed:
            cur.execute(SQL_CONSUME, (write.instance_id, write.consumed))
        if write.requeue is not None:
            cur.execute(SQL_ENQUEUE, (write.instance_id, write.requeue, now))

    def enqueue(
        self, instance_id: str, job: str, user_id: str, event: str, key: str | None, now: float
    ) -> tuple[int, float, float]:
        """Store a Debounce event for an instance busy elsewhere and make it due now.

        Returns the number of queued events and when the first and the last were added.

        Raises:
            DuplicateEventError: the key was already accepted for this instance.
            StorageError: the event could not be stored.
        """
        seq = [0]

        def body(cur: apsw.Cursor) -> tuple[int, float, float]:
            if key is not None:
                cur.execute(SQL_ADD_KEY, (instance_id, key, now, now - self.key_window))
                if self._conn.changes() == 0:
                    raise DuplicateEventError(
                        f"{instance_id}: an event with key {key!r} was already accepted"
                    )
            cur.execute(SQL_ENQUEUE, (instance_id, event, now))
            seq[0] = self._conn.last_insert_rowid()
            cur.execute(SQL_ENQUEUE_ALARM, (instance_id, job, user_id, now))
            size: Any = cur.execute(SQL_QUEUE_SIZE, (instance_id,)).fetchall()[0]
            return int(size[0]), float(size[1]), now

        def probe() -> bool:
            found = self._conn.execute(SQL_FIND_QUEUED, (seq[0], instance_id, event)).fetchall()
            return bool(found)

        return self._transaction("enqueue", body, probe)

    def prune(self, history_before: float, keys_before: float) -> None:
        """Delete history records and idempotency keys older than the given times.

        Raises:
            StorageError: the transaction failed.
        """

        def body(cur: apsw.Cursor) -> None:
            ids: Any = cur.execute(SQL_HISTORY_ID_RANGE).fetchall()[0]
            first, last = ids
            if first is not None:
                low, high = int(first), int(last) + 1  # past the newest: everything may go
                while low < high:  # bisect for the first id at or after the cutoff
                    middle = (low + high) // 2
                    at: Any = cur.execute(SQL_HISTORY_AT_ID, (middle,)).fetchall()[0][0]
                    if at < history_before:
                        low = middle + 1
                    else:
                        high = middle
                # Records below that id and older than the cutoff: never a newer one (a clock
                # stepped back may leave a few old ones above it, for a later prune).
                cur.execute(SQL_PRUNE_HISTORY, (low, history_before))
            cur.execute(SQL_PRUNE_KEYS, (keys_before,))

        self._transaction("prune", body, lambda: True)

    # -- inspection (CLI) -----------------------------------------------------------------

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
        """Instances sorted by next alarm (those without one last), filtered and paginated.

        Raises:
            StorageError: the file cannot be read.
        """
        where, params = self._filters(kind, job, status)
        with self._mapped("read"):
            # Alarmed instances come from the due_at index in order; the rest follow.
            alarmed_where = " AND ".join([*where, "due_at IS NOT NULL"])
            if due_before is not None:
                alarmed_where += " AND due_at <= ?"
            alarmed_params = [*params] + ([due_before] if due_before is not None else [])
            rows = [
                Instance(*r)
                for r in self._rows(
                    f"SELECT {COLUMNS} FROM instances INDEXED BY instances_due "
                    f"WHERE {alarmed_where} ORDER BY due_at, instance_id LIMIT ? OFFSET ?",
                    (*alarmed_params, limit, offset),
                )
            ]
            if len(rows) >= limit or due_before is not None:
                return rows
            skipped = 0
            if offset:
                alarmed: int = self._conn.execute(
                    f"SELECT count(*) FROM instances WHERE {alarmed_where}", alarmed_params
                ).fetchall()[0][0]  # type: ignore[assignment]
                skipped = max(0, offset - alarmed)
            idle_where = " AND ".join([*where, "due_at IS NULL"])
            rows += [
                Instance(*r)
                for r in self._rows(
                    f"SELECT {COLUMNS} FROM instances WHERE {idle_where} "
                    "ORDER BY instance_id LIMIT ? OFFSET ?",
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
        """Every instance ``list_instances`` lists, in its order, from one read transaction
        (one WAL snapshot), in keyset batches: the alarmed ones from the due_at index, then
        the others by id.

        Raises:
            StorageError: the file cannot be read.
        """
        where, params = self._filters(kind, job, status)
        alarmed, alarmed_params = [*where, "due_at IS NOT NULL"], list(params)
        if due_before is not None:
            alarmed.append("due_at <= ?")
            alarmed_params.append(due_before)
        alarmed_sql = f"SELECT {COLUMNS} FROM instances INDEXED BY instances_due WHERE "
        phases: list[tuple[str, tuple[str, ...], list[Any]]] = [
            (alarmed_sql + " AND ".join(alarmed), ("due_at", "instance_id"), alarmed_params)
        ]
        if due_before is None:  # then those without an alarm
            idle = " AND ".join([*where, "due_at IS NULL"])
            phases.append(
                (f"SELECT {COLUMNS} FROM instances WHERE {idle}", ("instance_id",), params)
            )
        conn = self._conn
        with self._mapped("read"):
            conn.execute("BEGIN")  # deferred: the snapshot is taken by the first read
        try:
            for select, keys, values in phases:
                order = ", ".join(keys)
                after = f" AND ({order}) > ({', '.join('?' * len(keys))})"
                last: tuple[Any, ...] = ()
                while True:
                    sql = f"{select}{after if last else ''} ORDER BY {order} LIMIT ?"
                    with self._mapped("read"):
                        rows = [Instance(*r) for r in self._rows(sql, (*values, *last, batch_size))]
                    if rows:
                        yield rows
                    if len(rows) < batch_size:
                        break
                    last = tuple(getattr(rows[-1], key) for key in keys)
        finally:
            if not conn.get_autocommit():
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")

    @staticmethod
    def _filters(
        kind: str | None, job: str | None, status: str | None
    ) -> tuple[list[str], list[Any]]:
        where, params = ["1"], []
        for column, value in (("kind", kind), ("job", job), ("status", status)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return where, params

    def history(self, instance_id: str, limit: int = 20) -> list[HistoryRow]:
        """The latest ``limit`` history records of an instance (live or purged), oldest first."""
        with self._mapped("read"):
            rows: list[Any] = self._rows(
                f"SELECT {HISTORY_COLUMNS} "
                "FROM history WHERE instance_id = ? ORDER BY id DESC LIMIT ?",
                (instance_id, limit),
            )
        return [HistoryRow(*r) for r in reversed(rows)]

    def history_since(self, after_id: int, limit: int = 1000) -> list[HistoryRow]:
        """History records with ``id > after_id`` (all instances), oldest first."""
        with self._mapped("read"):
            rows: list[Any] = self._rows(
                f"SELECT {HISTORY_COLUMNS} FROM history WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        return [HistoryRow(*r) for r in rows]

    def recent_history(self, limit: int) -> list[HistoryRow]:
        """The latest ``limit`` history records of all instances, oldest first.

        Raises:
            StorageError: the file cannot be read.
        """
        rows = self.query(SQL_HISTORY_RECENT, (limit,))
        return [HistoryRow(*r) for r in reversed(rows)]

    def finished_records(
        self,
        *,
        events: Sequence[str] = END_EVENTS,
        prefixes: Sequence[str] | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[HistoryRow]:
        """The final records of finished instances (no row, no later record), newest first,
        with ``id < before_id``: chunks of one keyset range of the history_ended index per
        event (``newest_finished``).

        Raises:
            StorageError: the file cannot be read.
        """
        return newest_finished(
            self.query, SQL_FINISHED, SQL_FINISHED_PREFIX, events=events, prefixes=prefixes,
            before_id=before_id, limit=limit,
        )  # fmt: skip

    def count_by_status(self) -> list[tuple[str, str, str, int]]:
        """``(kind, job, status, count)`` for every combination present (a full scan).

        Raises:
            StorageError: the file cannot be read.
        """
        return [(str(k), str(j), str(s), int(n)) for k, j, s, n in self.query(SQL_COUNT_BY_STATUS)]

    def count_due(self, before: float) -> tuple[int, float | None]:
        """How many alarms are at or before ``before``, and the earliest of them.

        Raises:
            StorageError: the file cannot be read.
        """
        count, earliest = self.query(SQL_COUNT_DUE, (before,))[0]
        return int(count), earliest

    def next_alarm_after(self, after: float) -> float | None:
        """The earliest alarm strictly after ``after``, or ``None``.

        Raises:
            StorageError: the file cannot be read.
        """
        value: float | None = self.query(SQL_NEXT_AFTER, (after,))[0][0]
        return value

    def history_counts(self, since: float) -> tuple[int, int, int]:
        """``(records, failures, steps)`` of the history written at or after ``since``.

        ``failures`` counts ``job.failed`` records; ``steps`` distinct committed steps. The
        window starts at the first id whose record is at or after ``since`` (ids grow with
        time, up to clock skew between writers), so this reads only that window.

        Raises:
            StorageError: the file cannot be read.
        """
        low = self._first_history_id(since)
        if low is None:
            return 0, 0, 0
        records, failures, steps = self.query(SQL_HISTORY_COUNTS, (low, since))[0]
        return int(records), int(failures), int(steps)

    def _first_history_id(self, since: float) -> int | None:
        """The first history id whose record is at or after ``since`` (``None``: no history).

        Ids grow with time (up to clock skew between writers): bisect them, never scan ``at``.
        """
        low, high = self.query(SQL_HISTORY_ID_RANGE)[0]
        if low is None:
            return None
        while low < high:
            middle = (low + high) // 2
            (at,) = self.query(SQL_HISTORY_AT_ID, (middle,))[0]
            if at < since:
                low = middle + 1
            else:
                high = middle
        return int(low)

    # -- inspection (dashboard) -----------------------------------------------------------

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
        """One page of instances matching every given filter, in a stable order.

        ``order="id"``: all matching instances by ``instance_id``, those after ``after_id``.
        ``order="alarm"``: only instances with an alarm, by ``(due_at, instance_id)``, those
        after ``(after_due, after_id)`` (both or neither). ``id_prefix`` matches the start of
        the instance id, ``user_id_prefix`` the start of the user id (both case-sensitive);
        ``error_contains`` is a case-insensitive (ASCII) substring of ``last_error``.

        Cost: a page reads its own rows from an index when the filters are among kind, job,
        status ``"failed"`` and ``id_prefix``; other filters (the other statuses, the user id
        prefix, the error text) are checked row by row along that order until the page is full.

        Raises:
            ValueError: an unknown ``order``; ``after_due`` without ``after_id``; or
                ``order="alarm"`` with ``after_id`` but no ``after_due``.
            StorageError: the file cannot be read.
        """
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
            where.append(SQL_PAGE_FAILED)
        elif status is not None:
            add("status = ?", status)
        if id_prefix:  # a range of the primary key: everything that starts with the prefix
            add("instance_id >= ? AND instance_id < ?", id_prefix, id_prefix + "\U0010ffff")
        if user_id_prefix:
            add("user_id >= ? AND user_id < ?", user_id_prefix, user_id_prefix + "\U0010ffff")
        if error_contains:
            escaped = error_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            add("last_error LIKE ? ESCAPE '\\'", f"%{escaped}%")
        if order == "alarm":
            where.append("due_at IS NOT NULL")
            if after_id is not None:
                if after_due is None:
                    raise ValueError("order='alarm' pages after (after_due, after_id)")
                add("(due_at, instance_id) > (?, ?)", after_due, after_id)
            sql = SQL_PAGE_BY_ALARM
        elif job is not None and kind is None:
            if after_id is not None:
                add("(kind, instance_id) > (?, ?)", after_id.split(":", 1)[0], after_id)
            sql = SQL_PAGE_BY_JOB
        else:
            if after_id is not None:
                add("instance_id > ?", after_id)
            sql = SQL_PAGE_BY_ID
        text = sql.format(where=" AND ".join(where) or "1")
        return [Instance(*r) for r in self.query(text, (*params, limit))]

    def change_token(self) -> int:
        """A number that changes when the database may have changed.

        Two calls on the same store object return the same number when no transaction was
        committed in between (by any other connection or process); numbers from different
        store objects are not comparable. It reads no table.

        Raises:
            StorageError: the file cannot be read.
        """
        return int(self.query(SQL_DATA_VERSION)[0][0])

    def history_buckets(self, since: float, width: float, count: int) -> list[tuple[int, int]]:
        """Steps and failures per time bucket: ``count`` pairs ``(steps, failures)``.

        Bucket ``i`` covers history written in ``[since + i * width, since + (i + 1) * width)``;
        ``steps`` counts distinct committed steps (instance, step number) with a record there,
        ``failures`` the ``job.failed`` records. Reads only the window's records.

        Raises:
            StorageError: the file cannot be read.
        """
        buckets = [(0, 0)] * count
        low = self._first_history_id(since)
        if low is None or count <= 0:
            return buckets
        until = since + width * count
        for bucket, steps, failures in self.query(SQL_HISTORY_BUCKETS, (low, since, width, until)):
            if 0 <= bucket < count:
                buckets[bucket] = (int(steps), int(failures))
        return buckets

    # -- copying a whole database (``durajobs copy``) ------------------------------------------

    def table_counts(self) -> dict[str, int]:
        """How many rows each table holds now.

        Raises:
            StorageError: the file cannot be read.
        """
        with self._mapped("read"):
            return {t: int(self._rows(SQL_COUNT_ROWS[t], ())[0][0]) for t in TABLES}

    def export(self, batch_size: int = 5000) -> Generator[ExportBatch]:
        """Every row of every table, from one read transaction (one WAL snapshot), in batches.

        A running daemon goes on writing meanwhile; the WAL cannot be checkpointed past the
        snapshot until the export ends.

        Raises:
            StorageError: the file cannot be read.
        """
        conn = self._conn
        with self._mapped("export"):
            conn.execute("BEGIN")  # deferred: the snapshot is taken by the first read
        try:
            with self._mapped("export"):
                counts = {t: int(self._rows(SQL_COUNT_ROWS[t], ())[0][0]) for t in TABLES}
            for table in TABLES:
                first, after, keys = SQL_EXPORT[table]
                last: tuple[Any, ...] | None = None
                while True:
                    with self._mapped("export"):
                        if last is None:
                            rows = self._rows(first, (batch_size,))
                        else:
                            rows = self._rows(after, (*last, batch_size))
                    if rows:
                        yield ExportBatch(table, rows, counts)
                    if len(rows) < batch_size:
                        break
                    last = tuple(rows[-1][i] for i in keys)
        finally:
            if not conn.get_autocommit():
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")

    def import_batches(self, batches: Iterable[ExportBatch]) -> dict[str, int]:
        """Write an export's rows into this empty file in one ``BEGIN IMMEDIATE`` transaction.

        Raises:
            InvalidStateError: the file already holds instances, events, keys or history.
            StorageError: the rows could not be written or the counts differ (nothing written).
        """
        expected: dict[str, int] = {}

        def body(cur: apsw.Cursor) -> dict[str, int]:
            before = {t: _count(cur, t) for t in TABLES}
            if any(before.values()):
                raise not_empty_error(self.path, before)
            written = dict.fromkeys(TABLES, 0)
            for batch in batches:
                expected.update(batch.counts)
                cur.executemany(SQL_IMPORT[batch.table], batch.rows)
                written[batch.table] += len(batch.rows)
            after = {t: _count(cur, t) for t in TABLES}
            check_import_counts(self.path, expected, written, after)
            return after

        def probe() -> bool:
            return self.table_counts() == expected

        return self._transaction("import", body, probe)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only inspection query (used by ``durajobs stats``/``doctor``).

        Raises:
            StorageError: the query failed.
        """
        with self._mapped("read"):
            return self._rows(sql, tuple(params))

    def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """All rows of a read; text that is not UTF-8 comes back escaped (see _TEXT_COLUMNS).

        Raises:
            apsw.Error: the read failed (callers map it).
        """
        try:
            return [tuple(r) for r in self._conn.execute(sql, params)]
        except UnicodeDecodeError:
            safe = sql.replace(COLUMNS, _SAFE_COLUMNS).replace(HISTORY_COLUMNS, _SAFE_HISTORY)
            return [
                tuple(
                    v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v
                    for v in row
                )
                for row in self._conn.execute(safe, params)
            ]

    def schema_version(self) -> int:
        """``PRAGMA user_version``."""
        return int(self.query("PRAGMA user_version")[0][0])

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` lines (``["ok"]`` when healthy)."""
        return [str(r[0]) for r in self.query("PRAGMA integrity_check")]

    def wal_bytes(self) -> int:
        """Size of the ``-wal`` file in bytes (0 if absent)."""
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0


def storage_errors(doing: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator for shell code that touches apsw directly (the lock file, the wake socket)."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except apsw.Error as exc:
                raise StorageError(f"{doing}: {_reason(exc)}") from None

        return inner

    return wrap
