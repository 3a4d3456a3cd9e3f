"""PostgreSQL's wake-ups: ``NOTIFY`` after a commit, ``LISTEN`` in the daemon (the ``Waker`` and
``WakeListener`` protocols of ``durajobs.stores.base``)."""

from __future__ import annotations

import select

from durajobs.errors import StorageError
from durajobs.stores.postgres.store import (
    LISTENER_NAME,
    SQL_NOTIFY,
    WAKE_CHANNEL,
    Link,
    PostgresStore,
    _psycopg,
    _redact,
)

__all__ = ["PgListener", "PgWaker"]


class PgWaker:
    """Wake-ups over ``NOTIFY`` (the ``Waker`` protocol): sent after the commit, in a
    transaction of its own, never inside a write (a NOTIFY takes a server-wide lock at commit).

    With ``store`` given, the notification goes over the store's connection (no extra session).
    A poke never raises: a daemon that misses one re-reads on its own timer.

    Raises:
        StorageError: psycopg is missing or the URL is invalid (at construction only).
    """

    def __init__(self, location: str, store: PostgresStore | None = None) -> None:
        self._store = store
        self._link = None if store is not None else Link(location)
        self._psycopg = _psycopg(_redact(location))

    def poke_at_commit(self) -> None:
        """On the store's session: its next single-write commit sends the ``NOTIFY`` after its
        ``COMMIT``, in the same round trip (``PostgresStore.notify_at_commit``)."""
        if self._store is not None:
            self._store.notify_at_commit(WAKE_CHANNEL)

    def poke(self) -> None:
        """Tell listening daemons that the earliest alarm may have changed."""
        try:
            if self._store is not None:
                if self._store.notified_at_commit():
                    return  # the commit's round trip sent it
                self._store.notify(WAKE_CHANNEL)
            elif self._link is not None:
                self._link.connection().execute(SQL_NOTIFY, (WAKE_CHANNEL,))
        except (StorageError, self._psycopg.Error):
            if self._link is not None:
                self._link.drop()

    def close(self) -> None:
        """Close the waker's own connection (a shared store's stays open)."""
        if self._link is not None:
            self._link.close()

    def abandon(self) -> None:
        """Nothing to do: a ``Link`` never uses a connection opened by another process."""


class PgListener:
    """The daemon's end (the ``WakeListener`` protocol): ``LISTEN`` on a connection of its own.

    ``fileno()`` is the connection's socket, for ``selectors``; ``drain()`` reads what arrived.
    When the connection is lost, ``drain()`` reconnects and reports one wake-up (the caller
    rescans: notifications sent meanwhile are lost); the socket, and so ``fileno()``, may then
    be new: re-register it. If the server cannot be reached, ``drain()`` raises.

    Raises:
        StorageError: the server cannot be reached (at construction too).
    """

    def __init__(self, location: str, *, connect_timeout: float = 5.0) -> None:
        self._link = Link(
            location, (f"LISTEN {WAKE_CHANNEL}",), connect_timeout=connect_timeout,
            application_name=LISTENER_NAME,
        )  # fmt: skip
        self._psycopg = _psycopg(self._link.where)
        self._link.connection()

    def fileno(self) -> int:
        """The socket to select for reading.

        Raises:
            StorageError: the connection is lost and cannot be reopened.
        """
        return int(self._link.connection().pgconn.socket)

    def drain(self) -> int:
        """Consume every pending notification; returns how many (1 after a reconnect).

        Raises:
            StorageError: the connection is lost and cannot be reopened now.
        """
        link = self._link
        if not link.is_open:
            link.connection()
            return 1
        pgconn = link.connection().pgconn
        count = 0
        try:
            # A session ended by the server reads as its FATAL message, then end of file:
            # read until the socket has nothing more (bounded: a flood is drained next time).
            for _ in range(64):
                pgconn.consume_input()
                while pgconn.notifies() is not None:
                    count += 1
                if not select.select([pgconn.socket], [], [], 0)[0]:
                    break
        except self._psycopg.Error:
            link.drop()
            link.connection()  # raises StorageError if the server is still away
            return 1
        return count

    def close(self) -> None:
        """Stop listening and close the connection."""
        self._link.close()

    def detach(self) -> None:
        """``close()``: it leaves a forked copy of the session to the parent."""
        self.close()
