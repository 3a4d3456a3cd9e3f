"""One suite for every store: the ``Store``/``Claims``/wake contract of ``durajobs.stores.base``.

Each test runs against SQLite (a file in ``tmp_path``) and PostgreSQL (a fresh database on the
session's throwaway cluster, see ``tests/pgserver.py``). Nothing is mocked.
"""

from __future__ import annotations

import os
import random
import selectors
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from durajobs import Continuous, Debounce, FakeClock, Task, every
from durajobs.core.rows import Instance, RejectedWrite
from durajobs.engine import Engine, Hooks
from durajobs.errors import DuplicateEventError, InstanceBusyError
from durajobs.stores import open_claims, open_listener, open_store, open_waker
from durajobs.stores.base import Claims, Store, Write

T0 = 1_700_000_000.0
ROOT = Path(__file__).parent.parent


@attrs.frozen
class Backend:
    """Where one parametrized test keeps its database."""

    kind: str
    location: str

    def store(self, **options: Any) -> Store:
        return open_store(self.location, **options)

    def claims(self) -> Claims:
        return open_claims(self.location)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "jobs.db"))
    return Backend("postgres", request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    opened = backend.store()
    yield opened
    opened.close()


@pytest.fixture
def claims(backend: Backend) -> Iterator[Callable[[], Claims]]:
    made: list[Claims] = []

    def make() -> Claims:
        handle = backend.claims()
        made.append(handle)
        return handle

    yield make
    for handle in made:
        handle.close()


def row(
    instance_id: str,
    step: int,
    *,
    due_at: float | None = None,
    status: str | None = None,
    attempt: int = 1,
    event_count: int = 0,
    state: str | None = '{"n":1}',
) -> Instance:
    kind, job, user_id = instance_id.split(":", 2)
    default_status = {"continuous": "running", "debounce": "debouncing", "task": "active"}[kind]
    return Instance(
        instance_id, kind, job, user_id, status or default_status, state, due_at, due_at, None,
        None, step, attempt, event_count, T0, None, None, step, T0,
    )  # fmt: skip


def write(
    successor: Instance | None,
    expected: int,
    *,
    instance_id: str | None = None,
    records: tuple[Any, ...] = (("job.executed", 1, 1.5, None, None),),
    **extra: Any,
) -> Write:
    iid = instance_id or (successor.instance_id if successor else "")
    _, job, user_id = iid.split(":", 2)
    return Write.step(iid, job, user_id, expected, successor, records, **extra)


C1 = "continuous:tick:a"
C2 = "continuous:tick:b"
D1 = "debounce:batch:a"


# -- load / commit / fence ----------------------------------------------------------------------


def test_schema_is_created_once_and_reopens(backend: Backend) -> None:
    first = backend.store()
    version = first.schema_version()
    assert version >= 2
    first.close()
    again = backend.store()
    assert again.schema_version() == version
    again.close()


def test_commit_is_fenced_on_the_step(store: Store) -> None:
    assert store.load(C1) is None
    assert store.commit([write(row(C1, 1), 0, new=True)], T0, 100) == [True]
    assert store.load(C1) == row(C1, 1)
    # Computed from step 0 again (a stale step): fenced out, nothing changes, no history.
    stale = row(C1, 1, state='{"n":99}')
    assert store.commit([write(stale, 0)], T0 + 1, 100) == [False]
    assert store.load(C1) == row(C1, 1)
    assert len(store.history(C1)) == 1
    assert store.commit([write(row(C1, 2, due_at=T0 + 60), 1)], T0 + 2, 100) == [True]
    loaded = store.load(C1)
    assert loaded is not None
    assert (loaded.step, loaded.due_at) == (2, T0 + 60)
    assert [(h.step, h.event, h.at) for h in store.history(C1)] == [
        (1, "job.executed", T0),
        (2, "job.executed", T0 + 2),
    ]


def test_values_round_trip_exactly(store: Store) -> None:
    odd = Instance(
        C1, "continuous", "tick", "a", "running", '{"s":"é ü \\u0000 ☃"}', 1.0 / 3, T0 + 0.1,
        T0 - 1e-6, "trigger", 2**40, 3, 7, T0, T0 + 0.25, "ValueError: ☃", 1, 1e9 + 0.5,
    )  # fmt: skip
    assert store.commit([write(odd, 0, new=True)], T0, 100) == [True]
    assert store.load(C1) == odd


def test_purge_is_fenced_and_recorded_with_the_next_step(store: Store) -> None:
    store.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    purge = (("job.terminated", 1, None, None, '{"reason":"x"}'),)
    assert store.commit([write(None, 5, instance_id=C1, records=purge)], T0, 100) == [False]
    assert store.load(C1) is not None
    assert store.commit([write(None, 1, instance_id=C1, records=purge)], T0 + 1, 100) == [True]
    assert store.load(C1) is None
    assert store.history(C1)[-1].step == 2
    assert store.last_step(C1) == 2  # a new incarnation numbers on from here


def test_group_commit_applies_each_write_on_its_own_fence(store: Store) -> None:
    store.commit([write(row(C1, 1), 0, new=True), write(row(C2, 1), 0, new=True)], T0, 100)
    result = store.commit(
        [write(row(C1, 2), 1), write(row(C2, 9), 7), write(row("task:t:x", 1), 0, new=True)],
        T0 + 1,
        100,
    )
    assert result == [True, False, True]
    assert [store.load(i).step for i in (C1, C2, "task:t:x")] == [2, 1, 1]  # type: ignore[union-attr]


def test_a_write_the_store_cannot_hold_is_rejected_alone(store: Store) -> None:
    too_big = row(C2, 1)._replace(run_count=2**63)
    with pytest.raises(RejectedWrite) as caught:
        store.commit([write(row(C1, 1), 0, new=True), write(too_big, 0, new=True)], T0, 100)
    assert caught.value.index == 1
    assert store.load(C1) is None  # nothing of the transaction was applied
    assert store.commit([write(row(C1, 1), 0, new=True)], T0, 100) == [True]


@pytest.mark.parametrize("grouped", [False, True])
def test_a_record_no_database_text_can_hold_is_rejected(store: Store, grouped: bool) -> None:
    """A lone surrogate (no UTF-8 for it) in a record: the write is rejected as content, on
    PostgreSQL's single-write path too (it raised UnicodeEncodeError), and nothing applied."""
    bad = (("job.failed", 1, None, "bad \ud800 text", None),)
    writes = [write(row(C1, 1), 0, new=True, records=bad)]
    if grouped:
        writes.insert(0, write(row(C2, 1), 0, new=True))
    with pytest.raises(RejectedWrite) as caught:
        store.commit(writes, T0, 100)
    assert caught.value.index == len(writes) - 1
    assert store.load(C1) is None
    assert store.load(C2) is None
    assert store.commit([write(row(C1, 1), 0, new=True)], T0, 100) == [True]


def _four_rows(store: Store) -> list[str]:
    ids = [f"continuous:tick:g{i}" for i in range(4)]
    assert store.commit([write(row(i, 1), 0, new=True) for i in ids], T0, 100) == [True] * 4
    return ids


def test_a_group_of_updates_fences_each_row_and_records_only_what_applied(store: Store) -> None:
    """The common case of run_due's group commit (PostgreSQL: one statement for the rows and
    one for their records): each row on its own fence, a missing row inserted."""
    a, b, c, d = _four_rows(store)
    store.commit([write(None, 1, instance_id=d)], T0, 100)  # d is purged meanwhile
    two = (("job.executed", 1, 1.5, None, None), ("job.failed", 2, None, "boom", "{}"))
    result = store.commit(
        [write(row(a, 2), 1, records=two), write(row(b, 3), 7), write(row(c, 2), 1),
         write(row(d, 5), 4)],
        T0 + 1, 100,
    )  # fmt: skip
    assert result == [True, False, True, True]
    assert [store.load(i).step for i in (a, b, c, d)] == [2, 1, 2, 5]  # type: ignore[union-attr]
    assert [(h.event, h.step, h.error) for h in store.history(a)][-2:] == [
        ("job.executed", 2, None), ("job.failed", 2, "boom"),
    ]  # fmt: skip
    assert max(h.step for h in store.history(b)) == 1  # the fenced-out write recorded nothing
    assert store.last_step(c) == 2


def test_a_group_of_new_rows_leaves_a_row_made_meanwhile_to_its_fence(store: Store) -> None:
    """send_many of new ids (PostgreSQL: one INSERT for the rows, one for their records): a
    row another process made since the read is not overwritten; the others are made."""
    store.commit([write(row(C2, 1, state='{"n":7}'), 0, new=True)], T0, 100)  # made meanwhile
    task = "task:t:x"
    result = store.commit(
        [write(row(C1, 1), 0, new=True), write(row(C2, 1), 0, new=True),
         write(row(task, 1), 0, new=True)],
        T0 + 1, 100,
    )  # fmt: skip
    assert result == [True, False, True]
    assert store.load(C2).state == '{"n":7}'  # type: ignore[union-attr]
    assert [len(store.history(i)) for i in (C1, C2, task)] == [1, 1, 1]
    assert store.load(task) == row(task, 1)


def test_a_rejected_write_in_a_group_of_updates_is_named(store: Store) -> None:
    a, b, c, _ = _four_rows(store)
    too_big = row(b, 2)._replace(run_count=2**70)
    with pytest.raises(RejectedWrite) as caught:
        store.commit([write(row(a, 2), 1), write(too_big, 1), write(row(c, 2), 1)], T0, 100)
    assert caught.value.index == 1
    assert [store.load(i).step for i in (a, b, c)] == [1, 1, 1]  # type: ignore[union-attr]
    assert store.commit([write(row(a, 2), 1), write(row(c, 2), 1)], T0, 100) == [True, True]


def test_an_atomic_group_of_updates_with_a_fenced_write_applies_nothing(store: Store) -> None:
    from durajobs.core.rows import FencedOut

    a, b, c, _ = _four_rows(store)
    with pytest.raises(FencedOut) as caught:
        store.commit(
            [write(row(a, 2), 1), write(row(b, 2), 1), write(row(c, 9), 8)], T0, 100, atomic=True
        )
    assert caught.value.index == 2
    assert [store.load(i).step for i in (a, b, c)] == [1, 1, 1]  # type: ignore[union-attr]


def test_a_group_of_updates_trims_history_every_32nd_step(store: Store) -> None:
    a, b, _, _ = _four_rows(store)
    for step in range(2, 33):
        assert store.commit(
            [write(row(a, step), step - 1), write(row(b, step), step - 1)], T0 + step, 3
        ) == [True, True]  # fmt: skip
    assert [h.step for h in store.history(a, 100)] == [30, 31, 32]
    assert [h.step for h in store.history(b, 100)] == [30, 31, 32]


def test_an_atomic_commit_is_all_or_nothing(store: Store) -> None:
    from durajobs.core.rows import FencedOut

    store.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    with pytest.raises(FencedOut) as caught:
        store.commit([write(row(C2, 1), 0, new=True), write(row(C1, 9), 8)], T0, 100, atomic=True)
    assert caught.value.index == 1
    assert store.load(C2) is None
    task = "task:t:x"
    store.commit([write(row(task, 1), 0, new=True, key="k")], T0, 100)
    dup = write(row(task, 2), 1, key="k")
    with pytest.raises(FencedOut):
        store.commit([write(row(C2, 1), 0, new=True), dup], T0, 100, atomic=True)
    assert store.load(C2) is None
    assert store.commit([write(row(C2, 1), 0, new=True)], T0, 100, atomic=True) == [True]


def test_a_queue_only_write_queues_like_enqueue(store: Store) -> None:
    queued = Write.enqueue(D1, "batch", "a", '"e"', "k")
    assert store.commit([queued], T0, 100) == [True]
    placeholder = store.load(D1)
    assert placeholder is not None
    assert (placeholder.status, placeholder.due_at) == ("debouncing", T0)
    assert [q.event for q in store.queued(D1)] == ['"e"']
    assert store.has_key(D1, "k", T0)
    with pytest.raises(DuplicateEventError):
        store.commit([queued], T0, 100)
    assert len(store.queued(D1)) == 1


# -- idempotency keys ---------------------------------------------------------------------------


def test_a_duplicate_key_fails_a_single_write_and_changes_nothing(store: Store) -> None:
    store.key_window = 100.0
    task = "task:t:x"
    assert store.commit([write(row(task, 1), 0, new=True, key="k1")], T0, 100) == [True]
    assert store.has_key(task, "k1", T0 + 1)
    assert not store.has_key(task, "k2", T0 + 1)
    with pytest.raises(DuplicateEventError, match="k1"):
        store.commit([write(row(task, 2), 1, key="k1")], T0 + 1, 100)
    assert store.load(task).step == 1  # type: ignore[union-attr]
    assert len(store.history(task)) == 1
    # In a group, the duplicate is reported and the others commit.
    other = "task:t:y"
    result = store.commit(
        [write(row(task, 2), 1, key="k1"), write(row(other, 1), 0, new=True, key="k1")], T0, 100
    )
    assert result == [False, True]
    # A key older than the window may be used again.
    assert not store.has_key(task, "k1", T0 + 200)
    assert store.commit([write(row(task, 2), 1, key="k1")], T0 + 200, 100) == [True]


def test_a_fenced_out_keyed_write_does_not_take_its_key(store: Store) -> None:
    task = "task:t:x"
    store.commit([write(row(task, 1), 0, new=True)], T0, 100)
    assert store.commit([write(row(task, 4), 3, key="k")], T0, 100) == [False]
    assert not store.has_key(task, "k", T0)


# -- the Debounce queue -------------------------------------------------------------------------


def test_enqueue_makes_a_placeholder_due_now_numbered_from_history(store: Store) -> None:
    # A purged earlier incarnation left step 3 in history.
    store.commit([write(row(D1, 2, event_count=1), 0, new=True)], T0, 100)
    store.commit([write(None, 2, instance_id=D1)], T0, 100)
    assert store.load(D1) is None
    count, first, last = store.enqueue(D1, "batch", "a", '"e1"', None, T0 + 5)
    assert (count, first, last) == (1, T0 + 5, T0 + 5)
    placeholder = store.load(D1)
    assert placeholder is not None
    assert (placeholder.status, placeholder.due_at, placeholder.step) == ("debouncing", T0 + 5, 3)
    assert placeholder.event_count == 0
    count, first, last = store.enqueue(D1, "batch", "a", '"e2"', None, T0 + 6)
    assert (count, first, last) == (2, T0 + 5, T0 + 6)
    assert store.load(D1).due_at == T0 + 5  # type: ignore[union-attr]  # never later
    inst, queued = store.load_with_queue(D1)
    assert inst == store.load(D1)
    assert [q.event for q in queued] == ['"e1"', '"e2"']
    assert queued[0].seq < queued[1].seq


def test_enqueue_key_is_checked_and_a_duplicate_stores_nothing(store: Store) -> None:
    store.enqueue(D1, "batch", "a", '"e1"', "k", T0)
    with pytest.raises(DuplicateEventError):
        store.enqueue(D1, "batch", "a", '"e2"', "k", T0)
    assert [q.event for q in store.queued(D1)] == ['"e1"']


def test_enqueue_leaves_a_failed_row_alone(store: Store) -> None:
    failed = row(D1, 4, status="failed", event_count=2)
    store.commit([write(failed, 0, new=True)], T0, 100)
    store.enqueue(D1, "batch", "a", '"e"', None, T0 + 1)
    assert store.load(D1) == failed
    assert len(store.queued(D1)) == 1


def test_a_debounce_commit_with_events_queued_meanwhile_is_due_now(store: Store) -> None:
    store.commit([write(row(D1, 1, due_at=T0 + 60, event_count=1), 0, new=True)], T0, 100)
    store.enqueue(D1, "batch", "a", '"late"', None, T0 + 1)
    seq = store.queued(D1)[0].seq
    # The step saw nothing queued (consumed=0) and sets a later alarm: the queue wins.
    store.commit([write(row(D1, 2, due_at=T0 + 60, event_count=1), 1)], T0 + 2, 100)
    assert store.load(D1).due_at == T0 + 2  # type: ignore[union-attr]
    # A step that folds the queued event (consumed=seq) keeps its own alarm.
    store.commit([write(row(D1, 3, due_at=T0 + 60, event_count=2), 2, consumed=seq)], T0 + 3, 100)
    assert store.load(D1).due_at == T0 + 60  # type: ignore[union-attr]
    assert store.queued(D1) == []
    # A retry pending (attempt 2) keeps its backoff even with events queued.
    store.enqueue(D1, "batch", "a", '"x"', None, T0 + 4)
    retrying = row(D1, 4, due_at=T0 + 90, attempt=2, event_count=2)
    store.commit([write(retrying, 3)], T0 + 5, 100)
    assert store.load(D1).due_at == T0 + 90  # type: ignore[union-attr]


def test_requeue_is_stored_and_makes_the_row_due(store: Store) -> None:
    store.commit([write(row(D1, 1, due_at=None), 0, new=True, requeue='"back"')], T0, 100)
    loaded = store.load(D1)
    assert loaded is not None
    assert loaded.due_at is None  # a new row is inserted as computed
    store.commit([write(row(D1, 2, due_at=None), 1, requeue='"again"')], T0 + 1, 100)
    assert store.load(D1).due_at == T0 + 1  # type: ignore[union-attr]
    assert [q.event for q in store.queued(D1)] == ['"back"', '"again"']


def test_a_fenced_out_debounce_write_changes_no_queue(store: Store) -> None:
    store.commit([write(row(D1, 1, event_count=1), 0, new=True)], T0, 100)
    store.enqueue(D1, "batch", "a", '"e"', None, T0)
    seq = store.queued(D1)[0].seq
    assert store.commit([write(row(D1, 9), 8, consumed=seq, requeue='"r"')], T0, 100) == [False]
    assert [q.event for q in store.queued(D1)] == ['"e"']
    assert store.commit([write(None, 8, instance_id=D1, consumed=seq)], T0, 100) == [False]
    assert [q.event for q in store.queued(D1)] == ['"e"']


def test_a_purge_revives_events_queued_during_the_flush(store: Store) -> None:
    store.commit([write(row(D1, 1, event_count=1), 0, new=True)], T0, 100)
    store.enqueue(D1, "batch", "a", '"seen"', None, T0 + 1)
    seen = store.queued(D1)[0].seq
    store.enqueue(D1, "batch", "a", '"during flush"', None, T0 + 2)
    flushed = (("debounce.flushed", 1, 2.0, None, None),)
    purge = write(None, 1, instance_id=D1, consumed=seen, records=flushed)
    assert store.commit([purge], T0 + 3, 100) == [True]
    revived = store.load(D1)
    assert revived is not None
    assert (revived.status, revived.due_at, revived.step, revived.event_count) == (
        "debouncing", T0 + 3, 2, 0,
    )  # fmt: skip
    assert [q.event for q in store.queued(D1)] == ['"during flush"']
    # With nothing queued, a purge purges.
    last = store.queued(D1)[0].seq
    assert store.commit([write(None, 2, instance_id=D1, consumed=last)], T0 + 4, 100) == [True]
    assert store.load(D1) is None
    assert store.last_step(D1) == 3


def test_bulk_reads(store: Store) -> None:
    store.commit([write(row(D1, 3, event_count=1), 0, new=True)], T0, 100)
    store.enqueue(D1, "batch", "a", '"q"', None, T0)
    purged = write(None, 0, instance_id=C2, new=True)  # leaves history at step 1
    store.commit([write(row(C1, 1), 0, new=True), purged], T0, 100)
    found = store.load_many([D1, C1, "task:t:none"], with_queue=True)
    assert found[C1] == (row(C1, 1), [])
    assert found["task:t:none"] == (None, [])
    assert found[D1][0] == store.load(D1)
    assert [q.event for q in found[D1][1]] == ['"q"']
    assert store.load_many([D1])[D1][1] == []
    assert store.last_steps([D1, C1, C2, "task:t:none"]) == {D1: 3, C1: 1, C2: 1}


# -- alarms -------------------------------------------------------------------------------------


def test_due_ids_are_earliest_first_and_limited(store: Store) -> None:
    ids = [f"task:t:{i}" for i in range(20)]
    times = [T0 + random.Random(i).uniform(-50, 50) for i in range(20)]
    store.commit(
        [write(row(i, 1, due_at=t), 0, new=True) for i, t in zip(ids, times, strict=True)]
        + [write(row("task:t:idle", 1), 0, new=True)],
        T0,
        100,
    )
    expected = [i for t, i in sorted(zip(times, ids, strict=True)) if t <= T0]
    assert store.due_ids(T0, 100) == expected
    assert store.due_ids(T0, 3) == expected[:3]
    assert [r.instance_id for r in store.due(T0, 100)] == expected
    assert store.next_due() == [min(times)]
    assert store.next_due(2) == sorted(times)[:3]
    assert store.count_due(T0) == (len(expected), min(times))
    after = store.next_alarm_after(T0)
    assert after == min(t for t in times if t > T0)


def test_no_alarm_at_all(store: Store) -> None:
    assert store.due_ids(T0, 10) == []
    assert store.next_due() == []
    assert store.count_due(T0) == (0, None)
    assert store.next_alarm_after(T0) is None


# -- history ------------------------------------------------------------------------------------


def test_history_is_trimmed_every_32nd_step(store: Store) -> None:
    store.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    for step in range(2, 33):
        store.commit([write(row(C1, step), step - 1)], T0 + step, 10)
    assert [h.step for h in store.history(C1, 100)] == list(range(23, 33))


def test_prune_deletes_old_history_and_keys(store: Store) -> None:
    task = "task:t:x"
    store.commit([write(row(task, 1), 0, new=True, key="old")], T0, 100)
    for step in range(2, 6):
        store.commit([write(row(task, step), step - 1, key=f"k{step}")], T0 + step * 10, 100)
    store.prune(T0 + 25, T0 + 35)
    assert [h.step for h in store.history(task)] == [3, 4, 5]
    assert not store.has_key(task, "old", T0)
    assert not store.has_key(task, "k3", T0)
    assert store.has_key(task, "k4", T0)
    assert store.load(task).step == 5  # type: ignore[union-attr]
    store.prune(T0 + 1000, T0 + 1000)
    assert store.history(task) == []
    store.prune(T0 + 1000, T0 + 1000)  # an empty history is fine


def test_inspection_reads(store: Store) -> None:
    store.commit(
        [
            write(row(C1, 1, due_at=T0 + 10), 0, new=True),
            write(row(C2, 1, due_at=T0 - 10), 0, new=True),
            write(row("task:t:x", 1), 0, new=True),
            write(
                row("task:t:y", 1, status="failed"),
                0,
                new=True,
                records=(("job.failed", 1, 3.0, "boom", None),),
            ),
        ],
        T0,
        100,
    )
    ids = [i.instance_id for i in store.list_instances()]
    assert ids == [C2, C1, "task:t:x", "task:t:y"]
    assert [i.instance_id for i in store.list_instances(limit=2, offset=1)] == [C1, "task:t:x"]
    assert [i.instance_id for i in store.list_instances(offset=3)] == ["task:t:y"]
    assert [i.instance_id for i in store.list_instances(kind="task")] == ["task:t:x", "task:t:y"]
    assert [i.instance_id for i in store.list_instances(status="failed")] == ["task:t:y"]
    assert [i.instance_id for i in store.list_instances(due_before=T0)] == [C2]
    assert store.count_by_status() == [
        ("continuous", "tick", "running", 2),
        ("task", "t", "active", 1),
        ("task", "t", "failed", 1),
    ]
    assert store.history_counts(T0) == (4, 1, 4)
    assert store.history_counts(T0 + 1) == (0, 0, 0)
    recent = store.recent_history(2)
    assert [h.instance_id for h in recent] == ["task:t:x", "task:t:y"]
    since = store.history_since(recent[0].id)
    assert [h.instance_id for h in since] == ["task:t:y"]
    assert since[0].error == "boom"
    assert since[0].duration_ms == 3.0


def test_a_readonly_store_reads(backend: Backend) -> None:
    writer = backend.store()
    writer.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    reader = backend.store(readonly=True)
    assert reader.load(C1) == row(C1, 1)
    reader.close()
    writer.close()


# -- claims -------------------------------------------------------------------------------------


def test_claims_exclude_each_other_and_refuse_reentry(claims: Callable[[], Claims]) -> None:
    a, b = claims(), claims()
    token = a.try_acquire(C1)
    assert token is not None
    assert a.try_acquire(C1) is None  # re-entrant use is refused
    assert b.try_acquire(C1) is None
    assert b.is_locked(C1)
    assert a.try_acquire(C2) is not None  # another instance is free
    with pytest.raises(InstanceBusyError, match="wait_timeout"):
        b.acquire(C1, 0.05)
    a.release(token)
    assert not b.is_locked(C1)
    token_b = b.acquire(C1, 1.0)
    assert a.try_acquire(C1) is None
    b.release(token_b)
    assert a.try_acquire(C1) is not None


def test_release_many_frees_exactly_those_claims(claims: Callable[[], Claims]) -> None:
    mine, other = claims(), claims()
    ids = [f"task:t:{i}" for i in range(20)]
    tokens = [mine.try_acquire(i) for i in ids]
    assert None not in tokens
    mine.release_many([t for t in tokens[:10] if t is not None])
    assert [other.try_acquire(i) is not None for i in ids] == [True] * 10 + [False] * 10
    mine.release_many([t for t in tokens[10:] if t is not None])
    assert all(other.try_acquire(i) is not None for i in ids[10:])


def test_a_waiting_caller_is_not_starved(claims: Callable[[], Claims]) -> None:
    holder, waiter = claims(), claims()
    token = holder.try_acquire(C1)
    assert token is not None
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(waiter.acquire(C1, 10.0)))
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not holder.waited_for(token):
            assert time.monotonic() < deadline, "the waiter never announced itself"
            time.sleep(0.001)
        assert holder.anyone_waiting()
        holder.release(token)
        # The stepping process yields: it cannot take the claim back while the waiter waits.
        assert holder.try_acquire(C1) is None
    finally:
        thread.join(10)
    assert got
    waiter.release(got[0])
    assert holder.try_acquire(C1) is not None


