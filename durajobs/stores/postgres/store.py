"""The PostgreSQL store (psycopg 3): the same tables and semantics as ``sqlite``, many hosts.

Everything SQL both stores share is in ``sql``; this module keeps what is PostgreSQL's own: the
connection (``Link``: reopened when lost, never shared across ``fork()``, no password shown),
the schema and its migrations, the write transaction, the group commit's fast path, the history
horizon that ``tail -f`` follows, health, and the wake-ups (``NOTIFY``/``LISTEN``).

Theory of operation. Every durajobs process keeps, per ``Jobs``, one store connection (reads in
autocommit, each write one explicit transaction) that also holds its claims (``claims``:
session advisory locks) and, for the daemon, one ``LISTEN`` connection. Steps are serialized by the
claim, not by the database: the store may assume the claim is held and checks the fence
(``... WHERE step = expected``) in the same statement that writes, so a write computed by a
process that lost its claim (``pg_terminate_backend``, a restart, a partition) changes nothing.

The only writer that holds no claim is ``enqueue`` (a Debounce event for an instance whose
flush runs elsewhere). SQLite serializes it with the flush's commit through its single write
lock; here both take a transaction-scoped advisory lock of the instance (a key space of its own,
see ``_write_key``) before touching its rows, so a purge either sees the queued event (and
revives the batch) or the event's placeholder row is made after the purge committed, numbered
from the purge's history.

Schema: versioned in ``durajobs_schema`` (one row per applied version), migrated forward inside
a transaction holding ``pg_advisory_xact_lock`` of a constant key, so that many processes
starting at once migrate exactly once. Times are epoch seconds in ``double precision`` (the
REAL of the SQLite schema), counters ``bigint``, history ids and queue seqs identity columns.

Errors: every psycopg error becomes ``StorageError`` naming ``postgresql host:port/database``
and the server's reason; the password never appears (it is also scrubbed from any message), nor
anything between ``://`` and ``@`` when libpq did not read it as the user info (``_describe``).

Poolers: every connection checks, when it opens, that its server session is its own
(``Link._refuse_transaction_pooling``): PgBouncer in transaction or statement pooling mode would
silently break the claims and LISTEN, so it is refused; session pooling is fine.

Round trips of one client call (issue 19), two: the claim and the reads after it go in one
simple query of two statements (``read_after_claim``: the row, its queued flag, the last step of
a new instance; kept for the engine's next ``load``/``last_step``); a single step's write is
``BEGIN``, one statement and ``COMMIT`` in one simple query (``commit``), followed in the same
query by the claim's release and the daemons' wake-up (``unlock_at_commit``,
``notify_at_commit``). Their parameters are written into the query text (several statements
with parameters cannot go in one extended-protocol message; psycopg's pipeline mode does that,
but on a local server it cost more client CPU and time than the round trips it saved:
benchmarks/FINDINGS.md): those of statements that type every parameter (``literals.Typed``:
the claims, the reads after them, the put, the wake-up) by ``literals`` (psycopg's ``mogrify``
took a fifth of a send's client CPU), any other by psycopg's ``ClientCursor``. Any other
wake-up is posted (``Link.post``): sent, never waited for.

Group commit (``run_due``): the engine claims up to ``engine.CLAIM_AHEAD`` due instances in one
round trip (``AdvisoryClaims.try_acquire_many``) with their rows read after the claims in the same
query (``read_after_claim``), and commits the group in one transaction where the steps of
Continuous and Task instances that update their row go in one statement (``SQL_PUT_BATCH``:
``UPDATE ... FROM unnest(...)``, each row fenced on its own step, and their history records in the
same statement, only for the rows that passed); any other write (Debounce, keyed, new, purge, or a
batched write that did not apply) goes one statement at a time with its exact semantics, its row
and records in one statement (``SQL_PUT_RECORDED``). The claims are released in one round trip
(``release_many``).

Following the history (``history_since``, ``durajobs tail -f``): ids come from a sequence and
transactions commit in any order, so records are handed out only up to an id that no
transaction still writing can precede (``SQL_HISTORY_SINCE``).

Lost connections: a connection found broken by the first statement of a call that opened no
transaction (idle when the server restarted or ended its session) is reopened and the
statement run again (``Link.run``): a call fails for a lost connection only when it was inside
a transaction, or the server is still away.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import time
import urllib.parse
from collections.abc import Callable, Container, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from durajobs.core.rows import FencedOut, Instance, Queued, RejectedWrite
from durajobs.errors import StorageError
from durajobs.stores import sql
from durajobs.stores.base import TABLE_COLUMNS, TABLES, Finding, HistoryRow, Write
from durajobs.stores.flow import FLOW_TABLES, FlowSql
from durajobs.stores.postgres.literals import Typed, Unbindable, bind

__all__ = ["SCHEMA_VERSION", "Link", "PostgresStore", "signed_hash"]

SCHEMA_VERSION = sql.SCHEMA_VERSION
INSTALL_HINT = "PostgreSQL needs psycopg: pip install 'durajobs[postgres]'"
T = TypeVar("T")


def signed_hash(text: str, person: bytes = b"") -> int:
    """A signed 64-bit blake2b hash (an advisory lock key)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, person=person).digest()
    return int.from_bytes(digest, "little", signed=True)


def _write_key(instance_id: str) -> int:
    # Not the claim's key: a process holds the claim on one connection while its store
    # connection takes this lock; the same key would make it wait for itself.
    return signed_hash(instance_id, b"durajobs-write")


MIGRATE_KEY = signed_hash("durajobs:migrate")

POSTGRES = sql.Dialect(
    placeholder="%s",
    limit="?",
    in_ids="= ANY(?::text[])",  # ids as a text[] parameter
    least="LEAST",
    ilike='COLLATE "C" ILIKE',  # folds ASCII only, as SQLite's LIKE
    bucket="floor((at - ?) / ?)::bigint",
    by_due="",
    by_job="",
    by_end="",
    # The first transaction id not yet assigned (cluster-wide): unchanged while nobody writes,
    # moved by every writing transaction.
    change_token="SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
)
SQL = sql.render(POSTGRES)

# Forward migrations: MIGRATIONS[n] takes a database at version n to n + 1 (as in sqlite/store.py).
MIGRATIONS: list[tuple[str, ...]] = [
    (
        # Identifiers collate "C" (byte order, as SQLite's BINARY): keyset pages and prefix
        # ranges walk the indexes in the same order on both stores, whatever the server's locale.
        """CREATE TABLE instances (
            instance_id text COLLATE "C" PRIMARY KEY,
            kind text COLLATE "C" NOT NULL,
            job text COLLATE "C" NOT NULL,
            user_id text COLLATE "C" NOT NULL,
            status text COLLATE "C" NOT NULL,
            state text,
            due_at double precision,
            scheduled_for double precision,
            anchor double precision,
            reason text,
            run_count bigint NOT NULL,
            attempt bigint NOT NULL,
            event_count bigint NOT NULL,
            created_at double precision NOT NULL,
            started_at double precision,
            last_error text,
            step bigint NOT NULL,
            updated_at double precision NOT NULL
        )""",
        # INCLUDE: due_ids is an index-only scan, as on SQLite.
        "CREATE INDEX instances_due ON instances (due_at) INCLUDE (instance_id) "
        "WHERE due_at IS NOT NULL",
        "CREATE INDEX instances_job ON instances (job, kind)",
        """CREATE TABLE history (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            instance_id text COLLATE "C" NOT NULL,
            at double precision NOT NULL,
            event text NOT NULL,
            step bigint NOT NULL,
            attempt bigint,
            duration_ms double precision,
            error text,
            data text
        )""",
        "CREATE INDEX history_instance ON history (instance_id, id)",
        """CREATE TABLE inbox (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            instance_id text COLLATE "C" NOT NULL,
            event text NOT NULL,
            added_at double precision NOT NULL
        )""",
        "CREATE INDEX inbox_instance ON inbox (instance_id, seq)",
        """CREATE TABLE event_keys (
            instance_id text COLLATE "C" NOT NULL,
            key text COLLATE "C" NOT NULL,
            at double precision NOT NULL,
            PRIMARY KEY (instance_id, key)
        )""",
    ),
    ("CREATE INDEX instances_failed ON instances (instance_id) WHERE status = 'failed'",),
    # Finished instances listed from the records that end them (as in sqlite/store.py).
    (f"CREATE INDEX history_ended ON history (event, id) WHERE {sql.ENDED_TEST}",),
    # The definition's version of each state and queued event (as in sqlite/store.py); a
    # column with a constant default is added without rewriting the table.
    (
        "ALTER TABLE instances ADD COLUMN version bigint NOT NULL DEFAULT 1",
        "ALTER TABLE inbox ADD COLUMN version bigint NOT NULL DEFAULT 1",
    ),
    # The gauges' indexes (as in sqlite/store.py).
    (
        "CREATE INDEX instances_status ON instances (job, kind, status)",
        "CREATE INDEX instances_erred ON instances (kind, status, attempt, job) "
        "WHERE last_error IS NOT NULL",
    ),
    # 5 -> 6: flow control's tables (as in sqlite/store.py).
    FLOW_TABLES[1],
]

