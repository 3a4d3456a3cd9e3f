"""The daemon's dispatcher (``durajobs.dispatch``), driven by events and a ``FakeClock``: no
processes, no database. Workers are numbers; rows are plain values with the fields it reads."""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any

import attrs
import pytest

from durajobs import FakeClock
from durajobs.dispatch import (
    BATCH_MAX,
    BUSY_BACKOFF,
    ERROR_BACKOFF,
    RECLAIM_GAP,
    SPREAD,
    SPREAD_MEMORY,
    SPREAD_ROWS_MAX,
    STUCK_BACKOFF,
    WAKE_WINDOW,
    Dispatcher,
    StepReport,
)


@attrs.frozen
class Row:
    instance_id: str
    step: int = 1
    due_at: float | None = 0.0

    @property
    def job(self) -> str:
        return self.instance_id.split(":", 2)[1]


def rows(*names: str) -> list[Row]:
    """``"fast:1"`` -> the row of ``task:fast:1``."""
    return [Row(f"task:{name}") for name in names]


def ok(instance_id: str, ms: float | None = 1.0) -> StepReport:
    return StepReport(instance_id, "ok", 1, ms, None)


class Harness:
    def __init__(self, workers: int = 1, **options: Any) -> None:
        self.clock = FakeClock(1000.0)
        self.notes: list[tuple[int, str]] = []
        self.dispatch = Dispatcher(
            note=lambda level, text: self.notes.append((level, text)), **options
        )
        for worker in range(workers):
            self.dispatch.add_worker(worker)

    @property
    def now(self) -> float:
        return self.clock.time()

    def read(self, due: list[Row], *, complete: bool = True) -> dict[int, list[str]]:
        """One read of ``due``; the batches handed out, by worker."""
        self.dispatch.begin_read(self.now)
        self.dispatch.on_due(due, self.now, complete=complete)
        return {w: list(batch.steps) for w, batch in self.dispatch.assignments(self.now)}

    def done(self, worker: int, *, busy: tuple[str, ...] = (), ms: float | None = 1.0) -> None:
        batch = self.dispatch.batch_of(worker) or {}
        reports = [ok(i, ms) for i in batch if i not in busy]
        self.dispatch.on_done(worker, reports, self.now, busy=busy)

    def time(self, job: str, seconds: float) -> None:
        """Let the dispatcher know ``job``'s steps take ``seconds``."""
        self.dispatch.on_steps([ok(f"task:{job}:warm-up", seconds * 1000)], self.now)
        self.clock.advance(RECLAIM_GAP)  # the warm-up instance is not due anyway

    def wakeup_in(self) -> float | None:
        wakeup = self.dispatch.next_wakeup(self.now)
        return None if wakeup is None else round(wakeup - self.now, 6)


# -- batching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timed", "workers", "due", "batches"),
    [
        # a job not timed yet: each step alone, one per idle worker; the rest waits
        ({}, 2, ["new:1", "new:2", "new:3"], {0: ["new:1"], 1: ["new:2"]}),
        # fast steps share a batch, spread evenly over the idle workers
        ({"fast": 0.001}, 2, ["fast:1", "fast:2", "fast:3", "fast:4"],
         {0: ["fast:1", "fast:2"], 1: ["fast:3", "fast:4"]}),
        ({"fast": 0.001}, 1, ["fast:1", "fast:2", "fast:3"], {0: ["fast:1", "fast:2", "fast:3"]}),
        # a batch holds BATCH_SECONDS of recent step times: a 6 ms job, one per batch
        ({"slow": 0.006}, 1, ["slow:1", "slow:2"], {0: ["slow:1"]}),
        ({"mid": 0.004}, 1, ["mid:1", "mid:2", "mid:3"], {0: ["mid:1", "mid:2"]}),
        # an untimed step ends a batch of timed ones, and starts none
        ({"fast": 0.001}, 1, ["fast:1", "new:1", "fast:2"], {0: ["fast:1"]}),
        ({"fast": 0.001}, 2, ["new:1", "fast:1", "fast:2"],
         {0: ["new:1"], 1: ["fast:1", "fast:2"]}),
        # one idle worker, nothing due
        ({}, 1, [], {}),
    ],
)  # fmt: skip
def test_batches(
    timed: dict[str, float], workers: int, due: list[str], batches: dict[int, list[str]]
) -> None:
    harness = Harness(workers)
    for job, seconds in timed.items():
        harness.time(job, seconds)
    assert harness.read(rows(*due)) == {w: [f"task:{i}" for i in b] for w, b in batches.items()}