HOLDER = textwrap.dedent(
    """
    import sys, time
    from durajobs.stores import open_claims
    claims = open_claims(sys.argv[1])
    assert claims.try_acquire(sys.argv[2]) is not None
    print("held", flush=True)
    time.sleep(60)
    """
)


def test_a_killed_holder_releases_its_claim_at_once(
    backend: Backend, claims: Callable[[], Claims]
) -> None:
    mine = claims()
    mine.try_acquire("task:t:warmup")  # connect first: measure the release, not the connect
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, backend.location, C1], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"held"
        assert mine.try_acquire(C1) is None
        proc.kill()
        killed = time.monotonic()
        proc.wait()
        while (token := mine.try_acquire(C1)) is None:
            assert time.monotonic() - killed < 1.0, "the claim outlived its process by 1 s"
            time.sleep(0.001)
        assert token is not None
    finally:
        proc.kill()
        proc.wait()


# -- wake-ups -----------------------------------------------------------------------------------


def test_a_poke_reaches_a_listener(backend: Backend, store: Store) -> None:
    listener = open_listener(backend.location)
    waker = open_waker(backend.location, store)
    try:
        listener.drain()
        with selectors.DefaultSelector() as selector:
            selector.register(listener.fileno(), selectors.EVENT_READ)
            assert selector.select(0) == []
            waker.poke()
            assert selector.select(5.0), "no wake-up arrived"
            assert listener.drain() >= 1
            assert listener.drain() == 0
    finally:
        waker.close()
        listener.close()