_NAMES = TABLE_COLUMNS["instances"]

# -- PostgreSQL's own statements --------------------------------------------------------------
SQL_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS durajobs_schema (version integer PRIMARY KEY, "
    "applied_at timestamptz NOT NULL DEFAULT now())"
)
SQL_SCHEMA_EXISTS = (
    "SELECT to_regclass('durajobs_schema') IS NOT NULL, to_regclass('instances') IS NOT NULL"
)
SQL_SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM durajobs_schema"
SQL_SCHEMA_APPLIED = "INSERT INTO durajobs_schema (version) VALUES (%s)"
SQL_XACT_LOCK = "SELECT pg_advisory_xact_lock(%s::bigint)"
SQL_XACT_LOCKS = "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k"
# The row's write and its history records in one statement (one round trip per step): the
# records are inserted only if the upsert passed its fence (``FROM put``); the statement's
# row count is then the number of records, 0 when fenced out.
_RECORDS_FROM_PUT = (
    "INSERT INTO history (instance_id, at, event, step, attempt, duration_ms, error, data) "
    "SELECT %s, %s, r.event, %s, r.attempt, r.duration_ms, r.error, r.data FROM put, "
    "unnest(%s::text[], %s::bigint[], %s::float8[], %s::text[], %s::text[]) "
    "AS r(event, attempt, duration_ms, error, data)"
)
SQL_PUT_RECORDED = f"WITH put AS ({SQL.put} RETURNING 1) {_RECORDS_FROM_PUT}"
SQL_PUT_DEBOUNCE_RECORDED = f"WITH put AS ({SQL.put_debounce} RETURNING 1) {_RECORDS_FROM_PUT}"
# Group commit (``_apply_batch``): many steps' rows and their history records in one
# statement. Each row is fenced on its own expected step; records are inserted only for the
# rows that passed (in the group's order: history ids keep each instance's records in order);
# the statement returns the ids of the rows written.
_BATCH_COLUMNS = _NAMES[4:]
_BATCH_TYPES = {"status": "text", "state": "text", "reason": "text", "last_error": "text",
                "run_count": "bigint", "attempt": "bigint", "event_count": "bigint",
                "step": "bigint", "version": "bigint"}  # fmt: skip
_BATCH_RECORDS = (
    "rec AS (INSERT INTO history (instance_id, at, event, step, attempt, duration_ms, error, "
    "data) SELECT r.instance_id, %s, r.event, r.step, r.attempt, r.duration_ms, r.error, r.data "
    "FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::float8[], %s::text[], "
    "%s::text[]) WITH ORDINALITY AS r(instance_id, step, event, attempt, duration_ms, error, "
    "data, ord) WHERE r.instance_id IN (SELECT instance_id FROM put) ORDER BY r.ord) "
    "SELECT instance_id FROM put"
)
SQL_PUT_BATCH = (
    "WITH w AS (SELECT * FROM unnest(%s::text[], "
    + ", ".join(f"%s::{_BATCH_TYPES.get(c, 'float8')}[]" for c in _BATCH_COLUMNS)
    + ", %s::bigint[]) AS w(instance_id, "
    + ", ".join(_BATCH_COLUMNS)
    + ", expected)), put AS (UPDATE instances SET "
    + ", ".join(f"{c} = w.{c}" for c in _BATCH_COLUMNS)
    + " FROM w WHERE instances.instance_id = w.instance_id AND instances.step = w.expected "
    "RETURNING instances.instance_id), " + _BATCH_RECORDS
).replace("%s", "%b")  # binary parameters: no text quoting of every array element
# The new instances of a group (``send_many`` of new ids): inserted, with their records, where
# no row exists; a row found (made meanwhile) leaves that write to ``_apply``'s fenced upsert.
SQL_INSERT_BATCH = (
    f"WITH put AS (INSERT INTO instances ({', '.join(_NAMES)}) SELECT * FROM unnest("
    + ", ".join(f"%s::{_BATCH_TYPES.get(c, 'float8')}[]" for c in _BATCH_COLUMNS).join(
        ["%s::text[], %s::text[], %s::text[], %s::text[], ", ""]
    )
    + ") ON CONFLICT (instance_id) DO NOTHING RETURNING instance_id), "
    + _BATCH_RECORDS
).replace("%s", "%b")
# A single step's commit (``commit``): SQL_PUT_RECORDED prepared once per session under a
# name (``PREPARE``), then run as ``BEGIN; EXECUTE ...; COMMIT``, one simple query with the
# parameters bound by the client: one round trip, and the server plans it once per session.
_ROW_TYPES = ["text"] * 4 + [_BATCH_TYPES.get(c, "float8") for c in _NAMES[4:]]
_PUT_TYPES = (*_ROW_TYPES, "bigint", "text", "float8", "bigint",
              "text[]", "bigint[]", "float8[]", "text[]", "text[]")  # fmt: skip
