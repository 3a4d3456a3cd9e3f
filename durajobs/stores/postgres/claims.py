"""Per-instance claims as PostgreSQL session-level advisory locks (the ``Claims`` protocol).

A claim is ``pg_try_advisory_lock(key)`` on a connection of its own, ``key`` a signed 64-bit
blake2b hash of the instance id. Like the OFD lock of ``sqlite.claims`` it writes nothing, and the
server drops it the moment the holding session ends (kill -9 of the process: the server sees
the socket close within milliseconds; no lease). Two ids whose hashes collide share a claim.

Fairness: a caller that waits (``acquire``) first takes a "waiting" marker, the two-int
advisory lock ``(key >> 32, key & 0xffffffff)`` (a key space of its own: PostgreSQL keeps
one-bigint and two-int advisory locks apart), then blocks in ``pg_advisory_lock(key)`` under
``lock_timeout``: the server grants the lock to the queued waiter when the holder releases it,
so a process stepping one instance back to back cannot starve it. ``try_acquire`` yields when
it sees a marker; it tests the marker by taking and dropping it in the same statement as the
claim attempt (one round trip, no read of ``pg_locks``).

Advisory locks are re-entrant per session; a claim this object already holds is never granted
a second time (``_held``), as the OFD claims refuse re-entrant use.

If the claim connection is lost while claims are held (``pg_terminate_backend``, a server
restart), the server has released them: the steps that believed they held them are harmless
because every commit is fenced on the step number. The next claim reconnects, forgetting them
(without failing when the session was lost while idle: ``Link.run``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

from durajobs.errors import InstanceBusyError
from durajobs.stores.postgres.literals import Typed
from durajobs.stores.postgres.store import Link, PostgresStore, _psycopg, signed_hash

__all__ = ["AdvisoryClaims", "SessionLocks", "claim_key"]

_KEYS: dict[str, int] = {}
_KEYS_MAX = 1 << 16
# Seconds an ``anyone_waiting`` answer of "no" is reused: a caller waiting for a claim that a
# group commit holds waits about this much longer than the group's steps (each check is a
# round trip: at 1 ms they were half the round trips of ``run_due``, issue 19).
WAIT_CHECK_INTERVAL = 0.004
CLAIMS_NAME = "durajobs claims"  # the application_name of a claim session (pg_stat_activity)

SQL_TRY_CLAIM = Typed(
    "SELECT CASE WHEN pg_try_advisory_lock(%(hi)s::int, %(lo)s::int) "
    "THEN pg_advisory_unlock(%(hi)s::int, %(lo)s::int) AND pg_try_advisory_lock(%(key)s::bigint) "
    "ELSE false END"
)
SQL_CLAIM_NOW = "SELECT pg_try_advisory_lock(%s::bigint)"
# Many claims in one round trip (``try_acquire_many``), each as SQL_TRY_CLAIM, in order.
SQL_TRY_CLAIMS = Typed(
    "SELECT CASE WHEN pg_try_advisory_lock(hi, lo) "
    "THEN pg_advisory_unlock(hi, lo) AND pg_try_advisory_lock(k) ELSE false END "
    "FROM unnest(%s::bigint[], %s::int[], %s::int[]) WITH ORDINALITY AS t(k, hi, lo, n) "
    "ORDER BY n"
)
# Every waiter also holds ANYONE_WAITS (two-int, shared) while it waits: "is anybody waiting
# for anything?" is then one lock test (``SQL_ANYONE_WAITS``), not one per claim held.
_ANYONE = signed_hash("durajobs:anyone-waits")
ANYONE_WAITS = ((_ANYONE >> 32) & 0x7FFFFFFF, _ANYONE & 0x7FFFFFFF)
SQL_MARK_WAITING = (
    "SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, false), "
    "pg_try_advisory_lock(%s::int, %s::int), "
    f"pg_advisory_lock_shared({ANYONE_WAITS[0]}, {ANYONE_WAITS[1]})"
)
SQL_WAIT_CLAIM = "SELECT pg_advisory_lock(%s::bigint)"
# (marked, hi, lo, lock_timeout to restore)
SQL_UNMARK = (
    "SELECT CASE WHEN %s THEN pg_advisory_unlock(%s::int, %s::int) END, "
    f"pg_advisory_unlock_shared({ANYONE_WAITS[0]}, {ANYONE_WAITS[1]}), "
    "set_config('lock_timeout', %s, false)"
)
# After SQL_MARK_WAITING failed (its wait for ANYONE_WAITS ran into lock_timeout): the
# marker it may have taken first (a lock this session does not hold: false, no harm).
SQL_UNMARK_FAILED = "SELECT pg_advisory_unlock(%s::int, %s::int)"
SQL_RELEASE = "SELECT pg_advisory_unlock(%s::bigint)"
SQL_RELEASE_MANY = "SELECT count(pg_advisory_unlock(k)) FROM unnest(%s::bigint[]) AS k"
SQL_RELEASE_ALL = "SELECT pg_advisory_unlock_all()"
# Is anyone waiting for one of these claims? Take and drop each marker (a CASE: evaluated in
# order, unlike AND).
SQL_WAITED = (
    "SELECT coalesce(bool_or(CASE WHEN pg_try_advisory_lock(hi, lo) "
    "THEN NOT pg_advisory_unlock(hi, lo) ELSE true END), false) "
    "FROM unnest(%s::int[], %s::int[]) AS t(hi, lo)"
)
# Is anybody waiting for any claim at all? (Only then ask SQL_WAITED about the claims held.)
SQL_ANYONE_WAITS = (
    f"SELECT CASE WHEN pg_try_advisory_lock({ANYONE_WAITS[0]}, {ANYONE_WAITS[1]}) "
    f"THEN NOT pg_advisory_unlock({ANYONE_WAITS[0]}, {ANYONE_WAITS[1]}) ELSE true END"
)
# Read-only (doctor): pg_locks shows a bigint key as classid = high half, objid = low half.
SQL_IS_LOCKED = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND objsubid = 1 AND classid::bigint = %s AND objid::bigint = %s "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
)


def claim_key(instance_id: str) -> int:
    """The advisory lock key (signed 64-bit) that stands for ``instance_id``."""
    key = _KEYS.get(instance_id)
    if key is None:
        key = signed_hash(instance_id)
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        _KEYS[instance_id] = key
    return key


def _halves(key: int) -> tuple[int, int]:
    """The two signed int4 halves of a signed int8 (the "waiting" marker's two-int key)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    hi, lo = unsigned >> 32, unsigned & 0xFFFFFFFF
    return (hi - (1 << 32) if hi >= 1 << 31 else hi), (lo - (1 << 32) if lo >= 1 << 31 else lo)


class SessionLocks:
    """Advisory locks held by this object's own server session (``application_name``
    ``name``): the session opens on first use and is reopened after ``fork()`` (the parent's
    session and its locks stay the parent's); ``_held`` is what this session holds, forgotten
    when a new session replaces it (the server dropped the old one's locks).

    Raises:
        StorageError: psycopg is missing or the URL is invalid.
    """

    def __init__(
        self, location: str, name: str, connect_timeout: float, link: Link | None = None
    ) -> None:
        # ``link``: another's session to hold the locks on (a store's), instead of one's own.
        if link is None:
            link = Link(location, connect_timeout=connect_timeout, application_name=name)
        self._link = link
        self._psycopg = _psycopg(self._link.where)
        self.path = self._link.where
        self._held: set[int] = set()
        self._generation = 0

    def _connection(self) -> Any:
        link = self._link
        conn = link.connection()
        if link.generation != self._generation:
            self._generation = link.generation
            self._held.clear()  # a new session holds nothing
        return conn


class AdvisoryClaims(SessionLocks):
    """Exclusive per-instance claims held by this object's own server session.

    Args:
        location: the database URL (the same as the store's).
        connect_timeout: seconds to wait for the server when (re)connecting.
        store: hold the claims on this store's session instead of a connection of their own:
            a granted claim then reads the instance's row in its round trip
            (``PostgresStore.read_after_claim``). The store's owner closes the connection.

    Not for sharing between threads: each ``Jobs`` opens its own. The connection opens on
    first use and is reopened after ``fork()`` (the parent's session, and its claims, stay the
    parent's).

    Raises:
        StorageError: psycopg is missing or the URL is invalid.
    """

    def __init__(
        self, location: str, *, connect_timeout: float = 5.0, store: PostgresStore | None = None
    ) -> None:
        # On the store's own session: one connection, and a claim reads its row in its query.
        super().__init__(
            location, CLAIMS_NAME, connect_timeout, None if store is None else store.link
        )
        self._store = store
        self._nobody_waits_until = 0.0

    # -- plumbing -------------------------------------------------------------------------

    def _run(self, doing: str, sql: str, params: Any) -> Any:
        # A claim dies with its session: a statement is safe to retry on a new one (Link.run).
        return self._link.run(
            doing, lambda conn: conn.execute(sql, params).fetchone()[0], self._connection
        )

    # -- Claims ---------------------------------------------------------------------------

    def try_acquire(self, instance_id: str) -> int | None:
        """Claim without waiting; a token for ``release``, or ``None`` if busy.

        Also ``None`` while another caller waits for this instance in ``acquire``, and for a
        claim this object already holds.

        Raises:
            StorageError: the server cannot be reached.
        """
        key = claim_key(instance_id)
        if key in self._held:
            return None
        hi, lo = _halves(key)
        params = {"hi": hi, "lo": lo, "key": key}
        if not self._claim_and_read("claim", SQL_TRY_CLAIM, params, [key], [instance_id])[0][0]:
            return None
        self._held.add(key)
        return key

    def _claim_and_read(
        self,
        doing: str,
        claim: str,
        params: Any,
        keys: Sequence[int],
        instance_ids: Sequence[str],
    ) -> list[tuple[Any, ...]]:
        """``claim``'s rows (it claims ``keys``); on a store's session, with the reads that
        follow a claim in the same round trip (``PostgresStore.read_after_claim``).

        A session's advisory lock outlives the failure of the statement that took it: if the
        query fails on a live session (the read after the claim ran into ``lock_timeout``, a
        cancel), what it may have granted is released before the error goes up, or the claim
        would stay held, and its instance busy for everyone, until the session ends."""
        store = self._store
        psycopg = self._psycopg

        def work(conn: Any) -> list[tuple[Any, ...]]:
            try:
                if store is None:
                    return conn.execute(claim, params).fetchall()  # type: ignore[no-any-return]
                return store.read_after_claim(conn, claim, params, instance_ids)
            except psycopg.Error:
                if not conn.broken:
                    with contextlib.suppress(psycopg.Error):  # (unlocking a lock not held: false)
                        conn.execute(SQL_RELEASE_MANY, (list(keys),))
                raise

        return self._link.run(doing, work, self._connection)

    # False: one ``try_acquire`` per instance (the benchmark's "before", bench_postgres.py).
    batch_claims = True
    several_daemons = True

    def try_acquire_many(self, instance_ids: Sequence[str]) -> list[int | None]:
        """``try_acquire`` of many instances in one round trip: a token or ``None`` for each.

        ``None`` for an instance held elsewhere, waited for, already held by this object, or
        named twice (the second time).

        Raises:
            StorageError: the server cannot be reached.
        """
        keys = [claim_key(i) for i in instance_ids]
        wanted: list[int] = []
        for key in keys:
            if key not in self._held and key not in wanted:
                wanted.append(key)
        if not wanted:
            return [None] * len(keys)
        halves = [_halves(k) for k in wanted]
        params = (wanted, [h for h, _ in halves], [lo for _, lo in halves])
        named = {k: i for i, k in zip(instance_ids, keys, strict=True)}
        rows = self._claim_and_read(
            "claim", SQL_TRY_CLAIMS, params, wanted, [named[k] for k in wanted]
        )
        granted = {k for k, (ok,) in zip(wanted, rows, strict=True) if ok}
        self._held.update(granted)
        tokens: list[int | None] = []
        for key in keys:
            tokens.append(key if key in granted else None)
            granted.discard(key)  # a second mention of one key gets None
        return tokens

    def acquire(self, instance_id: str, timeout: float) -> int:
        """Claim, waiting up to ``timeout`` seconds for another step of the instance to end.

        Raises:
            InstanceBusyError: still busy after ``timeout``.
            StorageError: the server cannot be reached.
        """
        key = claim_key(instance_id)
        busy = InstanceBusyError(
            f"{instance_id}: another step of this instance is still running after "
            f"{timeout:g} s (wait_timeout)"
        )
        if key in self._held:
            # Held by this very object (re-entrant use): nobody here will release it while
            # we wait, but the caller's contract is to wait, then fail.
            time.sleep(max(0.0, timeout))
            raise busy
        if self._claim_and_read("claim", SQL_CLAIM_NOW, (key,), [key], [instance_id])[0][0]:
            self._held.add(key)
            return key
        hi, lo = _halves(key)
        conn = self._connection()
        psycopg = self._psycopg
        marked = False
        restore: str | None = None  # the session's lock_timeout (a store's statements use it)
        try:
            timeout_ms = f"{max(1, round(timeout * 1000))}ms"
            restore, _, marked, _ = conn.execute(SQL_MARK_WAITING, (timeout_ms, hi, lo)).fetchone()
            conn.execute(SQL_WAIT_CLAIM, (key,))
        except psycopg.errors.LockNotAvailable:
            raise busy from None
        except psycopg.errors.DeadlockDetected:
            raise InstanceBusyError(
                f"{instance_id}: waiting for its claim would deadlock with another process "
                "(claims must be taken in a fixed order)"
            ) from None
        except psycopg.Error as exc:
            self._link.drop()
            raise self._link.error(exc, "claim") from None
        finally:
            if not conn.broken:
                try:
                    if restore is not None:  # marked: unmark, as it was
                        conn.execute(SQL_UNMARK, (bool(marked), hi, lo, restore))
                    else:  # the marking statement failed after taking the marker, maybe
                        conn.execute(SQL_UNMARK_FAILED, (hi, lo))
                except psycopg.Error:
                    self._link.drop()
        self._held.add(key)
        return key

    def release_at_commit(self, token: int) -> None:
        """On the store's session: its next single-write commit unlocks ``token`` after its
        ``COMMIT``, in the same round trip (``PostgresStore.unlock_at_commit``)."""
        if self._store is not None and token in self._held:
            self._store.unlock_at_commit(token)

    def release(self, token: int) -> None:
        """Drop a claim taken by ``acquire``/``try_acquire`` (never raises)."""
        if token not in self._held:
            return
        self._held.discard(token)
        if self._store is not None:
            self._store.forget_claimed()
            if self._store.unlocked_at_commit(token):
                return  # the commit's round trip released it
        link = self._link
        if not link.is_open:
            return  # the session is gone, and its locks with it
        try:
            link.connection().execute(SQL_RELEASE, (token,))
        except self._psycopg.Error:
            link.drop()

    def release_many(self, tokens: list[int]) -> None:
        """Drop many claims (a bulk call's) in one round trip (never raises)."""
        held = [t for t in tokens if t in self._held]
        if not held:
            return
        self._held.difference_update(held)
        if self._store is not None:
            self._store.forget_claimed()
        link = self._link
        if not link.is_open:
            return
        try:
            if self._held:
                link.connection().execute(SQL_RELEASE_MANY, (held,))
            else:  # all this session holds (waiting markers are only held inside acquire)
                link.connection().execute(SQL_RELEASE_ALL)
        except self._psycopg.Error:
            link.drop()

    def anyone_waiting(self) -> bool:
        """Whether another caller waits for any claim this object holds.

        A "no" is reused for ``WAIT_CHECK_INTERVAL`` (one round trip per interval at most,
        not one per step of a group commit). One lock test when nobody waits for any claim
        (``ANYONE_WAITS``), then one per claim held.

        Raises:
            StorageError: the server cannot be reached.
        """
        if not self._held or time.monotonic() < self._nobody_waits_until:
            return False
        waiting = bool(self._run("claim check", SQL_ANYONE_WAITS, ())) and self._waited(
            list(self._held)
        )
        if not waiting:
            self._nobody_waits_until = time.monotonic() + WAIT_CHECK_INTERVAL
        return waiting

    def waited_for(self, token: int) -> bool:
        """Whether another caller waits for the claim ``token`` stands for.

        Raises:
            StorageError: the server cannot be reached.
        """
        return self._waited([token])

    def _waited(self, keys: list[int]) -> bool:
        his, los = zip(*(_halves(k) for k in keys), strict=True)
        return bool(self._run("claim check", SQL_WAITED, (list(his), list(los))))

    def is_locked(self, instance_id: str) -> bool:
        """Whether some session (this one included) holds the instance's claim right now.

        Raises:
            StorageError: the server cannot be reached.
        """
        key = claim_key(instance_id)
        if key in self._held:
            return True
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        return bool(
            self._run("claim check", SQL_IS_LOCKED, (unsigned >> 32, unsigned & 0xFFFFFFFF))
        )

    def hold_daemon_lock(self) -> bool:
        """Always granted: any number of daemons, on any number of hosts, serve one database."""
        return True

    def close(self) -> None:
        """Release every claim (by ending the session; a store's session: by releasing them)
        and close (idempotent)."""
        if self._store is None:
            self._held.clear()
            self._link.close()
        elif self._held:
            self.release_many(list(self._held))