def test_a_poke_with_nobody_listening_is_harmless(backend: Backend, store: Store) -> None:
    waker = open_waker(backend.location, store)
    waker.poke()
    waker.poke()
    waker.close()


# -- the engine on each store -------------------------------------------------------------------


@attrs.define
class Count:
    n: int = 0


def bump(ctx: Any) -> None:
    ctx.state = Count(ctx.state.n + 1)


def keep_last(ctx: Any) -> Any:
    return ctx.event


FLUSHED: list[Any] = []


def remember(ctx: Any) -> None:
    FLUSHED.append((ctx.state, ctx.event_count))


def task_event(event: Any, ctx: Any) -> None:
    ctx.state = Count((ctx.state.n if ctx.state else 0) + event)
    ctx.schedule("1 minute")


def task_execute(ctx: Any) -> None:
    ctx.state = Count(ctx.state.n * 10)


REGISTRY = {
    "tick": Continuous(state=Count, schedule=every("1 minute"), execute=bump),
    "batch": Debounce(event=int, execute=remember, flush_after="30s", max_events=3),
    "order": Task(state=Count, event=int, on_event=task_event, execute=task_execute),
}


@pytest.fixture
def engine(backend: Backend, store: Store) -> Iterator[tuple[Engine, FakeClock]]:
    from datetime import UTC, datetime

    clock = FakeClock(datetime.fromtimestamp(T0, UTC))
    handle = backend.claims()
    built = Engine(
        store, handle, REGISTRY, clock=clock, wait_timeout=5.0, history_limit=100,  # type: ignore[arg-type]
        hooks=Hooks(waker=open_waker(backend.location, store)),  # type: ignore[arg-type]
    )  # fmt: skip
    yield built, clock
    handle.close()