def test_a_batch_holds_at_most_batch_max() -> None:
    harness = Harness(1)
    harness.time("tiny", 0.0)
    (batch,) = harness.read(rows(*(f"tiny:{i}" for i in range(BATCH_MAX + 5)))).values()
    assert len(batch) == BATCH_MAX
    assert harness.wakeup_in() is None  # the worker is busy: nothing could be handed out
    harness.done(0)
    assert harness.wakeup_in() == 0  # a backlog: read again at once


def test_the_latest_alarm_of_a_batch_is_its_due_time() -> None:
    harness = Harness(1)
    harness.time("fast", 0.001)
    harness.dispatch.begin_read(harness.now)
    due = [Row("task:fast:1", due_at=5.0), Row("task:fast:2", due_at=7.0)]
    harness.dispatch.on_due(due, harness.now, complete=True)
    ((_, batch),) = harness.dispatch.assignments(harness.now)
    assert batch.steps == {"task:fast:1": 1, "task:fast:2": 1}
    assert batch.due_at == 7.0


def test_only_idle_workers_get_a_batch() -> None:
    harness = Harness(2)
    assert harness.read(rows("new:1")) == {0: ["task:new:1"]}
    assert harness.read(rows("new:1", "new:2", "new:3")) == {1: ["task:new:2"]}  # 1 in flight
    assert harness.dispatch.busy() == 2
    assert harness.dispatch.next_wakeup(harness.now) is None
    harness.done(0)
    assert harness.read(rows("new:3")) == {0: ["task:new:3"]}


def test_step_times_are_a_moving_average() -> None:
    harness = Harness(1)
    harness.dispatch.on_steps([ok("task:j:1", 20.0)], harness.now)
    assert harness.dispatch.step_seconds["j"] == pytest.approx(0.020)
    harness.dispatch.on_steps([ok("task:j:2", 10.0), ok("task:j:3", None)], harness.now)
    assert harness.dispatch.step_seconds["j"] == pytest.approx(0.8 * 0.020 + 0.2 * 0.010)


# -- backoff -----------------------------------------------------------------------------------


def test_busy_backoff_doubles_up_to_its_cap_and_starts_over_when_no_longer_due() -> None:
    harness = Harness(1)
    delays = []
    for _ in range(8):
        assert harness.read(rows("a:1")) == {0: ["task:a:1"]}
        harness.done(0, busy=("task:a:1",))  # another process holds its claim
        delays.append(harness.dispatch.backoff["task:a:1"].delay)
        assert harness.read(rows("a:1")) == {}  # waits for its backoff
        harness.clock.advance(delays[-1])
    first, cap = BUSY_BACKOFF
    assert delays == [min(first * 2**i, cap) for i in range(8)]
    assert delays[-1] == cap
    # not due any more (a complete read without it): forgotten; next time the first delay
    harness.read([])
    harness.read(rows("a:1"))
    harness.done(0, busy=("task:a:1",))
    assert harness.dispatch.backoff["task:a:1"].delay == first
    assert [level for level, _ in harness.notes] == [logging.DEBUG, logging.DEBUG]


