"""Per-job concurrency slots as PostgreSQL session-level advisory locks (the ``Slots`` protocol).

A job with ``concurrency=N`` has N slots, each a one-bigint advisory lock keyed by a signed
64-bit hash of ``(job, slot number)``, held on a session of its own (``application_name``
"durajobs slots"; the claims' session releases all its locks at times, these must stay). One
round trip tries the slots in order and takes the first free one. Like a claim it writes
nothing, and the server drops it the moment the holding session ends (kill -9 of the holder:
its slot is free within milliseconds on every host). A slot key sharing an instance claim's
hash is a 2**-64 chance and would only make one of them wait.
"""

from __future__ import annotations

from durajobs.stores.postgres.claims import SessionLocks
from durajobs.stores.postgres.store import signed_hash

__all__ = ["AdvisorySlots", "slot_keys"]

SLOTS_NAME = "durajobs slots"
# The first key of the list whose lock is granted (the Limit stops evaluating at that row).
SQL_TAKE = "SELECT k FROM unnest(%s::bigint[]) AS k WHERE pg_try_advisory_lock(k) LIMIT 1"
SQL_RELEASE = "SELECT pg_advisory_unlock(%s::bigint)"
# Read-only (inspection): held slots among the keys, by anyone.
SQL_IN_USE = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
    "AND (classid::bigint, objid::bigint) IN (SELECT * FROM unnest(%s::bigint[], %s::bigint[])) "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)

_KEYS: dict[tuple[str, int], list[int]] = {}


def slot_keys(job: str, limit: int) -> list[int]:
    """The advisory lock keys of ``job``'s ``limit`` slots, in the order they are tried."""
    keys = _KEYS.get((job, limit))
    if keys is None:
        keys = _KEYS[(job, limit)] = [signed_hash(f"{job}\0slot {i}") for i in range(limit)]
    return keys


class AdvisorySlots(SessionLocks):
    """Slots held by this object's own server session (opened on first use; reopened after
    ``fork()``, the parent's session and its slots staying the parent's).

    Raises:
        StorageError: psycopg is missing or the URL is invalid.
    """

    def __init__(self, location: str, *, connect_timeout: float = 5.0) -> None:
        super().__init__(location, SLOTS_NAME, connect_timeout)

    def try_acquire(self, job: str, limit: int) -> int | None:
        """One of ``job``'s ``limit`` slots: a token for ``release``, or ``None`` if all are
        taken (by any session, this one included).

        Raises:
            StorageError: the server cannot be reached.
        """
        free = [k for k in slot_keys(job, limit) if k not in self._held]
        if not free:
            return None
        row = self._link.run(
            "slot", lambda conn: conn.execute(SQL_TAKE, (free,)).fetchone(), self._connection
        )
        if row is None:
            return None
        key = int(row[0])
        self._held.add(key)
        return key

    def release(self, token: int) -> None:
        """Give a slot back (never raises; a slot lost with its session is simply forgotten)."""
        if token not in self._held:
            return
        self._held.discard(token)
        link = self._link
        if not link.is_open:
            return
        try:
            link.connection().execute(SQL_RELEASE, (token,))
        except self._psycopg.Error:
            link.drop()

    def in_use(self, job: str, limit: int) -> int:
        """How many of ``job``'s slots are held now, by any session (inspection).

        Raises:
            StorageError: the server cannot be reached.
        """
        # pg_locks shows a bigint key as classid = its high half, objid = its low half
        keys = [k & 0xFFFFFFFFFFFFFFFF for k in slot_keys(job, limit)]
        halves = ([k >> 32 for k in keys], [k & 0xFFFFFFFF for k in keys])
        return int(
            self._link.run(
                "slot check",
                lambda conn: conn.execute(SQL_IN_USE, halves).fetchone()[0],
                self._connection,
            )
        )

    def close(self) -> None:
        """Release every slot (by ending the session) and close (idempotent)."""
        self._held.clear()
        self._link.close()