def test_engine_runs_every_kind_on_the_store(engine: tuple[Engine, FakeClock]) -> None:
    from durajobs.client import ContinuousClient, DebounceClient, TaskClient

    eng, clock = engine
    FLUSHED.clear()
    tick = ContinuousClient(lambda: eng, "tick", REGISTRY["tick"])
    batch = DebounceClient(lambda: eng, "batch", REGISTRY["batch"])
    order = TaskClient(lambda: eng, "order", REGISTRY["order"])
    assert tick.start("a", Count()).created
    assert tick.get_state("a") == Count(1)
    clock.advance("1 minute")
    assert eng.run_due() == 1
    assert tick.get_state("a") == Count(2)
    batch.add("a", 1)
    batch.add("a", 2)
    assert batch.status("a").event_count == 2
    clock.advance("30s")
    eng.run_due()
    assert FLUSHED == [(2, 2)]
    assert batch.status("a").status == "not_found"
    order.send("o", 5, key="k")
    with pytest.raises(DuplicateEventError):
        order.send("o", 5, key="k")
    clock.advance("1 minute")
    eng.run_due()
    assert order.get_state("o") == Count(50)
    assert "task.scheduled" in [h.event for h in eng.store.history("task:order:o")]


# -- dashboard reads ----------------------------------------------------------------------------