def test_a_new_reason_starts_the_backoff_over() -> None:
    harness = Harness(1)
    harness.read(rows("a:1"))
    harness.done(0, busy=("task:a:1",))
    harness.clock.advance(BUSY_BACKOFF[0])
    harness.read(rows("a:1"))
    harness.dispatch.on_done(0, [], harness.now, error="StorageError: disk I/O error")
    backoff = harness.dispatch.backoff["task:a:1"]
    assert (backoff.delay, backoff.why) == (ERROR_BACKOFF[0], "StorageError: disk I/O error")
    assert harness.read(rows("a:1")) == {}
    assert harness.wakeup_in() == ERROR_BACKOFF[0]
    assert harness.notes[-1] == (
        logging.WARNING,
        "task:a:1: StorageError: disk I/O error; trying again in 0.5s",
    )


def test_a_wake_up_retries_busy_instances_at_once() -> None:
    harness = Harness(1)
    harness.read(rows("a:1"))
    harness.done(0, busy=("task:a:1",))
    assert harness.read(rows("a:1")) == {}
    assert harness.wakeup_in() == BUSY_BACKOFF[0]
    harness.clock.advance(WAKE_WINDOW)
    harness.dispatch.on_wake(harness.now)
    assert harness.wakeup_in() == 0
    assert harness.read(rows("a:1")) == {0: ["task:a:1"]}


def test_a_step_that_ran_and_is_still_due_at_the_same_step_is_stuck() -> None:
    harness = Harness(1)
    harness.read(rows("a:1"))
    harness.dispatch.on_done(0, [], harness.now)  # ran, committed nothing
    assert harness.read(rows("a:1")) == {}
    assert harness.notes == [
        (logging.WARNING, "task:a:1: ran but is still due; trying again in 1s")
    ]
    assert harness.wakeup_in() == STUCK_BACKOFF[0]
    harness.clock.advance(STUCK_BACKOFF[0])
    assert harness.read(rows("a:1")) == {0: ["task:a:1"]}  # once more, as the note said
    harness.dispatch.on_done(0, [], harness.now)
    assert harness.read(rows("a:1")) == {}
    assert harness.dispatch.backoff["task:a:1"].delay == 2 * STUCK_BACKOFF[0]


def test_a_step_that_moved_the_instance_on_is_not_stuck() -> None:
    harness = Harness(1)
    harness.read(rows("a:1"))
    harness.done(0)  # committed: at step 2 now
    harness.clock.advance(RECLAIM_GAP)
    assert harness.read([Row("task:a:1", step=2)]) == {0: ["task:a:1"]}
    assert harness.notes == []


def test_a_failed_read_backs_off() -> None:
    harness = Harness(1)
    delays = []
    for _ in range(3):
        harness.dispatch.begin_read(harness.now)
        harness.dispatch.on_read_failed(harness.now, "StorageError: locked")
        delays.append(harness.wakeup_in())
        harness.clock.advance(delays[-1] or 0.0)
    assert delays == [ERROR_BACKOFF[0], 2 * ERROR_BACKOFF[0], 4 * ERROR_BACKOFF[0]]
    assert harness.notes[0] == (
        logging.ERROR, "reading the database failed (retrying in 0.5s): StorageError: locked"
    )  # fmt: skip
    harness.read([])
    assert harness.wakeup_in() is None


# -- reclaim gap, lost workers, suspects -------------------------------------------------------


def test_an_instance_that_just_committed_waits_for_the_reclaim_gap() -> None:
    harness = Harness(1)
    harness.read(rows("a:1"))
    harness.done(0)
    assert harness.read([Row("task:a:1", step=2)]) == {}
    assert harness.wakeup_in() == RECLAIM_GAP
    harness.clock.advance(RECLAIM_GAP)
    assert harness.dispatch.should_read(harness.now)
    assert harness.read([Row("task:a:1", step=2)]) == {0: ["task:a:1"]}