PUT_NAME = "durajobs_put_recorded"
# A session prepares its statements again at their 16th use since the PREPARE, then 4 times
# later each time, at most 65,536 uses later (``_prepare``): a plan made when the tables were
# nearly empty does not last.
REPLAN_FIRST, REPLAN_FACTOR, REPLAN_MAX = 16, 4, 65536
_PUT_PIECES = SQL_PUT_RECORDED.split("%s")  # (no other % in it)
SQL_PREPARE_PUT = (
    f"PREPARE {PUT_NAME} ({', '.join(_PUT_TYPES)}) AS "
    + "".join(f"{piece}${n}" for n, piece in enumerate(_PUT_PIECES[:-1], 1))
    + _PUT_PIECES[-1]
)
SQL_EXECUTE_PUT = Typed(f"EXECUTE {PUT_NAME} ({', '.join(['%s'] * len(_PUT_TYPES))})")
SQL_FIND_MY_RECORD = (
    "SELECT 1 FROM history WHERE instance_id = %s AND step = %s AND event = %s AND at = %s"
)
SQL_IS_PREPARED = "SELECT EXISTS (SELECT FROM pg_prepared_statements WHERE name = %s)"
# Following the history without gaps (``history_since``): ids come from a sequence, so a
# transaction can commit a record after a record with a higher id was read. Read only ids that
# are final: every id up to the sequence's last value V was taken by a transaction holding a
# write lock on ``history`` before V was read; once none of the holders seen right after V
# (their virtual transaction ids) holds it anymore, each id up to V is committed (and visible
# to every later snapshot) or never will be. One statement: the rows up to the bound known
# before it (its snapshot), then V and the holders (read after V: the correlated subquery).
_FINAL_IDS = (
    "SELECT s.last_id, s.writers, h.* FROM (SELECT last_id, ARRAY(SELECT virtualtransaction "
    "FROM pg_locks WHERE last_id IS NOT NULL AND locktype = 'relation' "
    "AND relation = 'history'::regclass AND database = (SELECT oid FROM pg_database "
    "WHERE datname = current_database()) AND mode IN ('RowExclusiveLock', "
    "'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')) AS writers "
    "FROM (SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('history', 'id')"
    "::regclass), 0) AS last_id) AS v) AS s LEFT JOIN LATERAL "
)
SQL_HISTORY_SINCE = (
    f"{_FINAL_IDS}(SELECT {sql.HISTORY_COLUMNS} FROM history WHERE id > %s AND id <= %s "
    "ORDER BY id LIMIT %s) AS h ON true ORDER BY h.id"
)
SQL_HISTORY_RECENT_FINAL = (
    f"{_FINAL_IDS}(SELECT {sql.HISTORY_COLUMNS} FROM history WHERE id <= %s "
    "ORDER BY id DESC LIMIT %s) AS h ON true ORDER BY h.id"
)
FOLLOW_PENDING_MAX = 64  # (last id, writers) pairs kept while their writers are still writing
SQL_NOTIFY = Typed("SELECT pg_notify(%s::text, '')")
POST_NOTIFY = b"SELECT pg_notify($1, '')"
# Read after a claim, in the claim's round trip (``read_after_claim``): the row, whether events
# are queued for it, and (no row) the last step its history recorded: what ``load``,
# ``load_with_queue`` and ``last_step`` would read next. (instance_id x 2)
SQL_READ_CLAIMED = (
    f"SELECT {', '.join(f'i.{c}' for c in _NAMES)}, i.instance_id IS NOT NULL AND EXISTS "
    "(SELECT 1 FROM inbox WHERE inbox.instance_id = i.instance_id), CASE WHEN i.instance_id "
    "IS NULL THEN coalesce((SELECT step FROM history WHERE instance_id = %s ORDER BY id DESC "
    "LIMIT 1), 0) END FROM (SELECT 1) AS one LEFT JOIN instances AS i ON i.instance_id = %s"
)
# The read after a single claim, prepared the same way (``read_after_claim``).
READ_NAME = "durajobs_read_claimed"
SQL_EXECUTE_READ = Typed(f"EXECUTE {READ_NAME} (%s)")
SQL_PREPARES = {
    PUT_NAME: SQL_PREPARE_PUT,
    READ_NAME: f"PREPARE {READ_NAME} (text) AS " + SQL_READ_CLAIMED.replace("%s", "$1"),
}
SQL_SERVER_INFO = "SELECT current_setting('server_version'), extract(epoch FROM clock_timestamp())"
SQL_SETTING = "SELECT current_setting(%s)"

# Copying a whole database (``durajobs copy``): written back with COPY (which keeps the
# identity columns' values), the tables locked against writers (``EXCLUSIVE``: reads go on).
SQL_BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
SQL_IMPORT = {t: f"COPY {t} ({', '.join(c)}) FROM STDIN" for t, c in TABLE_COLUMNS.items()}
SQL_LOCK_TABLES = f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE"
# The identity sequences go on after the copied ids (``is_called`` false: an empty table's
# next id is 1).
SQL_RESTART_IDS = tuple(
    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
    f"coalesce(max({column}), 1), max({column}) IS NOT NULL) FROM {table}"
    for table, column in (("history", "id"), ("inbox", "seq"))
)

WAKE_CHANNEL = "durajobs_wake"
LISTENER_NAME = "durajobs listener"  # the application_name of a daemon's LISTEN session
SQL_LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = %s"
)
CLOCK_SKEW_WARN = 1.0  # seconds between this host's clock and the server's
IDLE_IN_TRANSACTION_WARN = 60.0  # seconds a session may sit idle inside a transaction
# Sessions of this database idle inside a transaction for longer than %s seconds: each one
# that holds a snapshot (backend_xmin: REPEATABLE READ, an open cursor) or a transaction id
# (it wrote) keeps VACUUM from removing dead rows everywhere in the database, and every
# durajobs step leaves dead rows behind. Without pg_read_all_stats, other roles'
# sessions show no state: they are counted apart.
SQL_IDLE_IN_TRANSACTION = (
    "SELECT pid, usename, application_name, coalesce(host(client_addr), 'local'), "
    "extract(epoch FROM now() - state_change), "
    "backend_xmin IS NOT NULL OR backend_xid IS NOT NULL "
    "FROM pg_stat_activity WHERE datname = current_database() "
    "AND state IN ('idle in transaction', 'idle in transaction (aborted)') "
    "AND state_change < now() - make_interval(secs => %s) ORDER BY state_change"
)
SQL_HIDDEN_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND backend_type = 'client backend' AND state IS NULL"
)


def _psycopg(where: str) -> Any:
    """Import psycopg (an optional dependency) or say what to install."""
    try:
        import psycopg
    except ImportError:
        raise StorageError(f"{where}: {INSTALL_HINT}") from None
    return psycopg


_ABANDONED: list[Any] = []  # a forked child's copies of its parent's connections, kept alive
_SESSION_POOLED: set[str] = set()  # locations found behind a pooler in session mode
SQL_BACKEND_PID = "SELECT pg_backend_pid()"


