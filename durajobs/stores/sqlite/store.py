"""The SQLite store: one file in WAL mode, through apsw (the ``Store`` protocols of ``base``).

Everything SQL both stores share is in ``sql``; this module keeps what is SQLite's own: the
connection (pragmas set once: WAL, ``synchronous``, a busy handler that naps in microseconds),
the schema and its migrations (``PRAGMA user_version``), the mapping of apsw's errors, the write
transaction (``BEGIN IMMEDIATE``: one writer at a time, which also serializes ``enqueue`` with
the commit of a purge) and the health reads (``integrity_check``, ``wal_bytes``).

Every apsw error is turned into ``StorageError`` naming the path and SQLite's reason. An error
raised by COMMIT does not prove a rollback (apsw re-raises e.g. a failed checkpoint after the
data committed), so the store re-reads what the transaction wrote to learn what happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import apsw

from durajobs.core.rows import Instance
from durajobs.errors import StorageError
from durajobs.stores import sql
from durajobs.stores.base import TABLE_COLUMNS
from durajobs.stores.flow import FLOW_TABLES, FlowSql

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

SCHEMA_VERSION = sql.SCHEMA_VERSION
BUSY_NAP = 0.00005  # first nap of the busy handler (seconds); doubles per try
BUSY_NAP_MAX = 0.001
T = TypeVar("T")

SQLITE = sql.Dialect(
    placeholder="?",
    # ``LIMIT ?+0``, not ``LIMIT ?``: SQLite (3.54) plans ORDER BY ... LIMIT with the bound value
    # of a plain ``LIMIT ?`` and so re-prepares the statement at every execution (~14 us here);
    # an expression keeps the prepared plan. The due reads run on every poll.
    limit="?+0",
    in_ids="IN (SELECT value FROM json_each(?))",  # ids as a JSON array
    least="min",
    ilike="LIKE",  # ASCII-case-insensitive by default
    bucket="CAST((at - ?) / ? AS INTEGER)",
    by_due="INDEXED BY instances_due",
    by_job="INDEXED BY instances_job",
    by_end="INDEXED BY history_ended",
    change_token="PRAGMA data_version",
)

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
    (f"CREATE INDEX history_ended ON history(event, id) WHERE {sql.ENDED_TEST}",),
    # 3 -> 4: the job definition's version each state and queued event was written with (its
    # ``migrate`` chain runs from there); every row written before is version 1.
    (
        "ALTER TABLE instances ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE inbox ADD COLUMN version INTEGER NOT NULL DEFAULT 1",
    ),
    # 4 -> 5: the metrics' gauges and health's counts at a million instances (sql.GAUGES):
    # each (job, kind, status) count a range of index entries; the rows with an error (few)
    # in a partial index for the failing counts and lists.
    (
        "CREATE INDEX instances_status ON instances(job, kind, status)",
        "CREATE INDEX instances_erred ON instances(kind, status, attempt, job) "
        "WHERE last_error IS NOT NULL",
    ),
    # 5 -> 6: flow control's paused jobs and instances, and the rate budgets (``stores.flow``).
    FLOW_TABLES[0],
]

# Text that is not UTF-8 (only another program can have written it) cannot be read as str: the
# reads then fetch the text columns as bytes and show them with escapes, so one odd row never
# stops a listing (``durajobs ls``, the dashboard, the daemon's due reads).
_TEXT_COLUMNS = ("instance_id", "kind", "job", "user_id", "status", "state", "reason",
                 "last_error", "event", "error", "data")  # fmt: skip
_SAFE_COLUMNS = ", ".join(
    f"CAST({c} AS BLOB)" if c in _TEXT_COLUMNS else c for c in sql.COLUMNS.split(", ")
)
_SAFE_HISTORY = ", ".join(
    f"CAST({c} AS BLOB)" if c in _TEXT_COLUMNS else c for c in sql.HISTORY_COLUMNS.split(", ")
)
SQL_IMPORT = {
    t: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})"
    for t, c in TABLE_COLUMNS.items()
}


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    name = type(exc).__name__
    return text if name in text else f"{name}: {text}"


class SqliteStore(FlowSql, sql.SqlStore, dialect=SQLITE):
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

    # Errors that a write's values cause while binding (apsw encodes str as UTF-8 and ints as
    # 64-bit), as opposed to failures of the database: they reject that write, not the group.
    content_errors = (
        UnicodeError,
        OverflowError,
        TypeError,
        apsw.TooBigError,
        apsw.MismatchError,
        apsw.RangeError,
    )

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
        super().__init__(os.fspath(path), os.fspath(path))
        self.durability = durability
        self.readonly = readonly
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
            migrate = self._check_schema()
            # One statement per execute: apsw runs later statements only when iterated.
            if not self.readonly:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
                if mode != "wal":
                    raise StorageError(f"{self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous={self.durability.upper()}")
            conn.execute("PRAGMA temp_store=MEMORY")
            if migrate:
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

    def _check_schema(self) -> bool:
        """Whether the file is to be migrated (``sql.needs_migration``)."""
        version: int = self._conn.execute("PRAGMA user_version").fetchall()[0][0]  # type: ignore[assignment]
        if version == 0 and self._has_foreign_tables():
            raise StorageError(f"{self.path}: not a durajobs database (it has other tables)")
        return sql.needs_migration(self.path, version, self.readonly)

    def _migrate(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            current: int = conn.execute("PRAGMA user_version").fetchall()[0][0]  # type: ignore[assignment]
            for target in range(current, sql.SCHEMA_VERSION):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={sql.SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if not conn.get_autocommit():
                conn.execute("ROLLBACK")
            raise

    def _has_foreign_tables(self) -> bool:
        rows = self._conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        return any(not name.startswith("sqlite_") for (name,) in rows)

    def load(self, instance_id: str) -> Instance | None:
        # The step path's read, without building a list of rows (a few µs a step).
        try:
            for row in self._conn.execute(self.sql.load, (instance_id,)):
                return Instance(*row)
        except (apsw.Error, UnicodeDecodeError):
            return super().load(instance_id)  # the shared path maps or escapes it
        return None

    def _rows(
        self, statement: str, params: Sequence[Any] = (), doing: str = "read"
    ) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(statement, params).fetchall()
        except apsw.Error as exc:
            raise self._error(exc, doing) from None
        except UnicodeDecodeError:  # an odd row written by another program: shown escaped
            safe = statement.replace(sql.COLUMNS, _SAFE_COLUMNS)
            safe = safe.replace(sql.HISTORY_COLUMNS, _SAFE_HISTORY)
            try:
                return [
                    tuple(
                        v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v
                        for v in row
                    )
                    for row in self._conn.execute(safe, params)
                ]
            except apsw.Error as exc:
                raise self._error(exc, doing) from None

    def _changed(self, cur: apsw.Cursor) -> int:
        return self._conn.changes()

    def _array(self, ids: Sequence[str]) -> str:
        return json.dumps(list(ids))

    def _import_rows(self, cur: apsw.Cursor, table: str, rows: list[tuple[Any, ...]]) -> None:
        cur.executemany(SQL_IMPORT[table], rows)

    @contextlib.contextmanager
    def _snapshot(self, doing: str) -> Iterator[sql.Read]:
        conn = self._conn
        try:
            conn.execute("BEGIN")  # deferred: the snapshot is taken by the first read
        except apsw.Error as exc:
            raise self._error(exc, doing) from None
        try:
            yield lambda statement, params: self._rows(statement, params, doing)
        finally:
            if not conn.get_autocommit():
                with contextlib.suppress(apsw.Error):
                    conn.execute("ROLLBACK")

    def _transaction(
        self, doing: str, body: Callable[[apsw.Cursor], T], probe: Callable[[sql.Read], bool]
    ) -> T:
        """``BEGIN IMMEDIATE``, ``body``, ``COMMIT``. ``probe`` is asked only when COMMIT
        raised yet no transaction is open any more: apsw re-raises errors (such as a failed
        checkpoint) that SQLite hit after the data committed."""
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
                committed = probe(lambda text, params: conn.execute(text, params).fetchall())
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
        """Close the connection; closing checkpoints the WAL: if that fails, the data stays
        safe in the WAL (the next open replays it), the connection is closed anyway, and the
        error is reported."""
        try:
            self._conn.close()
        except apsw.Error as exc:
            with contextlib.suppress(apsw.Error):
                self._conn.close(True)
            raise self._error(exc, "close") from None

    def schema_version(self) -> int:
        return int(self._rows("PRAGMA user_version")[0][0])

    def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` lines (``["ok"]`` when healthy)."""
        return [str(r[0]) for r in self._rows("PRAGMA integrity_check")]

    def wal_bytes(self) -> int:
        """Size of the ``-wal`` file in bytes (0 if absent)."""
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0