def test_a_lost_worker_s_batch_is_read_again_at_once_its_instances_one_by_one() -> None:
    harness = Harness(2)
    harness.time("fast", 0.001)
    assert harness.read(rows("fast:1", "fast:2", "fast:3", "fast:4")) == {
        0: ["task:fast:1", "task:fast:2"],
        1: ["task:fast:3", "task:fast:4"],
    }
    harness.dispatch.on_steps([ok("task:fast:1")], harness.now)  # committed before it died
    harness.dispatch.on_lost(0, harness.now)
    harness.dispatch.add_worker(2)  # its replacement
    assert harness.wakeup_in() == 0
    harness.clock.advance(RECLAIM_GAP)
    # fast:2 was in the batch of the dead worker and has not run since: a suspect, alone
    assert harness.read(rows("fast:2", "fast:5", "fast:6")) == {2: ["task:fast:2"]}
    harness.done(2)  # it ran: no longer a suspect
    harness.done(1)
    harness.clock.advance(RECLAIM_GAP)
    again = [*rows("fast:5", "fast:6", "fast:7"), Row("task:fast:2", step=2)]
    assert harness.read(again) == {
        1: ["task:fast:5", "task:fast:6"],
        2: ["task:fast:7", "task:fast:2"],
    }


@pytest.mark.parametrize(
    ("batch", "current"),
    [(["new:1"], None), (["fast:1", "fast:2"], "task:fast:2")],
)
def test_a_step_that_kills_two_workers_backs_off(batch: list[str], current: str | None) -> None:
    harness = Harness(1)
    harness.time("fast", 0.001)
    killer = current or f"task:{batch[0]}"
    for worker in (0, 1):
        assert harness.read(rows(*batch)) == {worker: [f"task:{i}" for i in batch]}
        harness.dispatch.on_lost(worker, harness.now, current=current)
        harness.dispatch.add_worker(worker + 1)
    assert set(harness.dispatch.backoff) == {killer}
    assert harness.notes == [(logging.WARNING, f"{killer}: its worker died; trying again in 1s")]


def test_a_worker_killed_on_purpose_leaves_no_suspects() -> None:
    harness = Harness(1)
    harness.time("fast", 0.001)
    harness.read(rows("fast:1", "fast:2"))
    harness.dispatch.on_lost(0, harness.now, crashed=False)
    harness.dispatch.add_worker(1)
    assert harness.read(rows("fast:1", "fast:2")) == {1: ["task:fast:1", "task:fast:2"]}


def test_a_timeout_being_recorded_keeps_its_worker_busy_and_marks_nothing_stuck() -> None:
    harness = Harness(1)
    harness.dispatch.assign_time_out(0, "task:a:1")
    assert harness.dispatch.batch_of(0) == {"task:a:1": -1}
    assert harness.dispatch.next_wakeup(harness.now) is None
    harness.dispatch.on_done(0, [], harness.now)
    assert harness.read(rows("a:1")) == {0: ["task:a:1"]}


# -- pacing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("woken_after", "expected"),
    [(0.001, WAKE_WINDOW - 0.001), (0.004, WAKE_WINDOW - 0.004), (WAKE_WINDOW, 0.0), (1.0, 0.0)],
)
def test_a_wake_up_reads_a_window_after_the_last_hand_out(
    woken_after: float, expected: float
) -> None:
    harness = Harness(2)
    harness.read(rows("new:1"))  # handed out now
    assert harness.wakeup_in() is None  # nothing else waits
    harness.clock.advance(woken_after)
    harness.dispatch.on_wake(harness.now)
    assert harness.wakeup_in() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("backlog", "woken_during_batch", "expected"),
    [
        (True, False, 0.0),  # more was due than handed out: at once
        (False, False, 0.0),  # nothing was sent since the hand-out: at once
        (False, True, WAKE_WINDOW - 0.001),  # clients keep sending: gather for a window
    ],
)
def test_a_done_reads_at_once_or_paced(
    backlog: bool, woken_during_batch: bool, expected: float
) -> None:
    harness = Harness(1)
    harness.read(rows("new:1", "new:2") if backlog else rows("new:1"))
    if woken_during_batch:
        harness.dispatch.on_wake(harness.now)  # within the window: a paced read, worker busy
    harness.clock.advance(0.001)
    harness.done(0)
    assert harness.wakeup_in() == pytest.approx(expected)