class Link:
    """One connection to the server, reopened when lost, never shared across ``fork()``.

    Args:
        location: a libpq URL (``postgresql://`` or ``postgres://``).
        setup: statements run once per (re)connection (session settings).
        connect_timeout: seconds to wait for the server when connecting (unless the URL says).

    Raises:
        StorageError: the URL cannot be parsed, or psycopg is not installed.
    """

    def __init__(
        self,
        location: str,
        setup: Sequence[str] = (),
        *,
        connect_timeout: float = 5.0,
        application_name: str = "durajobs",
    ) -> None:
        self.location = location
        self._psycopg = psycopg = _psycopg(_redact(location))
        try:
            params = psycopg.conninfo.conninfo_to_dict(location)
        except psycopg.Error as exc:
            shown = _describe(location, None)
            raise StorageError(
                f"{shown.url}: not a valid PostgreSQL URL: {_unquoted(str(exc).strip(), shown)}"
            ) from None
        self._shown = _describe(location, params)
        self.where = self._shown.where
        # prepare_threshold=None: psycopg prepares nothing by itself. Its automatic statements
        # come with a DEALLOCATE ALL after any ROLLBACK (a snapshot read's end, a refused
        # write): a round trip each, and it dropped the statements the store prepares by name
        # (PUT_NAME, READ_NAME) behind the store's back.
        self._kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = max(1, round(connect_timeout))
        if "application_name" not in params:
            self._kwargs["application_name"] = application_name
        self._setup = tuple(setup)
        self._conn: Any = None
        self._posted = 0  # statements sent by ``post`` whose answers are not read yet
        self._pid = os.getpid()
        self.generation = 0  # counts (re)connections: a claim or a LISTEN dies with one

    def error(self, exc: BaseException, doing: str) -> StorageError:
        """A ``StorageError`` for ``exc`` naming the server, never the password."""
        reason = str(exc).strip() or type(exc).__name__
        name = type(exc).__name__
        if name not in reason and name not in ("OperationalError", "Error"):
            reason = f"{name}: {reason}"
        return StorageError(f"{self.where}: {doing}: {self.scrub(reason)}")

    def scrub(self, text: str) -> str:
        """``text`` with the password (and the URL) removed."""
        return _scrub(text, self._shown)

    def connection(self) -> Any:
        """The live connection, (re)opened if it is missing, lost, or the parent's.

        Raises:
            StorageError: the server cannot be reached or refused the connection.
        """
        conn = self._conn
        if conn is not None:
            if self._pid != os.getpid():
                _disown(conn)
                conn = self._conn = None
            elif self._posted and not self._read_posted(conn):
                conn = self._conn = None
            elif not _usable(conn):
                with contextlib.suppress(Exception):
                    conn.close()
                conn = self._conn = None
        if conn is None:
            conn = self._open()
        return conn

    def run(self, doing: str, work: Callable[[Any], T], connect: Callable[[], Any]) -> T:
        """``work(connect())``, psycopg's errors raised as ``StorageError``.

        A connection that broke while idle (the server restarted, or ended the session, since
        its last use) shows only when ``work``'s first statement fails on it: then, if no
        transaction was open, it is reopened and ``work`` runs once more, so that the call
        does not fail for it. ``work`` must be safe to run again after its session died under
        it: reads, ``BEGIN``, claims (they die with the session). No extra round trip.

        Raises:
            StorageError: ``work`` failed, or the connection cannot be reopened.
        """
        psycopg = self._psycopg
        conn = connect()
        idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        try:
            return work(conn)
        except psycopg.Error as exc:
            self.drop()
            if not idle or self._conn is not None:  # in a transaction, or a live session's error
                raise self.error(exc, doing) from None
        try:
            return work(connect())
        except psycopg.Error as exc:
            self.drop()
            raise self.error(exc, doing) from None

    def post(self, statement: bytes, params: Sequence[bytes]) -> None:
        """Send ``statement`` (``$1``... parameters, as text) without waiting for its answer:
        the server runs it at once, and its answer is read (and dropped) before the
        connection's next use. For statements whose outcome nobody waits for (a wake-up;
        not a claim's release: ``release`` returns when the lock is free). Outside a
        transaction only (else nothing is sent). Never raises; a connection that fails is
        dropped.
        """
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            return
        if self._posted and not self._read_posted(conn):  # one statement in flight at most
            self._conn = None
            return
        if not _usable(conn):
            return
        if conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
            return
        pgconn = conn.pgconn
        try:
            pgconn.send_query_params(statement, list(params))
            self._posted += 1
            while pgconn.flush():  # the socket is non-blocking: wait until it is all sent
                select.select([], [pgconn.socket], [])
        except self._psycopg.Error:
            self._posted = 0
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None

    def _read_posted(self, conn: Any) -> bool:
        """Read (and drop) the answers of the posted statements; ``False``: the connection
        failed meanwhile (it is closed)."""
        pgconn = conn.pgconn
        try:
            while self._posted:
                while pgconn.is_busy():
                    select.select([pgconn.socket], [], [])
                    pgconn.consume_input()
                if pgconn.get_result() is None:  # each statement's results end with None
                    self._posted -= 1
        except self._psycopg.Error:
            self._posted = 0
            with contextlib.suppress(Exception):
                conn.close()
            return False
        return True

    def _open(self) -> Any:
        psycopg = _psycopg(self.where)
        try:
            conn = psycopg.connect(self.location, **self._kwargs)
        except psycopg.Error as exc:
            raise self.error(exc, "cannot connect") from None
        try:
            self._refuse_transaction_pooling(conn)
            for statement in self._setup:
                conn.execute(statement)
        except psycopg.Error as exc:
            conn.close()
            raise self.error(exc, "cannot set up the session") from None
        except StorageError:
            conn.close()
            raise
        self._conn = conn
        self._pid = os.getpid()
        self._posted = 0
        self.generation += 1
        return conn

    def _refuse_transaction_pooling(self, conn: Any) -> None:
        """Refuse a pooler that hands this session's server connection to other clients between
        transactions (PgBouncer's ``pool_mode = transaction`` or ``statement``): session advisory
        locks (the claims) and ``LISTEN`` silently stop working there.

        PostgreSQL tells a client its backend's pid at connection start; a pooler makes one up.
        Equal pids (one round trip): a direct connection. Different: a pooler; then a second
        connection checks whether it gets this one's server session (PgBouncer reuses the last
        released server connection first) or this one moves to another while the second holds a
        transaction. Session pooling does neither. A busy pool could hide transaction pooling
        from one probe, so three are made. A pooler found in session mode is remembered for
        the process.

        Raises:
            StorageError: transaction or statement pooling.
            psycopg.Error: the checks failed.
        """
        if conn.execute(SQL_BACKEND_PID).fetchone()[0] == conn.info.backend_pid:
            return
        if self.location in _SESSION_POOLED:
            return
        psycopg = _psycopg(self.where)
        refusal = StorageError(
            f"{self.where}: connected through a pooler in transaction (or statement) pooling "
            "mode, such as PgBouncer with pool_mode = transaction: durajobs needs session "
            "advisory locks and LISTEN, which that mode breaks. Connect to PostgreSQL directly, "
            "or through a pool in session mode (PgBouncer: pool_mode = session)"
        )
        for _ in range(3):
            mine = conn.execute(SQL_BACKEND_PID).fetchone()[0]
            try:
                other = psycopg.connect(self.location, **{**self._kwargs, "autocommit": False})
            except psycopg.Error as exc:
                raise self.error(exc, "cannot connect") from None
            try:
                try:
                    theirs = other.execute(SQL_BACKEND_PID).fetchone()[0]  # opens a transaction
                    moved = conn.execute(SQL_BACKEND_PID).fetchone()[0]
                except psycopg.Error:
                    raise refusal from None  # e.g. statement pooling refuses transactions
            finally:
                with contextlib.suppress(psycopg.Error):
                    other.close()
            if theirs == mine or moved != mine:
                raise refusal
        _SESSION_POOLED.add(self.location)

    @property
    def is_open(self) -> bool:
        """Whether a usable connection of this process is open now (no I/O)."""
        conn = self._conn
        return conn is not None and self._pid == os.getpid() and _usable(conn)

    def drop(self) -> None:
        """Close the connection if it is broken (so the next call reconnects)."""
        conn = self._conn
        if conn is not None and not _usable(conn):
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None

    def close(self) -> None:
        """Close (idempotent). A forked child's copy is left to its parent."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pid != os.getpid():
            _disown(conn)
            return
        with contextlib.suppress(Exception):
            conn.close()


def _usable(conn: Any) -> bool:
    # ``broken`` is set by psycopg's own calls; a failure seen through ``pgconn`` (the
    # listener's consume_input) shows only in libpq's status (0: CONNECTION_OK).
    return not conn.closed and not conn.broken and conn.pgconn.status == 0


def _disown(conn: Any) -> None:
    """Make a connection inherited through ``fork()`` harmless: closing it (even when it is
    garbage-collected) would send the server a Terminate message on the parent's session,
    ending it and releasing the parent's claims. Point the descriptor at /dev/null instead."""
    with contextlib.suppress(Exception):
        fd = conn.pgconn.socket
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    _ABANDONED.append(conn)


NOT_SHOWN = (
    "(URL not shown: its user name or password holds an unencoded '/' or '@'; "
    "percent-encode them: '/' as %2F, '@' as %40)"
)


class _Shown(NamedTuple):
    """What messages may show of a location, and what they never may."""

    url: str  # the URL without its password, rebuilt from libpq's reading of it
    where: str  # ``postgresql host:port/database``
    secrets: tuple[str, ...]  # texts scrubbed from every message, longest first


def _describe(location: str, params: dict[str, Any] | None) -> _Shown:
    """Describe ``location`` from what libpq's URL parser made of it (``params``; ``None``:
    unparsable, or psycopg missing), never showing what was between ``://`` and ``@``.

    A password holding an unencoded ``/`` (or ``@``) ends libpq's user info early: its pieces
    then come out as host, port or database (``postgres:pa/ss@h/db`` is host ``postgres``,
    port ``pa``, database ``ss@h/db``). Such a URL is described without any of them.
    """
    scheme, _, rest = location.partition("://")
    credentials = rest.rpartition("@")[0]
    secrets = {credentials, urllib.parse.unquote(credentials), credentials.partition(":")[2]}
    for parameter in rest.partition("?")[2].split("&"):  # ?password=...
        name, _, value = parameter.partition("=")
        if name == "password":
            secrets |= {value, urllib.parse.unquote(value)}
    if params is not None:
        password = str(params.get("password") or "")
        secrets |= {password, urllib.parse.quote(password, safe="")}
    if "/" in credentials or "@" in credentials:
        secrets |= {str(v) for k, v in (params or {}).items() if k in _URL_PARTS}
        return _Shown(f"{scheme}://{NOT_SHOWN}", f"postgresql {NOT_SHOWN}", _longest(secrets))
    if params is None:  # no parser's reading: what follows the user info, without parameters
        after = rest.rpartition("@")[2].partition("?")[0]
        return _Shown(f"{scheme}://{after}", f"postgresql {after}", _longest(secrets))
    user, host, port, dbname = (str(params.get(k) or "") for k in _URL_PARTS[:4])
    shown_host = host or os.environ.get("PGHOST") or "localhost"
    if shown_host.startswith("/"):
        shown_host = f"socket {shown_host}"
    shown_port = port or os.environ.get("PGPORT") or "5432"
    shown_db = dbname or os.environ.get("PGDATABASE") or user
    where = f"postgresql {shown_host}:{shown_port}/{shown_db}"
    query = {k: str(v) for k, v in params.items() if k not in _URL_PARTS}
    netloc = urllib.parse.quote(user, safe="") + "@" if user else ""
    if "/" in host or "," in host:  # a socket directory, several hosts: as libpq's parameters
        query = {"host": host, **({"port": port} if port else {}), **query}
    else:
        netloc += f"[{host}]" if ":" in host else urllib.parse.quote(host, safe="")
        netloc += f":{port}" if port else ""
    url = f"{scheme}://{netloc}/{urllib.parse.quote(dbname, safe='')}"
    if query:
        url += "?" + urllib.parse.urlencode(query, safe="/,", quote_via=urllib.parse.quote)
    return _Shown(url, where, _longest(secrets))


