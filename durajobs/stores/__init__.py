"""The stores: where instances, their queued events, idempotency keys and history live.

Two implementations of one interface (``base``): ``sqlite`` (one WAL-mode file through apsw;
claims as OFD byte-range locks in ``ofd_claims``; wake-ups over a Unix datagram socket in
``durajobs.wake``) is the embedded default; ``postgres`` (psycopg 3; claims as session advisory
locks in ``pg_claims``; wake-ups through ``LISTEN``/``NOTIFY``) serves many hosts.

The location string picks the store: ``postgresql://...`` or ``postgres://...`` is PostgreSQL,
anything else a SQLite file path. The factories below are the only place that decides; psycopg
is imported only for a PostgreSQL location.
"""

from __future__ import annotations

import os
from typing import Any

from durajobs.stores.base import Claims, Finding, HealthCheckable, Store, WakeListener, Waker

__all__ = [
    "display_location",
    "health",
    "is_postgres",
    "open_claims",
    "open_listener",
    "open_store",
    "open_waker",
]


def is_postgres(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a PostgreSQL database (``postgresql://``/``postgres://``)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def display_location(location: str | os.PathLike[str]) -> str:
    """``location`` fit for messages and ``repr``: a PostgreSQL URL without its password.

    Use it wherever a location is shown (``Jobs.__repr__``, error messages): a URL may carry a
    password (``postgresql://user:secret@host/db``) that must never be printed.
    """
    if is_postgres(location):
        from durajobs.stores.postgres import _redact

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
        from durajobs.stores.postgres import PostgresStore

        return PostgresStore(
            str(location), durability=durability, busy_timeout=busy_timeout, readonly=readonly
        )
    from durajobs.stores.sqlite import Store as SqliteStore

    return SqliteStore(
        location, durability=durability, busy_timeout=busy_timeout, readonly=readonly, vfs=vfs
    )


def open_claims(location: str | os.PathLike[str], store: Store | None = None) -> Claims:
    """The per-instance claims of the database at ``location``.

    SQLite: OFD locks on ``<real path>.lock``. PostgreSQL: advisory locks on a connection of their
    own (opened on first use). ``store`` is accepted for symmetry and future use (unused).

    Raises:
        StorageError: the lock file cannot be opened, or psycopg is missing.
    """
    del store
    if is_postgres(location):
        from durajobs.stores.pg_claims import AdvisoryClaims

        return AdvisoryClaims(str(location))
    from durajobs.stores import ofd_claims

    path = os.fspath(location)
    # The claim file beside the database's real path (``ofd_claims.lock_path``, where present).
    lock_path = getattr(ofd_claims, "lock_path", lambda p: p + ".lock")
    return ofd_claims.InstanceLocks(lock_path(path))


def open_waker(location: str | os.PathLike[str], store: Store | None = None) -> Waker:
    """What pokes the daemons of ``location`` after a commit.

    SQLite: a datagram to ``<path>.wake``. PostgreSQL: ``NOTIFY`` over ``store``'s connection
    when a PostgreSQL store is given (no extra session), else over one of its own.

    Raises:
        StorageError: psycopg is missing or the URL is invalid.
    """
    if is_postgres(location):
        from durajobs.stores.postgres import PgWaker, PostgresStore

        shared = store if isinstance(store, PostgresStore) else None
        return PgWaker(str(location), shared)
    from durajobs.wake import Waker as SocketWaker

    return SocketWaker(os.fspath(location))


def open_listener(location: str | os.PathLike[str]) -> WakeListener:
    """The daemon's end of the wake-ups of ``location``.

    Raises:
        OSError: SQLite: the wake socket cannot be bound.
        StorageError: PostgreSQL: the server cannot be reached.
    """
    if is_postgres(location):
        from durajobs.stores.postgres import PgListener

        return PgListener(str(location))
    from durajobs.wake import WakeListener as SocketListener

    return SocketListener(os.fspath(location))


def health(store: Any) -> list[Finding]:
    """The store's health findings (``durajobs doctor``): ``store.health()`` where the store
    has it; for SQLite, ``PRAGMA integrity_check`` and the WAL size.

    Never raises for a damaged database: failures are findings.
    """
    if isinstance(store, HealthCheckable):
        return store.health()
    from durajobs.errors import StorageError

    findings: list[Finding] = []
    try:
        lines = store.integrity_check()
        ok = lines == ["ok"]
        shown = "ok" if ok else "; ".join(lines[:5])
        findings.append(Finding("integrity", "ok" if ok else "fail", f"integrity_check: {shown}"))
    except StorageError as exc:
        findings.append(Finding("integrity", "fail", str(exc)))
    wal = int(store.wal_bytes())
    findings.append(Finding("wal", "ok", f"WAL {wal} bytes"))
    return findings