def test_alarms_are_read_at_once_wake_ups_a_window_after_the_last_hand_out() -> None:
    harness = Harness(1)
    harness.read(rows())
    harness.dispatch.on_wake(harness.now)
    assert harness.wakeup_in() == 0  # nothing handed out yet: no window
    harness.read(rows("new:1"))
    harness.done(0)
    harness.read(rows())
    harness.dispatch.on_wake(harness.now)
    assert harness.wakeup_in() == WAKE_WINDOW
    harness.dispatch.on_alarm()
    assert harness.wakeup_in() == 0


# -- sleeping ----------------------------------------------------------------------------------


def test_no_wake_up_when_nothing_is_due() -> None:
    harness = Harness(2)
    assert harness.wakeup_in() == 0  # the first read, at start
    assert harness.read([]) == {}
    assert harness.dispatch.next_wakeup(harness.now) is None
    assert not harness.dispatch.should_read(harness.now)
    harness.clock.advance(3600)
    assert harness.dispatch.next_wakeup(harness.now) is None


def test_stopping_asks_for_no_read() -> None:
    harness = Harness(1)
    harness.dispatch.on_stop()
    harness.dispatch.on_alarm()
    harness.dispatch.on_wake(harness.now)
    assert harness.dispatch.next_wakeup(harness.now) is None
    assert not harness.dispatch.can_read()


def _backlog(name: str, n: int = 4 * BATCH_MAX) -> list[Row]:
    return rows(*(f"fast:{name}{k:04}" for k in range(n)))


def test_after_busy_reports_reads_spread_over_the_backlog() -> None:
    """Another daemon reads the same due rows: once a batch reports SPREAD_BUSY instances
    claimed elsewhere, reads take more rows (SPREAD_ROWS_MAX at most) and the batches start
    where ``pick`` says within SPREAD times what the idle workers take (at random: each daemon
    its own part of the backlog), for SPREAD_MEMORY; a backlog that the idle workers take
    whole, and a read after no such report, go earliest first."""
    picks: list[int] = []

    def pick(n: int) -> int:
        picks.append(n)
        return n - 1  # the last of the window: the batch wraps around to the head

    harness = Harness(2, spread=True, pick=pick)
    harness.time("fast", 0.00001)
    assert harness.dispatch.begin_read(harness.now) == 2 * BATCH_MAX + 1
    first = harness.read(_backlog("a", 8 * BATCH_MAX))
    assert first[0][0] == "task:fast:a0000"  # no busy report yet: the head
    harness.done(0, busy=("task:fast:a0000",), ms=0.01)  # one busy instance: a client's
    harness.clock.advance(RECLAIM_GAP)
    # (one worker idle; the other's batch and the busy one are read past)
    assert harness.dispatch.begin_read(harness.now) == len(first[1]) + 1 + BATCH_MAX + 1
    harness.done(1, busy=tuple(first[1][:2]), ms=0.01)  # two: another daemon's
    harness.clock.advance(RECLAIM_GAP)
    more = min((SPREAD - 1) * 2 * BATCH_MAX, SPREAD_ROWS_MAX)
    backoffs = harness.dispatch.backoff.values()
    backing_off = sum(1 for b in backoffs if (b.retry_at or 0) > harness.now)
    assert harness.dispatch.begin_read(harness.now) == backing_off + 2 * BATCH_MAX + more + 1
    due = _backlog("b", 16 * BATCH_MAX)
    batches = harness.read(due)
    assert picks == [SPREAD * 2 * BATCH_MAX]  # within SPREAD times what the two workers take
    start = SPREAD * 2 * BATCH_MAX - 1
    assert batches[0] == [f"task:fast:b{start:04}"] + [f"task:fast:b{k:04}" for k in range(127)]
    assert batches[1] == [f"task:fast:b{k:04}" for k in range(127, 255)]
    for worker in (0, 1):
        harness.done(worker, ms=0.01)
    harness.clock.advance(RECLAIM_GAP)
    small = _backlog("c", 2 * BATCH_MAX)
    assert harness.read(small)[0][0] == "task:fast:c0000"  # all fit: in order
    assert len(picks) == 1
    for worker in (0, 1):
        harness.done(worker, ms=0.01)
    harness.clock.advance(SPREAD_MEMORY - 2 * RECLAIM_GAP)
    assert harness.dispatch.begin_read(harness.now) == 2 * BATCH_MAX + 1  # the memory is over
    assert harness.read(_backlog("d"))[0][0] == "task:fast:d0000"
    assert len(picks) == 1