_URL_PARTS = ("user", "host", "port", "dbname", "password")


def _longest(texts: set[str]) -> tuple[str, ...]:
    return tuple(sorted((t for t in texts if t), key=len, reverse=True))


def _redact(location: str) -> str:
    """The location without its password (for messages and ``Store.path``)."""
    try:
        import psycopg
    except ImportError:
        return _describe(location, None).url
    try:
        params = psycopg.conninfo.conninfo_to_dict(location)
    except psycopg.Error:
        params = None
    return _describe(location, params).url


def _scrub(text: str, shown: _Shown) -> str:
    """``text`` without any of ``shown``'s secrets (a short one only as a whole word)."""
    for secret in shown.secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", "***", text)
    return text


def _unquoted(reason: str, shown: _Shown) -> str:
    """libpq's complaint about an unparsable URL, without the quoted pieces of it that touch
    a secret (libpq quotes the offending token, or the whole URL)."""

    def hide(match: re.Match[str]) -> str:
        token = match.group(1)
        touches = "@" in token or any(token in s or s in token for s in shown.secrets)
        return '"***"' if touches else match.group(0)

    return _scrub(re.sub(r'"([^"]*)"', hide, reason), shown)


class PostgresStore(FlowSql, sql.SqlStore, dialect=POSTGRES):
    _lock_row = " FOR UPDATE"  # take_token: the bucket row stays ours until the commit

    """A durajobs database on a PostgreSQL server.

    Args:
        location: a libpq URL, ``postgresql://user@host:5432/db`` (or ``postgres://``), with
            libpq's parameters (``sslmode``...); passwords may come from ``PGPASSWORD`` or
            ``~/.pgpass``.
        durability: ``"full"`` (``synchronous_commit`` as the server says, normally on) or
            ``"normal"`` (``synchronous_commit = off`` for this store's sessions: a server
            crash may lose the latest commits, never tears one).
        busy_timeout: seconds a statement waits for a row lock (``lock_timeout``); also the
            connect timeout.
        readonly: open for inspection only: never migrates; the session is read-only.

    Raises:
        StorageError: psycopg is missing, the server cannot be reached, or the database holds
            another application's ``instances`` table or a newer durajobs schema.
        ValueError: ``durability`` is not ``"full"`` or ``"normal"``.
    """

    import_prologue = (SQL_LOCK_TABLES,)
    import_epilogue = SQL_RESTART_IDS
    # Group commit in one statement per table (``_apply_batch``); False: one statement per write
    # (the benchmark's "before", benchmarks/bench_postgres.py).
    batch_commit = True

    def __init__(
        self,
        location: str,
        *,
        durability: str = "full",
        busy_timeout: float = 5.0,
        readonly: bool = False,
    ) -> None:
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        setup = [
            f"SET lock_timeout = {max(1, round(busy_timeout * 1000))}",
            # The read after a claim (``read_after_claim``) runs in the claim's query: at READ
            # COMMITTED it sees every commit made before the claim was granted; a database
            # whose default is REPEATABLE READ would give it the snapshot from before the wait.
            "SET default_transaction_isolation = 'read committed'",
        ]
        if durability == "normal":
            setup.append("SET synchronous_commit = off")
        if readonly:
            setup.append("SET default_transaction_read_only = on")
        self._link = Link(location, setup, connect_timeout=busy_timeout)
        super().__init__(_redact(location), self._link.where)
        self.durability = durability
        self.readonly = readonly
        self._psycopg = psycopg = _psycopg(self.path)
        # A write's values, not the database, at fault: text with NUL (PostgreSQL's text
        # refuses it), an integer past bigint.
        self.content_errors = (psycopg.DataError, UnicodeError, OverflowError, TypeError)
        self._migrated_generation = -1
        self._final_id = 0  # every history id up to this one is final (history_since)
        self._follow_pending: list[tuple[int, frozenset[str]]] = []
        # What was read right after a claim granted on this store's session (claims opened
        # with this store share its connection: ``read_after_claim``), for the reads the
        # engine makes next: (connection generation, {id: (row, queued?, last step)}).
        self._claimed: tuple[int, dict[str, tuple[Any, bool | None, int | None]]] | None = None
        # A claim (advisory lock key) the next single-write commit unlocks after its COMMIT,
        # and the one the last such commit did unlock, on which session (``unlock_at_commit``).
        self._unlock: int | None = None
        self._unlocked: tuple[int, int] | None = None
        # Likewise the wake-up: the channel the next single-write commit notifies after its
        # COMMIT, and whether the last such commit did (``notify_at_commit``).
        self._notify: str | None = None
        self._notified = False
        # SQL_PREPARES name -> the link generation (session) that has it prepared; -1 - the
        # generation: unknown (a query that held its PREPARE failed).
        self._prepared: dict[str, int] = {}
        # SQL_PREPARES name -> (uses since its PREPARE, the use that prepares it again).
        self._replan: dict[str, tuple[int, int]] = {}
        self._connection()  # connect (and migrate) now: a bad URL fails at open

    # -- plumbing -------------------------------------------------------------------------

    def _connection(self) -> Any:
        link = self._link
        conn = link.connection()
        if self._migrated_generation != link.generation:
            try:
                self._migrate(conn)
            except self._psycopg.Error as exc:
                link.drop()
                raise link.error(exc, "cannot open") from None
            self._migrated_generation = link.generation
        return conn

    def _migrate(self, conn: Any) -> None:
        if not sql.needs_migration(self.where, self._version(conn), self.readonly):
            return
        with conn.transaction():
            # Every process that starts on an old schema queues here; the first migrates,
            # the others find the work done.
            conn.execute(SQL_XACT_LOCK, (MIGRATE_KEY,))
            conn.execute(SQL_SCHEMA_TABLE)
            current = int(conn.execute(SQL_SCHEMA_VERSION).fetchone()[0])
            if current == 0 and conn.execute(SQL_SCHEMA_EXISTS).fetchone()[1]:
                raise StorageError(
                    f"{self.where}: not a durajobs database (it has an 'instances' table "
                    "that durajobs did not make)"
                )
            for target in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(SQL_SCHEMA_APPLIED, (target + 1,))

    def _version(self, conn: Any) -> int:
        has_schema, has_instances = conn.execute(SQL_SCHEMA_EXISTS).fetchone()
        if not has_schema:
            if has_instances:
                raise StorageError(
                    f"{self.where}: not a durajobs database (it has an 'instances' table "
                    "that durajobs did not make)"
                )
            return 0
        return int(conn.execute(SQL_SCHEMA_VERSION).fetchone()[0])

    def _read(self, work: Callable[[Any], T], doing: str = "read") -> T:
        """``work(connection)`` outside any transaction, errors raised as ``StorageError``; a
        connection found lost while idle is reopened without failing the call (``Link.run``).
        """
        return self._link.run(doing, work, self._connection)

    def _rows(
        self, statement: str, params: Sequence[Any] = (), doing: str = "read"
    ) -> list[tuple[Any, ...]]:
        return self._link.run(
            doing, lambda conn: conn.execute(statement, params).fetchall(), self._connection
        )

    def _changed(self, cur: Any) -> int:
        return int(cur.rowcount)

    # -- reads right after a claim (the claim's round trip) -------------------------------

    @property
    def link(self) -> Link:
        """The store's connection (claims opened with this store hold their locks on it)."""
        return self._link

    def read_after_claim(
        self, conn: Any, claim: str, params: Any, instance_ids: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """Run ``claim`` (a statement granting claims, on this store's session ``conn``) and,
        in the same round trip (one simple query), read what the engine reads after a claim of
        ``instance_ids``; returns ``claim``'s rows. The reads run after the claim on the same
        session, so they see every commit made before the claim was granted; they are kept
        for the next ``load``/``load_with_queue``/``last_step``/``load_many`` of those
        instances (a refused claim's are not used).

        Raises:
            psycopg.Error: the statements failed (the caller's ``Link.run`` turns it into
                ``StorageError``).
        """
        self._claimed = None
        cur = _client_cursor(conn)
        prefix, prefixed = "", 0
        if len(instance_ids) == 1:
            prefix, prefixed = self._prepare(conn, READ_NAME)
            read = _bound(cur, SQL_EXECUTE_READ, (instance_ids[0],))
        else:
            read = _bound(cur, SQL_LOAD_MANY, (list(instance_ids),))
        # One simple query, two statements: the read takes its snapshot after the claim.
        with self._preparing(READ_NAME, prefix):
            cur.execute(f"{prefix}{_bound(cur, claim, params)}; {read}")
        for _ in range(prefixed):
            cur.nextset()
        rows: list[tuple[Any, ...]] = cur.fetchall()
        cur.nextset()
        found: dict[str, tuple[Any, bool | None, int | None]] = {}
        if len(instance_ids) == 1:
            *row, queued, last = cur.fetchone()
            found[instance_ids[0]] = (
                None if row[0] is None else Instance(*row),
                bool(queued),
                last,
            )
        else:
            found = dict.fromkeys(instance_ids, (None, None, None))  # (queued: not read)
            for row in cur.fetchall():
                found[row[0]] = (Instance(*row), None, None)
        # Only a granted claim's reads are kept: after a refused one, another step may commit
        # before this caller gets the claim (``acquire`` then waits for it and reads anew).
        granted = {i: v for (i, v), (ok, *_) in zip(found.items(), rows, strict=True) if ok}
        self._claimed = (self._link.generation, granted) if granted else None
        return rows

    def unlock_at_commit(self, key: int) -> None:
        """The next single-write commit (``_commit_one``) also runs ``pg_advisory_unlock(key)``
        right after its ``COMMIT``, in its round trip: the claim a step holds on this session
        (``AdvisoryClaims.release_at_commit``). Any other commit forgets it."""
        self._unlock = key

    def notify_at_commit(self, channel: str) -> None:
        """The next single-write commit also runs ``pg_notify(channel)`` after its ``COMMIT``
        (and its unlock), in its round trip: a transaction of its own, as ``notify``'s, that
        holds nothing of the write's. Any other commit forgets it."""
        self._notify = channel

    def notified_at_commit(self) -> bool:
        """Whether the last commit sent the wake-up ``notify_at_commit`` asked for (once)."""
        notified, self._notified = self._notified, False
        return notified

    def unlocked_at_commit(self, key: int) -> bool:
        """Whether the last commit unlocked ``key`` on the live session (once)."""
        unlocked, self._unlocked = self._unlocked, None
        return unlocked == (key, self._link.generation)

    def forget_claimed(self, instance_ids: Container[str] | None = None) -> None:
        """Drop what ``read_after_claim`` kept (of these instances; all: ``None``)."""
        if self._claimed is not None and (
            instance_ids is None or any(i in instance_ids for i in self._claimed[1])
        ):
            self._claimed = None

    def _kept(self, instance_id: str) -> tuple[Any, bool | None, int | None] | None:
        claimed = self._claimed
        if claimed is None or claimed[0] != self._link.generation:
            return None
        return claimed[1].get(instance_id)

    def load(self, instance_id: str) -> Instance | None:
        kept = self._kept(instance_id)
        if kept is None:
            return super().load(instance_id)
        return kept[0]  # type: ignore[no-any-return]

    def load_with_queue(self, instance_id: str) -> tuple[Instance | None, list[Queued]]:
        kept = self._kept(instance_id)
        if kept is None or kept[1] is None:
            return super().load_with_queue(instance_id)
        row, queued, _ = kept
        return row, self.queued(instance_id) if queued else []

    def last_step(self, instance_id: str) -> int:
        kept = self._kept(instance_id)
        if kept is None or kept[2] is None:
            return super().last_step(instance_id)
        return kept[2]

    def load_many(
        self, instance_ids: Sequence[str], *, with_queue: bool = False
    ) -> dict[str, tuple[Instance | None, list[Queued]]]:
        claimed = self._claimed
        if (
            with_queue
            or claimed is None
            or claimed[0] != self._link.generation
            or any(i not in claimed[1] for i in instance_ids)
        ):
            return super().load_many(instance_ids, with_queue=with_queue)
        return {i: (claimed[1][i][0], []) for i in instance_ids}

    def _array(self, ids: Sequence[str]) -> list[str]:
        return list(ids)

    def _import_rows(self, cur: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
        with cur.copy(SQL_IMPORT[table]) as copy:
            for row in rows:
                copy.write_row(row)

    @contextlib.contextmanager
    def _snapshot(self, doing: str) -> Iterator[sql.Read]:
        link = self._link
        conn = link.run(doing, _begin_snapshot, self._connection)

        def read(statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            try:
                return conn.execute(statement, params).fetchall()  # type: ignore[no-any-return]
            except self._psycopg.Error as exc:
                link.drop()
                raise link.error(exc, doing) from None

        try:
            yield read
        finally:
            self._rollback(conn)

    def _transaction(
        self, doing: str, body: Callable[[Any], T], probe: Callable[[sql.Read], bool]
    ) -> T:
        """``BEGIN``, ``body(cursor)``, ``COMMIT``. ``probe`` is asked (on a new connection)
        only when the connection broke during COMMIT: the server may have committed."""
        self._claimed = None  # what was read after a claim is stale once anything is written
        self._unlock = self._unlocked = self._notify = None
        self._notified = False
        psycopg = self._psycopg
        link = self._link

        def begin(conn: Any) -> tuple[Any, Any]:
            cur = conn.cursor()
            cur.execute("BEGIN")
            return conn, cur

        conn, cur = link.run(doing, begin, self._connection)  # nothing written yet: may retry
        try:
            result = body(cur)
        except BaseException as exc:
            self._rollback(conn)
            if isinstance(exc, psycopg.Error):
                link.drop()
                raise link.error(exc, doing) from None
            raise
        try:
            cur.execute("COMMIT")
        except psycopg.Error as exc:
            if not conn.broken:
                self._rollback(conn)
                raise link.error(exc, doing) from None
            link.drop()
            try:
                conn = self._connection()
                committed = probe(lambda text, params: conn.execute(text, params).fetchall())
            except (psycopg.Error, StorageError):
                link.drop()
                raise link.error(exc, doing + " (outcome unknown)") from None
            if not committed:
                raise link.error(exc, doing) from None
        return result

    def _rollback(self, conn: Any) -> None:
        if conn.broken or conn.closed:
            return
        with contextlib.suppress(self._psycopg.Error):
            conn.execute("ROLLBACK")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._link.close()

    def notify(self, channel: str = WAKE_CHANNEL) -> None:
        """Send ``NOTIFY channel`` in a transaction of its own (after a commit, never inside).

        Raises:
            StorageError: the server cannot be reached.
        """
        if self._link.is_open:  # nobody waits for its answer: sent, not waited for
            self._link.post(POST_NOTIFY, (channel.encode(),))
            return
        self._read(lambda conn: conn.execute(SQL_NOTIFY, (channel,)), "notify")

    def _serialize(self, cur: Any, instance_ids: Sequence[str]) -> None:
        # Sorted: two transactions never wait on each other.
        keys = sorted({_write_key(instance_id) for instance_id in instance_ids})
        if len(keys) == 1:
            cur.execute(SQL_XACT_LOCK, (keys[0],))
        elif keys:
            cur.execute(SQL_XACT_LOCKS, (keys,))

    def _group(
        self, cur: Any, writes: Sequence[Write], now: float, history_limit: int
    ) -> Container[int]:
        # Debounce rows are also written by enqueue, which holds no claim: serialize with it.
        self._serialize(cur, [w.instance_id for w in writes if w.kind == "debounce"])
        return self._apply_batch(cur, writes, now, history_limit)

    def commit(
        self, writes: Sequence[Write], now: float, history_limit: int, *, atomic: bool = False
    ) -> list[bool]:
        """A single step that replaces (or makes) a row and records it, the common client
        call: ``BEGIN``, the row and its records (``SQL_PUT_RECORDED``) and ``COMMIT`` as one
        simple query, one round trip (a fenced-out write commits nothing). Any other commit:
        ``SqlStore.commit``."""
        write = writes[0] if len(writes) == 1 else None
        if (
            write is None or write.row is None or not write.records or write.kind == "debounce"
            or write.key is not None or write.queue_only or write.trim
        ):  # fmt: skip
            return super().commit(writes, now, history_limit, atomic=atomic)
        params = (*write.row, write.expected_step, write.instance_id, now, write.row.step,
                  *(list(c) for c in zip(*write.records, strict=True)))  # fmt: skip
        # Its own record, by its time too: a step of another process (this one's claim died
        # with the session) may have recorded the same step and event meanwhile.
        found = (write.instance_id, write.row.step, write.records[-1][0], now)
        applied = self._commit_one(params, lambda read: bool(read(SQL_FIND_MY_RECORD, found)))
        if atomic and not applied:
            raise FencedOut(0)
        return [applied]

    def _prepare(self, conn: Any, name: str) -> tuple[str, int]:
        """``PREPARE name ...; `` if this session may not have ``name`` prepared, else ``""``
        (or, at the uses ``_replan`` counts, ``DEALLOCATE name; PREPARE name ...; ``); and how
        many statements that prefix holds (their results come first).

        Raises:
            psycopg.Error: the check failed.
        """
        generation = self._link.generation
        state = self._prepared.get(name)
        if state == generation:
            uses, at = self._replan.get(name, (0, REPLAN_FIRST))
            if uses + 1 < at:
                self._replan[name] = (uses + 1, at)
                return "", 0
            # Planned again: PostgreSQL keeps a prepared statement's generic plan, made at its
            # sixth use, until an ANALYZE of its tables. Made while they were nearly empty it
            # reads them in full (a sequential scan) as they grow: 7 -> 190 us a read at
            # 9,000 history rows, after a TRUNCATE and VACUUM ANALYZE (benchmarks/FINDINGS.md).
            self._replan[name] = (0, min(at * REPLAN_FACTOR, REPLAN_MAX))
            return f"DEALLOCATE {name}; {SQL_PREPARES[name]}; ", 2
        # A query that held its PREPARE failed: did the PREPARE run?
        if state == -1 - generation and conn.execute(SQL_IS_PREPARED, (name,)).fetchone()[0]:
            self._prepared[name] = generation
            return "", 0
        self._replan[name] = (0, REPLAN_FIRST)
        return SQL_PREPARES[name] + "; ", 1

    @contextlib.contextmanager
    def _preparing(self, name: str, prefix: str) -> Iterator[None]:
        """Around the query that holds ``prefix``: ``name`` is prepared after it, or unknown."""
        generation = self._link.generation
        try:
            yield
        except BaseException:
            # Unknown, with or without the PREPARE (a failure may be the statement's absence:
            # a DEALLOCATE or DISCARD on the session): the next use asks the server.
            self._prepared[name] = -1 - generation
            raise
        if prefix:  # (a query without the PREPARE proves nothing: it may not use ``name``)
            self._prepared[name] = generation

    def _commit_one(self, params: tuple[Any, ...], probe: Callable[[sql.Read], bool]) -> bool:
        """``BEGIN; EXECUTE`` (``SQL_PUT_RECORDED``) ``; COMMIT`` in one round trip; whether
        the fence held."""
        self._claimed = None
        unlock, self._unlock, self._unlocked = self._unlock, None, None
        notify, self._notify, self._notified = self._notify, None, False
        psycopg = self._psycopg
        link = self._link
        for retry in (True, False):
            conn = link.run("commit", _connected, self._connection)
            cur = _client_cursor(conn)
            try:
                prefix, prefixed = self._prepare(conn, PUT_NAME)
                text = f"BEGIN; {_bound(cur, SQL_EXECUTE_PUT, params)}; COMMIT"  # (may refuse)
                if unlock is not None and retry:  # (a new session holds no claim)
                    text += f"; SELECT pg_advisory_unlock({int(unlock)})"
                if notify is not None:
                    text += f"; {_bound(cur, SQL_NOTIFY, (notify,))}"
                with self._preparing(PUT_NAME, prefix):
                    cur.execute(prefix + text)
            except (UnicodeError, OverflowError, TypeError) as exc:
                # A value no query can hold (a lone surrogate): raised before anything was
                # sent, the session is as it was.
                raise RejectedWrite(0, exc) from None
            except psycopg.Error as exc:
                if conn.broken:  # the server may have committed: ask on a new connection
                    link.drop()
                    try:
                        if probe(_reader(self._connection())):
                            return True
                    except (psycopg.Error, StorageError):
                        link.drop()
                        raise link.error(exc, "commit (outcome unknown)") from None
                    if retry:  # not committed, the session is gone: once more on a new one
                        continue
                    raise link.error(exc, "commit") from None
                self._rollback(conn)
                if isinstance(exc, self.content_errors):
                    raise RejectedWrite(0, exc) from None
                raise link.error(exc, "commit") from None
            for _ in range(prefixed + 1):  # (DEALLOCATE's,) PREPARE's, BEGIN's: the write's
                cur.nextset()
            if unlock is not None and retry:
                self._unlocked = (unlock, link.generation)
            self._notified = notify is not None
            return bool(cur.rowcount)
        raise AssertionError("unreachable")  # pragma: no cover

    def _put(self, cur: Any, write: Write, now: float) -> bool:
        records = write.records
        if not records:
            return super()._put(cur, write, now)
        row: Any = write.row
        params: tuple[Any, ...] = (*row,)
        debounce = write.kind == "debounce"
        if debounce:
            params += (write.requeue is not None, write.consumed, now, now)
        columns = (list(c) for c in zip(*records, strict=True))
        params += (write.expected_step, write.instance_id, now, row.step, *columns)
        cur.execute(SQL_PUT_DEBOUNCE_RECORDED if debounce else SQL_PUT_RECORDED, params)
        return bool(self._changed(cur))

    def _apply_batch(
        self, cur: Any, writes: Sequence[Write], now: float, history_limit: int
    ) -> set[int]:
        """Group commit's common cases in one statement each: the steps of Continuous and Task
        instances that replace an existing row (``UPDATE ... FROM unnest(...)``, each row
        fenced on its own step), and those that make a new one (``INSERT ... SELECT FROM
        unnest(...) ON CONFLICT DO NOTHING``), with their history records (``INSERT ... SELECT
        FROM unnest(...)``, only for the rows written). Returns the indexes applied.

        Every other write, and every write of the batch that did not apply (fenced out, its
        row missing, or a new one's row found), goes through ``_apply`` afterwards, which gives
        it the exact per-write semantics. A value the server refuses (a content error) undoes
        the batch (a savepoint) and leaves every write to ``_apply``, which names the culprit.
        """
        if not self.batch_commit:
            return set()
        plain = [
            i for i, w in enumerate(writes)
            if w.row is not None and w.kind != "debounce" and w.key is None and not w.queue_only
        ]  # fmt: skip
        if len(plain) < 2 or len({writes[i].instance_id for i in plain}) < len(plain):
            return set()
        updates = [i for i in plain if not writes[i].new and writes[i].expected_step > 0]
        inserts = [i for i in plain if writes[i].new]
        if len(updates) < 2 and len(inserts) < 2:
            return set()
        done: set[str] = set()
        cur.execute("SAVEPOINT batch")
        try:
            for indexes, statement in ((updates, SQL_PUT_BATCH), (inserts, SQL_INSERT_BATCH)):
                if len(indexes) < 2:
                    continue
                rows = [writes[i].row for i in indexes]
                columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)]
                records = [
                    (w.instance_id, w.row.step, *record)  # type: ignore[union-attr]
                    for w in (writes[i] for i in indexes)
                    for record in w.records
                ]
                record_columns: list[list[Any]] = [list(c) for c in zip(*records, strict=True)] or [
                    [] for _ in range(7)
                ]
                params: tuple[Any, ...] = (*columns, now, *record_columns)
                if statement is SQL_PUT_BATCH:
                    expected = [writes[i].expected_step for i in indexes]
                    params = (columns[0], *columns[4:], expected, now, *record_columns)
                done.update(row[0] for row in cur.execute(statement, params).fetchall())
        except self.content_errors:
            cur.execute("ROLLBACK TO SAVEPOINT batch")
            return set()
        applied = {i for i in updates + inserts if writes[i].instance_id in done}
        for write in (writes[i] for i in sorted(applied) if writes[i].trim):
            cur.execute(SQL.trim_history, (write.instance_id, write.instance_id, history_limit))
        return applied

    def history_since(self, after_id: int, limit: int = 1000) -> list[HistoryRow]:
        """Only records no transaction still writing can precede (``SQL_HISTORY_SINCE``): one
        round trip, two or three when new records are final."""
        found: list[HistoryRow] = []

        def more(bound: int) -> bool:
            start = found[-1].id if found else after_id
            rows = self._final_rows(SQL_HISTORY_SINCE, (start, bound, limit - len(found)))
            found.extend(rows)
            return len(found) < limit

        self._up_to_final(more)
        return found

    def _up_to_final(self, read: Callable[[int], bool]) -> None:
        """``read(bound)`` (a statement of ``_final_rows``) until ``_final_id`` stops moving
        (three times at most), or ``read`` says it has enough."""
        for _ in range(3):
            bound = self._final_id
            if not read(bound) or self._final_id == bound:
                return

    def _final_rows(self, statement: str, params: tuple[Any, ...]) -> list[HistoryRow]:
        rows = self._rows(statement, params)
        self._writers_seen(int(rows[0][0]), frozenset(rows[0][1]))
        return [HistoryRow(*r[2:]) for r in rows if r[2] is not None]

    def _writers_seen(self, last_id: int, writers: frozenset[str]) -> None:
        """Move ``_final_id`` on: the ids up to a last id read earlier are final once none of
        the writers seen then is seen now; up to ``last_id`` at once when nobody writes."""
        pending = [*self._follow_pending, (last_id, writers)]
        final = [self._final_id, *(i for i, w in pending if not w & writers)]
        self._final_id = max(final)
        still = [(i, w) for i, w in pending if i > self._final_id and w & writers]
        self._follow_pending = still[-FOLLOW_PENDING_MAX:]

    def recent_history(self, limit: int) -> list[HistoryRow]:
        """Of the records ``history_since`` would hand out (up to the horizon)."""
        found: list[HistoryRow] = []

        def latest(bound: int) -> bool:
            found[:] = self._final_rows(SQL_HISTORY_RECENT_FINAL, (bound, limit))
            return True

        self._up_to_final(latest)
        return found

    def schema_version(self) -> int:
        return self._read(self._version)

    def listeners(self) -> int:
        """How many daemons listen for wake-ups on this database now (their ``LISTEN``
        sessions; ``durajobs doctor`` and the CLI's "is a daemon running?").

        Raises:
            StorageError: the database cannot be read.
        """
        return int(self._rows(SQL_LISTENERS, (LISTENER_NAME,))[0][0])

    def setting(self, name: str) -> str:
        """A server setting as this store's sessions see it (e.g. ``synchronous_commit``).

        Raises:
            StorageError: the database cannot be read.
        """
        return str(self._rows(SQL_SETTING, (name,))[0][0])

    def health(self, *, idle_after: float = IDLE_IN_TRANSACTION_WARN) -> list[Finding]:
        """Connection, schema version, clock skew between host and server, and sessions idle
        in a transaction for more than ``idle_after`` seconds (they pin vacuum)."""
        findings: list[Finding] = []
        try:
            before = time.time()
            version, server_time = self._rows(SQL_SERVER_INFO)[0]
            after = time.time()
        except StorageError as exc:
            return [Finding("connection", "fail", str(exc))]
        findings.append(Finding("connection", "ok", f"{self.where}: PostgreSQL {version}"))
        try:
            findings.append(sql.schema_finding(self.schema_version()))
        except StorageError as exc:
            findings.append(Finding("schema", "fail", str(exc)))
        skew = float(server_time) - (before + after) / 2
        findings.append(
            Finding(
                "clock",
                "warn" if abs(skew) > CLOCK_SKEW_WARN else "ok",
                f"this host's clock is {skew:+.3f} s off the server's (hosts must agree: NTP)",
            )
        )
        findings.append(self._idle_in_transaction(idle_after))
        return findings

    def _idle_in_transaction(self, idle_after: float) -> Finding:
        try:
            idle = self._rows(SQL_IDLE_IN_TRANSACTION, (idle_after,))
            hidden = int(self._rows(SQL_HIDDEN_SESSIONS)[0][0])
        except StorageError as exc:
            return Finding("idle-tx", "fail", str(exc))
        unseen = (
            f"; {hidden} session(s) of other roles are not visible (grant pg_read_all_stats)"
            if hidden
            else ""
        )
        if not idle:
            return Finding(
                "idle-tx",
                "ok",
                f"no session idle in a transaction for over {idle_after:g} s{unseen}",
            )
        pinning = sum(1 for *_, holds_snapshot in idle if holds_snapshot)
        shown = ", ".join(
            f"pid {pid} ({user}@{address}, {application or '-'}, {seconds:.0f} s)"
            for pid, user, application, address, seconds, _ in idle[:5]
        )
        more = f" and {len(idle) - 5} more" if len(idle) > 5 else ""
        return Finding(
            "idle-tx",
            "warn",
            f"{len(idle)} session(s) idle in a transaction for over {idle_after:g} s, "
            f"{pinning} holding a snapshot or a transaction id that keeps VACUUM from removing "
            f"dead rows: {shown}"
            f"{more} (end them with pg_terminate_backend(pid); set "
            f"idle_in_transaction_session_timeout){unseen}",
        )


def _connected(conn: Any) -> Any:
    return conn


def _reader(conn: Any) -> sql.Read:
    """Reads on ``conn`` (a probe's)."""

    def read(statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return conn.execute(statement, params).fetchall()  # type: ignore[no-any-return]

    return read


SQL_LOAD_MANY = Typed(PostgresStore.sql.load_many)  # (its ids: ``= ANY(%s::text[])``)


def _bound(cur: Any, statement: str, params: Any) -> str:
    """``statement`` with ``params`` written in: by ``literals`` if it is ``Typed`` (each
    parameter typed by the statement), else, or for a value ``literals`` does not write, by
    psycopg.

    Raises:
        psycopg.Error, UnicodeError, OverflowError, TypeError: psycopg could not bind a value.
    """
    if isinstance(statement, Typed):
        try:
            return bind(statement, params)
        except Unbindable:
            pass
    return str(cur.mogrify(statement, params))


def _client_cursor(conn: Any) -> Any:
    """A cursor that binds parameters itself: several statements, one simple query."""
    import psycopg

    return psycopg.ClientCursor(conn)


def _begin_snapshot(conn: Any) -> Any:
    conn.execute(SQL_BEGIN_SNAPSHOT)
    return conn