def _page_fixture(store: Store) -> None:
    writes = [
        write(row("task:t:a1", 1, due_at=T0 + 3), 0, new=True),
        write(row("task:t:a2", 1, due_at=T0 + 1), 0, new=True),
        write(row("task:t:b1", 1), 0, new=True),
        write(row("task:u:a1", 1, status="failed")._replace(last_error="Boom_50%"), 0, new=True),
        write(row("continuous:t:a1", 1, due_at=T0 + 1), 0, new=True),
        write(row("task:t:Z", 1), 0, new=True),
        write(row("task:t:é", 1), 0, new=True),
    ]
    store.commit(writes, T0, 100)


def test_keyset_pages_walk_every_instance_once_in_byte_order(store: Store) -> None:
    _page_fixture(store)
    page: Any = store.page_instances
    everything = [i.instance_id for i in page(limit=100)]
    assert everything == sorted(everything, key=lambda s: s.encode())
    walked: list[str] = []
    after = None
    while chunk := page(limit=2, after_id=after):
        walked += [i.instance_id for i in chunk]
        after = chunk[-1].instance_id
    assert walked == everything
    assert [i.instance_id for i in page(kind="task", job="t")] == [
        "task:t:Z", "task:t:a1", "task:t:a2", "task:t:b1", "task:t:é",
    ]  # fmt: skip
    by_job = [i.instance_id for i in page(job="t")]
    assert by_job == [
        "continuous:t:a1", "task:t:Z", "task:t:a1", "task:t:a2", "task:t:b1", "task:t:é",
    ]  # fmt: skip
    assert [i.instance_id for i in page(job="t", after_id="task:t:a1")] == [
        "task:t:a2", "task:t:b1", "task:t:é",
    ]  # fmt: skip
    assert [i.instance_id for i in page(status="failed")] == ["task:u:a1"]
    assert [i.instance_id for i in page(id_prefix="task:t:a")] == ["task:t:a1", "task:t:a2"]
    assert [i.instance_id for i in page(user_id_prefix="a")] == [
        "continuous:t:a1", "task:t:a1", "task:t:a2", "task:u:a1",
    ]  # fmt: skip
    assert [i.instance_id for i in page(error_contains="boom_5")] == ["task:u:a1"]
    assert [i.instance_id for i in page(error_contains="0%")] == ["task:u:a1"]
    assert page(error_contains="x%") == []
    alarms = [(i.due_at, i.instance_id) for i in page(order="alarm")]
    assert alarms == [(T0 + 1, "continuous:t:a1"), (T0 + 1, "task:t:a2"), (T0 + 3, "task:t:a1")]
    rest = page(order="alarm", after_id="continuous:t:a1", after_due=T0 + 1)
    assert [i.instance_id for i in rest] == ["task:t:a2", "task:t:a1"]
    with pytest.raises(ValueError, match="order"):
        page(order="nope")


def test_the_change_token_moves_when_another_connection_writes(
    backend: Backend, store: Store
) -> None:
    token = store.change_token
    first = token()
    store.load(C1)
    store.due_ids(T0, 10)
    assert token() == first
    writer = backend.store()
    writer.commit([write(row(C1, 1), 0, new=True)], T0, 100)
    writer.close()
    assert token() != first


def test_history_buckets_count_steps_and_failures(store: Store) -> None:
    buckets = store.history_buckets
    assert buckets(T0, 10.0, 3) == [(0, 0)] * 3
    failed = (("job.failed", 1, 1.0, "x", None),)
    two = (("job.executed", 1, 1.0, None, None), ("task.scheduled", 1, None, None, None))
    store.commit([write(row(C1, 1), 0, new=True, records=two)], T0 + 1, 100)
    store.commit([write(row(C1, 2), 1, records=failed)], T0 + 12, 100)
    store.commit([write(row(C2, 1), 0, new=True, records=failed)], T0 + 15, 100)
    store.commit([write(row(C2, 2), 1)], T0 + 40, 100)
    assert buckets(T0, 10.0, 3) == [(1, 0), (2, 2), (0, 0)]