def test_a_spread_keeps_the_earliest_rows_of_slow_steps_near_the_front() -> None:
    """A job whose steps go one per batch: the window is SPREAD batches, not the read, so the
    earliest due row waits a few reads at most, not until the backlog is gone."""
    harness = Harness(1, spread=True, pick=lambda n: n - 1)
    harness.time("slow", 1.0)  # (longer than BATCH_SECONDS: one step per batch)
    harness.read(rows("slow:x0", "slow:x1"))
    harness.done(0, busy=("task:slow:x0", "task:slow:y0"), ms=1000.0)
    harness.clock.advance(RECLAIM_GAP)
    due = rows(*(f"slow:z{k:04}" for k in range(500)))
    assert harness.read(due) == {0: [f"task:slow:z{SPREAD - 1:04}"]}


def test_with_other_daemons_reads_are_spread_from_the_first() -> None:
    """The daemon counted the daemons listening on the database: with others, the first read
    of a backlog is spread already, before any claim is lost to them; alone, it is not."""
    picks: list[int] = []
    harness = Harness(1, spread=True, pick=lambda n: picks.append(n) or 0)
    harness.time("fast", 0.00001)
    harness.dispatch.on_daemons(1)
    assert harness.dispatch.begin_read(harness.now) == BATCH_MAX + 1
    harness.dispatch.on_daemons(2)
    more = min((SPREAD - 1) * BATCH_MAX, SPREAD_ROWS_MAX)
    assert harness.dispatch.begin_read(harness.now) == BATCH_MAX + more + 1
    harness.dispatch.on_due(_backlog("a"), harness.now, complete=True)
    assert picks == [SPREAD * BATCH_MAX]
    unspread = Harness(1, pick=lambda n: 1 // 0)  # (spread=False: SQLite)
    unspread.dispatch.on_daemons(2)
    assert unspread.dispatch.begin_read(unspread.now) == BATCH_MAX + 1


def test_no_spread_where_one_daemon_serves_the_database() -> None:
    harness = Harness(1, pick=lambda n: 1 // 0)  # (spread=False: SQLite)
    harness.time("fast", 0.00001)
    harness.read(_backlog("a"))
    harness.done(0, busy=("task:fast:a0000", "task:fast:a0001"), ms=0.01)
    harness.clock.advance(RECLAIM_GAP)
    assert harness.dispatch.begin_read(harness.now) == 2 + BATCH_MAX + 1
    assert harness.read(_backlog("b"))[0][0] == "task:fast:b0000"


def test_priorities_keep_their_order_whatever_the_busy_reports() -> None:
    harness = Harness(1, order=lambda due, wall: list(due), spread=True, pick=lambda n: 1 // 0)
    harness.time("fast", 0.00001)
    harness.read(_backlog("a"))
    harness.done(0, busy=("task:fast:a0000", "task:fast:a0001"), ms=0.01)
    harness.clock.advance(RECLAIM_GAP)
    assert harness.dispatch.begin_read(harness.now) == 2 + BATCH_MAX + 1
    harness.dispatch.on_due(_backlog("b"), harness.now, complete=True, wall=0.0)
    assert next(iter(harness.dispatch.assignments(harness.now)[0][1].steps)) == "task:fast:b0000"


def test_the_dispatcher_imports_no_io() -> None:
    source = Path(__file__).parent.parent / "durajobs" / "dispatch.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0] if not node.level else "durajobs")
    forbidden = {"os", "time", "socket", "select", "selectors", "signal", "apsw", "psycopg"}
    assert not names & (forbidden | {"durajobs"}), sorted(names)
