"""What both SQL stores give flow control (``StepStore``'s pause and rate primitives).

Two small tables, created by schema migration 4 -> 5 of each store:

* ``paused (target, at)``: a paused job (its name) or instance (its id). Due reads skip an
  instance whose id or job is there (``sql.Statements.due`` and friends), so a paused job's
  alarms stay stored but never come due to anyone, and a daemon sleeps through them; the
  table is empty on most databases, and then the test costs one probe of it per read.
* ``flow_buckets (job, tokens, at)``: each rate-limited job's token bucket. A step takes a
  token in one write transaction that reads the row locked (PostgreSQL ``FOR UPDATE``; SQLite
  has one writer), so every process and host draws from one budget; the arithmetic is the
  pure ``durajobs.core.flow.take``.

A mixin of ``sql.SqlStore``'s subclasses: it uses their primitives (``_rows``,
``_transaction``, ``_changed``) and their ``dialect``; ``_lock_row`` is what a store appends to
a SELECT that must lock the row it reads.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, NamedTuple

from durajobs.core.flow import Rate, next_token, take
from durajobs.stores.sql import Dialect, Read

__all__ = ["FLOW_TABLES", "FlowSql"]

# The DDL of migration 4 -> 5, per store: (SQLite, PostgreSQL).
FLOW_TABLES: tuple[tuple[str, ...], tuple[str, ...]] = (
    (
        "CREATE TABLE paused (target TEXT PRIMARY KEY NOT NULL, at REAL NOT NULL) WITHOUT ROWID",
        "CREATE TABLE flow_buckets (job TEXT PRIMARY KEY NOT NULL, tokens REAL NOT NULL, "
        "at REAL NOT NULL) WITHOUT ROWID",
    ),
    (
        'CREATE TABLE paused (target text COLLATE "C" PRIMARY KEY, at double precision NOT NULL)',
        'CREATE TABLE flow_buckets (job text COLLATE "C" PRIMARY KEY, '
        "tokens double precision NOT NULL, at double precision NOT NULL)",
    ),
)


class _Statements(NamedTuple):
    pause: str = "INSERT INTO paused (target, at) VALUES (?, ?) ON CONFLICT (target) DO NOTHING"
    resume: str = "DELETE FROM paused WHERE target = ?"
    paused: str = "SELECT target FROM paused"
    is_paused: str = "SELECT count(*) FROM paused WHERE target = ? OR target = ?"
    bucket: str = "SELECT tokens, at FROM flow_buckets WHERE job = ?"
    put_bucket: str = (
        "INSERT INTO flow_buckets (job, tokens, at) VALUES (?, ?, ?) "
        "ON CONFLICT (job) DO UPDATE SET tokens = excluded.tokens, at = excluded.at"
    )
    new_bucket: str = (
        "INSERT INTO flow_buckets (job, tokens, at) VALUES (?, ?, ?) ON CONFLICT (job) DO NOTHING"
    )


@functools.cache
def _rendered(dialect: Dialect) -> _Statements:
    return _Statements(*(dialect.params(text) for text in _Statements()))


class FlowSql:
    """Pause and the rate budget, over a ``SqlStore``'s primitives (see the module's doc)."""

    dialect: ClassVar[Dialect]
    _lock_row: ClassVar[str] = ""

    # the SqlStore primitives (declared here for the type checker)
    _rows: Any
    _transaction: Any
    _changed: Any

    @property
    def _flow(self) -> _Statements:
        return _rendered(self.dialect)

    def set_paused(self, target: str, paused: bool, now: float) -> bool:
        """Pause (``paused``) or resume ``target``, a job's name or an instance id; returns
        whether that changed anything.

        Raises:
            StorageError: the transaction failed.
        """
        flow = self._flow

        def body(cur: Any) -> bool:
            if paused:
                cur.execute(flow.pause, (target, now))
            else:
                cur.execute(flow.resume, (target,))
            return bool(self._changed(cur))

        def probe(read: Read) -> bool:
            return bool(read(flow.is_paused, (target, target))[0][0]) == paused

        result: bool = self._transaction("pause" if paused else "resume", body, probe)
        return result

    def paused_targets(self) -> frozenset[str]:
        """Every paused job name and instance id.

        Raises:
            StorageError: the database cannot be read.
        """
        return frozenset(str(row[0]) for row in self._rows(self._flow.paused))

    def is_paused(self, instance_id: str, job: str) -> bool:
        """Whether the instance or its job is paused.

        Raises:
            StorageError: the database cannot be read.
        """
        return bool(self._rows(self._flow.is_paused, (instance_id, job))[0][0])

    def take_token(self, job: str, rate: Rate, now: float) -> float | None:
        """Take one token of ``job``'s bucket (``rate``) at ``now``: ``None`` when granted,
        else the time a token will be there (nothing taken).

        Raises:
            StorageError: the transaction failed (nothing taken, or the outcome is unknown).
        """
        flow = self._flow

        def body(cur: Any) -> float | None:
            cur.execute(flow.new_bucket, (job, float(rate.count), now))
            tokens, at = cur.execute(flow.bucket + self._lock_row, (job,)).fetchall()[0]
            granted, tokens, at = take(float(tokens), float(at), now, rate)
            cur.execute(flow.put_bucket, (job, tokens, at))
            return None if granted else next_token(tokens, at, rate)

        # Outcome unknown: count the token as taken (the budget errs on the slow side).
        result: float | None = self._transaction("rate budget", body, lambda read: True)
        return result
