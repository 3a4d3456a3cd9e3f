"""The stores: where instances, their queued events, idempotency keys and history live.

Two implementations of one interface (``base``): ``sqlite`` (one WAL-mode file through apsw;
claims as OFD byte-range locks in ``sqlite.claims``; wake-ups over a Unix datagram socket in
``sqlite.wake``) is the embedded default; ``postgres`` (psycopg 3; claims as session advisory
locks in ``postgres.claims``; wake-ups through ``LISTEN``/``NOTIFY`` in ``postgres.wake``) serves
many hosts.

The location string picks the store: ``postgresql://...`` or ``postgres://...`` is PostgreSQL,
anything else a SQLite file path. The factories below are the only place that decides; psycopg
is imported only for a PostgreSQL location.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

from durajobs.errors import StorageError
from durajobs.stores.base import Claims, Finding, Slots, Store, WakeListener, Waker

if TYPE_CHECKING:
    from durajobs.stores.postgres.store import PostgresStore
    from durajobs.stores.sqlite.store import SqliteStore

__all__ = [
    "claims_may_exist", "created_files", "daemon_listening", "daemons_serving",
    "display_location", "health",
    "new_database_files", "open_claims", "open_listener", "open_store", "open_waker",
    "refuse_directory", "same_database", "serving",
]  # fmt: skip

WAL_WARN_BYTES = 64 * 1024 * 1024  # a WAL this big means checkpoints are being starved


def is_postgres(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a PostgreSQL database (``postgresql://``/``postgres://``)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def display_location(location: str | os.PathLike[str]) -> str:
    """``location`` fit for messages and ``repr``: a PostgreSQL URL without its password.

    Use it wherever a location is shown (``Jobs.__repr__``, error messages): a URL may carry a
    password (``postgresql://user:secret@host/db``) that must never be printed.
    """
    if is_postgres(location):
        from durajobs.stores.postgres.store import _redact

        return _redact(str(location))
    return os.fspath(location)


def open_store(
    location: str | os.PathLike[str],
    *,
    durability: str = "full",
    busy_timeout: float = 5.0,
    readonly: bool = False,
    vfs: str | None = None,
) -> Store:
    """Open (and create or migrate) the store at ``location``.

    Args:
        location: a SQLite file path, or a ``postgresql://`` / ``postgres://`` URL.
        durability: ``"full"`` or ``"normal"`` (SQLite ``synchronous``; PostgreSQL
            ``synchronous_commit = off`` for durajobs' sessions).
        busy_timeout: seconds to wait for another writer's lock.
        readonly: inspection only: never creates or migrates.
        vfs: an apsw VFS name (SQLite only; fault-injection tests).

    Raises:
        StorageError: the database cannot be opened, is not a durajobs database, or (for a
            PostgreSQL URL) psycopg is not installed: ``pip install 'durajobs[postgres]'``.
        ValueError: bad ``durability``, or ``vfs`` with a PostgreSQL URL.
    """
    if is_postgres(location):
        if vfs is not None:
            raise ValueError("vfs is a SQLite option; a PostgreSQL location takes none")
        from durajobs.stores.postgres.store import PostgresStore

        return PostgresStore(
            str(location), durability=durability, busy_timeout=busy_timeout, readonly=readonly
        )
    from durajobs.stores.sqlite.store import SqliteStore

    return SqliteStore(
        location, durability=durability, busy_timeout=busy_timeout, readonly=readonly, vfs=vfs
    )


def open_claims(location: str | os.PathLike[str], store: Store | None = None) -> Claims:
    """The per-instance claims of the database at ``location``.

    SQLite: OFD locks on ``<real path>.lock`` (``store`` unused). PostgreSQL: advisory locks on
    ``store``'s session (a claim and the reads after it in one round trip), or without a store
    on a connection of their own (opened on first use).

    Raises:
        StorageError: the lock file cannot be opened, or psycopg is missing.
    """
    if is_postgres(location):
        from durajobs.stores.postgres.claims import AdvisoryClaims
        from durajobs.stores.postgres.store import PostgresStore

        shared = store if isinstance(store, PostgresStore) else None
        return AdvisoryClaims(str(location), store=shared)
    from durajobs.stores.sqlite.claims import InstanceLocks, lock_path

    return InstanceLocks(lock_path(os.fspath(location)))


def open_slots(location: str | os.PathLike[str]) -> Slots:
    """The concurrency slots of a location (``Slots``), opened for this thread.

    Raises:
        StorageError: the lock file cannot be opened (SQLite), psycopg is missing or the URL
            is invalid (PostgreSQL).
    """
    if is_postgres(location):
        from durajobs.stores.postgres.slots import AdvisorySlots

        return AdvisorySlots(str(location))
    from durajobs.stores.sqlite.slots import JobSlots, slots_path

    return JobSlots(slots_path(os.fspath(location)))


def open_waker(location: str | os.PathLike[str], store: Store | None = None) -> Waker:
    """What pokes the daemons of ``location`` after a commit.

    SQLite: a datagram to ``<path>.wake``. PostgreSQL: ``NOTIFY`` over ``store``'s connection
    when a PostgreSQL store is given (no extra session), else over one of its own.

    Raises:
        StorageError: psycopg is missing or the URL is invalid.
    """
    if is_postgres(location):
        from durajobs.stores.postgres.store import PostgresStore
        from durajobs.stores.postgres.wake import PgWaker

        shared = store if isinstance(store, PostgresStore) else None
        return PgWaker(str(location), shared)
    from durajobs.stores.sqlite.wake import Waker as SocketWaker

    return SocketWaker(os.fspath(location))


def open_listener(location: str | os.PathLike[str]) -> WakeListener:
    """The daemon's end of the wake-ups of ``location``.

    Raises:
        OSError: SQLite: the wake socket cannot be bound.
        StorageError: PostgreSQL: the server cannot be reached.
    """
    if is_postgres(location):
        from durajobs.stores.postgres.wake import PgListener

        return PgListener(str(location))
    from durajobs.stores.sqlite.wake import WakeListener as SocketListener

    return SocketListener(os.fspath(location))


# -- what differs around a location -----------------------------------------------------------


def created_files(location: str) -> list[str]:
    """The files that opening a ``Jobs`` on ``location`` (its store and claims) may create,
    for ``Jobs()`` to remove those it created when it fails: none on PostgreSQL."""
    if is_postgres(location):
        return []
    from durajobs.stores.sqlite.claims import lock_path

    suffixes = ("", "-wal", "-shm", "-journal")
    return [location + suffix for suffix in suffixes] + [lock_path(location)]


def new_database_files(location: str) -> list[str]:
    """When opening ``location`` will create a new database (a SQLite path where nothing is
    yet), the files to remove if filling it fails; else none (never on PostgreSQL)."""
    if is_postgres(location) or os.path.lexists(location):
        return []
    return [location, location + "-wal", location + "-shm"]


def refuse_directory(location: str) -> None:
    """Refuse a SQLite location that is a directory (before opening anything).

    Raises:
        StorageError: ``location`` is a directory.
    """
    if not is_postgres(location) and os.path.isdir(location):
        raise StorageError(f"{display_location(location)}: is a directory, not a database file")


def same_database(a: str, b: str) -> bool:
    """Whether two locations name one database: the same file (however spelled), or the same
    URL."""
    if is_postgres(a) or is_postgres(b):
        return a == b
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing
        return os.path.realpath(a) == os.path.realpath(b)


def claims_may_exist(location: str) -> bool:
    """Whether some process may have claimed an instance of ``location`` (SQLite: its lock file
    exists, which opening its claims would create; PostgreSQL: always)."""
    if is_postgres(location):
        return True
    from durajobs.stores.sqlite.claims import lock_path

    return os.path.exists(lock_path(location))


def daemon_listening(location: str, store: Store) -> bool:
    """Whether a daemon serves ``location``: bound to the file's wake socket (sends it one
    harmless wake-up), or on PostgreSQL, listening for wake-ups on the server."""
    if is_postgres(location):
        try:
            return bool(daemons_serving(location, store))
        except StorageError:
            return False
    import socket  # only doctor asks: ``durajobs ls`` starts without it

    from durajobs.stores.sqlite.wake import wake_address

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"", wake_address(location))
    except BlockingIOError:
        return True  # its queue is full: it is there (and awake)
    except OSError:
        return False
    return True


def health(location: str, store: Store) -> list[Finding]:
    """The store's own findings (``durajobs doctor``): on SQLite ``PRAGMA integrity_check``, the
    schema version and the WAL size; on PostgreSQL the connection, the schema version, the
    clock skew between this host and the server, and sessions idle in a transaction.

    Never raises for a damaged database: failures are findings.
    """
    if is_postgres(location):
        return cast("PostgresStore", store).health()
    from durajobs.stores import sql

    sqlite = cast("SqliteStore", store)
    findings: list[Finding] = []
    try:
        lines = sqlite.integrity_check()
        more = f" (+{len(lines) - 5} more)" if len(lines) > 5 else ""
        shown = f"PRAGMA integrity_check: {'; '.join(lines[:5])}{more}"
        findings.append(Finding("integrity", "ok" if lines == ["ok"] else "fail", shown))
    except StorageError as exc:
        findings.append(Finding("integrity", "fail", str(exc)))
    try:
        findings.append(sql.schema_finding(sqlite.schema_version()))
    except StorageError as exc:
        findings.append(Finding("schema", "fail", str(exc)))
    wal = sqlite.wal_bytes()
    large = wal > WAL_WARN_BYTES
    why = " (large: a long-running reader may be blocking checkpoints)" if large else ""
    findings.append(Finding("wal", "warn" if large else "ok", f"WAL {_size(wal)}{why}"))
    return findings


def daemons_serving(location: str, store: Store) -> int | None:
    """How many daemons listen for ``location``'s wake-ups now (PostgreSQL: any number, on any
    number of hosts); ``None`` for a file, which one daemon serves.

    Raises:
        StorageError: the database cannot be read.
    """
    if is_postgres(location):
        return cast("PostgresStore", store).listeners()
    return None


def serving(location: str, store: Store) -> list[Finding]:
    """Who serves ``location`` (``durajobs doctor``): whether daemons listen for its wake-ups,
    and what its claims are (why none can be stale)."""
    if is_postgres(location):
        try:
            count = daemons_serving(location, store)
            daemon = Finding("daemon", "info", f"{count} daemon(s) listening")
        except StorageError as exc:
            daemon = Finding("daemon", "fail", str(exc))
        kind = "session advisory locks, released by the server the moment their session ends"
    else:
        from durajobs.stores.sqlite.claims import lock_path
        from durajobs.stores.sqlite.wake import wake_address

        address = wake_address(location)
        shown = address if isinstance(address, str) else "@" + address[1:].decode()
        who = "a daemon is" if daemon_listening(location, store) else "no daemon is"
        daemon = Finding("daemon", "info", f"{who} listening on {shown}")
        kind = f"kernel OFD locks on {lock_path(location)}, released when their process dies"
    return [daemon, Finding("claims", "ok", f"claims are {kind}: none can be stale")]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _check_conforms() -> None:  # pragma: no cover  (for mypy only)
    from durajobs.stores.postgres.claims import AdvisoryClaims
    from durajobs.stores.postgres.slots import AdvisorySlots
    from durajobs.stores.postgres.wake import PgListener, PgWaker
    from durajobs.stores.sqlite.claims import InstanceLocks
    from durajobs.stores.sqlite.slots import JobSlots
    from durajobs.stores.sqlite.wake import WakeListener as SocketListener
    from durajobs.stores.sqlite.wake import Waker as SocketWaker

    def sqlite(
        store: SqliteStore, claims: InstanceLocks, waker: SocketWaker, listener: SocketListener
    ) -> tuple[Store, Claims, Waker, WakeListener]:
        return store, claims, waker, listener

    def postgres(
        claims: AdvisoryClaims, waker: PgWaker, listener: PgListener
    ) -> tuple[Claims, Waker, WakeListener]:
        return claims, waker, listener

    def slots(sqlite: JobSlots, postgres: AdvisorySlots, store: PostgresStore) -> list[Slots]:
        checked: Store = store
        del checked
        return [sqlite, postgres]

    del sqlite, postgres, slots
