"""The daemon's dispatcher: which due instances go to which idle worker, and when to read again.

Theory of operation
-------------------
Sans-I/O, in h11's shape: the daemon (``durajobs_daemon.py``) reads the database, talks to its
worker processes and reads the clocks; it tells a ``Dispatcher`` what happened, with the
monotonic time ``now``, takes the batches to send from ``assignments`` and sleeps until
``next_wakeup``. A read is ``begin_read`` (how many rows to read), then ``on_due`` with the rows
(or ``on_read_failed``). Workers are keys the daemon chooses (its pids).

* **Batching.** Only idle workers get a batch, and due work is spread evenly over them. A batch
  holds as many instances as the jobs' recent step times (a moving average per job, from the
  workers' reports) fit in ``BATCH_SECONDS``, at most ``BATCH_MAX`` and ``BATCH_BYTES`` of ids:
  fast steps share a commit and a round trip, a slow one delays few others. A step whose time
  is not known (a job not timed yet, a suspect) goes alone: nothing waits behind it while
  another worker may be free.
* **Backoff.** An instance claimed by another process waits ``BUSY_BACKOFF`` (doubling; a
  wake-up retries it at once), one whose batch failed in the database ``ERROR_BACKOFF``, one
  that ran and is still due at the same step (stuck), or whose step killed two workers,
  ``STUCK_BACKOFF``. A delay doubles while the reason stays the same and starts over with a
  new reason; it is forgotten once the instance is no longer due. A failed read backs off on
  ``ERROR_BACKOFF`` too.
* **Reclaim gap.** An instance whose step just committed is not handed out again for
  ``RECLAIM_GAP``, so a client waiting for its claim gets in between two steps.
* **Lost workers.** A dead worker's instances are due again at once. If it died in a step it
  had announced (or its batch held one instance), that instance's crashes are counted (the
  second backs it off); otherwise the batch's instances become suspects, each handed out
  alone until it has run once, so a step that keeps killing workers is found.
* **Pacing.** A read that a client's wake-up asks for (or that a worker's ``done`` asks for
  while wake-ups came during its batch) is not made sooner than ``WAKE_WINDOW`` after the
  last hand-out: a daemon that keeps up with a stream of sends still hands them out, and its
  workers commit them, in groups. Alarms, a ``done`` while due work waits (a backlog) and a
  wake-up a window after the last hand-out are read at once. With nothing due and nothing
  waiting there is no wake-up at all (``next_wakeup`` is ``None``); while every worker is busy
  neither, as nothing could be handed out: the first ``done`` asks for the read.
* **Flow control** (``durajobs.flow``). A worker reports the due steps it held back for their
  job's limits; the job is then *held*: left out of the reads (so it never crowds out other
  jobs) until its rate budget refills (the time the worker reported: one wake-up, no polling)
  or, short of a slot, until a step of the job ends here, a wake-up comes (another process
  committed) or ``SLOT_RECHECK`` passes (a slot freed on another host sends no word). A job
  with ``concurrency=N`` never has more than N steps handed out here at once. When more is
  due than idle workers take, the daemon's ``order`` says who goes first (higher ``priority``
  with aging, ``durajobs.core.flow.prioritized``; then the earliest due).
* **Spread** (``spread=True``: a database several daemons serve, PostgreSQL). Daemons on other
  hosts read the same due rows, earliest first: with a backlog their workers would all try the
  same instances' claims and lose most of them to each other. Once a worker reports at least
  ``SPREAD_BUSY`` instances claimed elsewhere in one batch (one hot instance a client holds is
  not another daemon), and for ``SPREAD_MEMORY`` after, a read takes up to ``SPREAD_ROWS_MAX``
  more rows, and when they are more than the idle workers take, the batches start at a random
  place (``pick``) within the ``SPREAD`` times what they take at the head: each daemon works
  on its own part of the backlog, and the earliest row is in each read's batches with a
  chance of one in ``SPREAD`` at least. The daemon also counts the daemons listening for the
  database's wake-ups now and then (``on_daemons``): with others, reads are spread from the
  first, before any claim is lost. Not with priorities (``order``), whose order is the point.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import attrs

__all__ = ["Backoff", "Batch", "Dispatcher", "DueRow", "StepReport"]

BATCH_MAX = 128  # instances per batch, at most
BATCH_SECONDS = 0.01  # of the jobs' recent step times per batch
BATCH_BYTES = 32 * 1024  # of instance ids per batch (and of step reports per message)
# (first delay, cap) in seconds, per reason
BUSY_BACKOFF = (0.05, 2.0)  # an instance claimed by another process
STUCK_BACKOFF = (1.0, 60.0)  # due, ran, changed nothing (should not happen); killed workers
ERROR_BACKOFF = (0.5, 30.0)  # the database failed
RECLAIM_GAP = 0.025  # a client retries a claim every 20 ms at most: let it in between steps
WAKE_WINDOW = 0.005
SLOT_RECHECK = 1.0  # a job held for want of a slot is read again after this at the latest
SPREAD = 4  # while spread, batches start at random within this many times what they take
SPREAD_BUSY = 2  # busy instances in one batch that start the spread
SPREAD_MEMORY = 1.0  # seconds such a batch keeps the reads spread
SPREAD_ROWS_MAX = 1024  # more rows a spread read takes, at most
BUSY = "claimed by another process"


class DueRow(Protocol):
    """What the dispatcher reads of a due row (the store's ``Instance`` has these)."""

    @property
    def instance_id(self) -> str: ...
    @property
    def job(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def due_at(self) -> float | None: ...


class StepReport(NamedTuple):
    """One committed step, as its worker reports it (a tuple: it crosses the worker's channel
    as a list, for every step, without attrs' ``astuple``).

    ``outcome``: ``ok``, ``retry`` (failed, a retry is scheduled), ``failed`` (failed, no
    retry: handled or skipped), ``exhausted``, ``parked``, ``terminated``, ``skipped``.
    ``step``: the step number it committed as; ``lateness_ms``: how long after its alarm's due
    time its handlers started (due steps only).
    """

    instance_id: str
    outcome: str
    attempt: int
    duration_ms: float | None
    error: str | None
    step: int | None = None
    lateness_ms: float | None = None

    @property
    def job(self) -> str:
        """The job's name (the instance id is ``kind:job:id``)."""
        return self.instance_id.split(":", 2)[1]


@attrs.frozen
class Batch:
    """Instances for one worker: id -> the step it is due at; ``due_at``: the latest alarm in
    it (wall clock, as stored: a batch is handed out a little early and waits for it)."""

    steps: Mapping[str, int]
    due_at: float


@attrs.define
class Backoff:
    """When to try again; ``retry_at=None``: now (the delay is kept, to double)."""

    retry_at: float | None
    delay: float
    why: str

    def again(self, policy: tuple[float, float], why: str, now: float) -> Backoff:
        """The next backoff for ``why``: double this one's delay (up to the policy's cap)
        while the reason is the same, else the policy's first delay."""
        delay = min(self.delay * 2, policy[1]) if why == self.why else policy[0]
        return Backoff(now + delay, delay, why)


@attrs.define
class _Worker:
    batch: dict[str, int] | None = None  # None: idle
    dispatched_at: float = -math.inf  # when its batch was handed out
    timing_out: bool = False  # recording a timeout, not running steps


class Dispatcher:
    """The daemon's policy, driven by events and the monotonic time (see the module's doc).

    ``note(level, text)`` receives the lines worth logging (a ``logging`` level); ``limits``
    are the jobs' ``concurrency``; ``order(rows, wall)`` puts due rows in the order they
    should go out (``None``: as read, earliest due first). ``spread``: other daemons may
    serve the database (the module's doc); ``pick(n)`` then chooses where among the first
    ``n`` due rows the batches start while reads are spread (a number in ``range(n)``; by
    default at random).
    """

    def __init__(
        self,
        note: Callable[[int, str], None] | None = None,
        *,
        limits: Mapping[str, int] | None = None,
        order: Callable[[list[DueRow], float], list[DueRow]] | None = None,
        spread: bool = False,
        pick: Callable[[int], int] | None = None,
    ) -> None:
        self._note = note or (lambda _level, _text: None)
        self.spread = spread
        self._pick = pick or random.Random().randrange
        self._spread_until = -math.inf  # reads are spread till then (``SPREAD``)
        self._others = False  # other daemons serve the database (``on_daemons``)
        self.limits = dict(limits or {})  # job -> concurrency
        # (due rows, wall time) -> the rows in the order they should go out (priorities)
        self._order = order
        # job -> (until, for a slot): held by flow control, left out of the reads till then
        self.holds: dict[str, tuple[float, bool]] = {}
        self._workers: dict[int, _Worker] = {}
        self._assigned: list[tuple[int, Batch]] = []  # decided by on_due, not taken yet
        self.backoff: dict[str, Backoff] = {}
        self.read_error: Backoff | None = None  # the last read failed
        self._ran_at: dict[str, int] = {}  # instance id -> step a worker ran it at (stuck check)
        self._crashes: dict[str, int] = {}  # instance id -> workers it killed in a row
        self._suspects: set[str] = set()  # handed out alone until each has run once
        self._recent: dict[str, float] = {}  # instance id -> when its last step committed
        self._held_until: float | None = None  # when an instance held back by RECLAIM_GAP frees
        self.step_seconds: dict[str, float] = {}  # job -> moving average of its step time
        self._read_needed = True
        self._read_at: float | None = None  # a paced read
        self._dispatched_at = -math.inf  # the last hand-out
        self._woken_at = -math.inf  # the last wake-up
        self._backlog = False  # the last read left due work undispatched
        self.stopping = False

    # -- workers -------------------------------------------------------------------------------

    def add_worker(self, worker: int) -> None:
        """A new worker, idle."""
        self._workers[worker] = _Worker()

    def batch_of(self, worker: int) -> Mapping[str, int] | None:
        """What ``worker`` runs (id -> step), ``None`` when it is idle."""
        return self._workers[worker].batch

    def busy(self) -> int:
        """How many workers run a batch."""
        return sum(1 for w in self._workers.values() if w.batch is not None)

    def can_read(self) -> bool:
        """Whether a read could hand anything out: not stopping, and a worker is idle."""
        return not self.stopping and any(w.batch is None for w in self._workers.values())

    # -- reading the database ------------------------------------------------------------------

    def begin_read(self, now: float) -> int:
        """A read of the due rows starts: returns how many to read (enough to fill every idle
        worker past what is in flight or backing off). Backoffs that are over become eligible."""
        self._read_needed, self._read_at, self._held_until = False, None, None
        for job in [j for j, (until, _) in self.holds.items() if until <= now]:
            del self.holds[job]
        skip = {i for w in self._workers.values() if w.batch is not None for i in w.batch}
        for instance_id, backoff in self.backoff.items():
            if backoff.retry_at is not None and backoff.retry_at <= now:
                backoff.retry_at = None  # its time has come: eligible from this read on
                self._ran_at.pop(instance_id, None)  # hand it out once, as the note said
            if backoff.retry_at is not None:
                skip.add(instance_id)
        # Free at t + RECLAIM_GAP, the sum next_wakeup waits for (now - t could be a hair less).
        for instance_id in [i for i, t in self._recent.items() if t + RECLAIM_GAP <= now]:
            del self._recent[instance_id]
        idle = max(1, sum(1 for w in self._workers.values() if w.batch is None))
        more = min((SPREAD - 1) * idle * BATCH_MAX, SPREAD_ROWS_MAX) if self._spreading(now) else 0
        return len(skip) + idle * BATCH_MAX + more + 1

    def on_read_failed(self, now: float, error: str) -> None:
        """The read failed: read again after a backoff."""
        self.read_error = (self.read_error or Backoff(None, 0.0, "")).again(
            ERROR_BACKOFF, "read", now
        )
        self._note(
            logging.ERROR,
            f"reading the database failed (retrying in {self.read_error.delay:g}s): {error}",
        )

    def held_jobs(self) -> set[str]:
        """The jobs flow control holds: the next read leaves them out."""
        return set(self.holds)

    def on_due(
        self, rows: Sequence[DueRow], now: float, *, complete: bool, wall: float | None = None
    ) -> None:
        """The due rows, earliest first (``complete``: every due row, not a first part):
        decide the batches of the idle workers (``assignments`` hands them out). ``wall``:
        the wall-clock time, for the priorities' aging (rows' ``due_at`` are wall times)."""
        self.read_error = None
        in_flight = {i for w in self._workers.values() if w.batch is not None for i in w.batch}
        candidates: list[DueRow] = []
        for row in rows:
            instance_id = row.instance_id
            backoff = self.backoff.get(instance_id)
            if instance_id in in_flight or (backoff is not None and backoff.retry_at is not None):
                continue
            if row.job in self.holds:
                continue
            if self._ran_at.get(instance_id) == row.step:
                self._back_off(instance_id, STUCK_BACKOFF, "ran but is still due", now)
                continue
            committed_at = self._recent.get(instance_id)
            if committed_at is not None:
                free_at = committed_at + RECLAIM_GAP
                self._held_until = min(self._held_until or free_at, free_at)
                continue
            candidates.append(row)
        if complete:  # forget what is no longer due
            due_now = {row.instance_id for row in rows}
            for table in (self.backoff, self._ran_at, self._crashes):
                for instance_id in [i for i in table if i not in due_now]:
                    del table[instance_id]
            self._suspects &= due_now
        if self._order is not None and wall is not None:
            candidates = self._order(candidates, wall)
        waiting = len(candidates)
        if self.limits:
            candidates = self._within_limits(candidates)
        idle = [key for key, w in self._workers.items() if w.batch is None]
        plan = self._plan(candidates, idle)
        taken = sum(len(batch) for _, batch, _ in plan)
        if 0 < taken < len(candidates) and self._spreading(now):
            window = min(len(candidates), SPREAD * taken)
            start = self._pick(window)
            candidates = candidates[start:window] + candidates[:start] + candidates[window:]
            plan = self._plan(candidates, idle)
            taken = sum(len(batch) for _, batch, _ in plan)
        for worker, batch, due_at in plan:
            self._workers[worker].batch = batch
            self._assigned.append((worker, Batch(batch, due_at)))
        self._backlog = taken < waiting or not complete

    def _within_limits(self, rows: list[DueRow]) -> list[DueRow]:
        """``rows`` less the steps of jobs with ``concurrency`` beyond what may run here at
        once besides the steps in flight (each counted, though a batch runs them in turn)."""
        running: dict[str, int] = {}
        for worker in self._workers.values():
            for instance_id in worker.batch or ():
                job = instance_id.split(":", 2)[1]
                running[job] = running.get(job, 0) + 1
        kept = []
        for row in rows:
            limit = self.limits.get(row.job)
            if limit is not None:
                if running.get(row.job, 0) >= limit:
                    continue
                running[row.job] = running.get(row.job, 0) + 1
            kept.append(row)
        return kept

    def _plan(
        self, rows: Sequence[DueRow], idle: Sequence[int]
    ) -> list[tuple[int, dict[str, int], float]]:
        """``rows`` cut into one batch per idle worker, in order: (worker, batch, due time)."""
        if not idle:
            return []
        per_worker = min(BATCH_MAX, -(-len(rows) // len(idle)))
        taken = 0
        plan = []
        for worker in idle:
            batch: dict[str, int] = {}
            size, due_at, seconds = 0, 0.0, 0.0
            while taken < len(rows) and len(batch) < per_worker and size < BATCH_BYTES:
                row = rows[taken]
                took = self.step_seconds.get(row.job)
                if row.instance_id in self._suspects:
                    took = None  # a suspect runs alone
                if batch and (took is None or seconds + took > BATCH_SECONDS):
                    break  # enough work for one batch
                taken += 1
                batch[row.instance_id] = row.step
                size += len(row.instance_id) + 3
                due_at = max(due_at, row.due_at or 0.0)
                if took is None:
                    break
                seconds += took
            if not batch:
                break
            plan.append((worker, batch, due_at))
        return plan

    def assignments(self, now: float) -> list[tuple[int, Batch]]:
        """The batches the last ``on_due`` decided, each for an idle worker; taking them means
        they are handed out at ``now``."""
        assigned, self._assigned = self._assigned, []
        for worker, _ in assigned:
            self._dispatched_at = self._workers[worker].dispatched_at = now
        return assigned

    # -- events --------------------------------------------------------------------------------

    def on_steps(self, reports: Iterable[StepReport], now: float) -> None:
        """Steps a worker committed (before its batch is done, or with it)."""
        for report in reports:
            instance_id = report.instance_id
            hold = self.holds.get(report.job)
            if hold is not None and hold[1]:
                del self.holds[report.job]  # a step of it ended here: its slot is free
            self._recent[instance_id] = now
            self._crashes.pop(instance_id, None)
            self._suspects.discard(instance_id)
            if report.duration_ms is not None:
                took = report.duration_ms / 1000
                average = self.step_seconds.get(report.job, took)
                self.step_seconds[report.job] = 0.8 * average + 0.2 * took

    def on_done(
        self,
        worker: int,
        reports: Iterable[StepReport],
        now: float,
        *,
        busy: Collection[str] = (),
        error: str | None = None,
        held: Mapping[str, float | None] | None = None,
    ) -> None:
        """``worker`` finished its batch: ``reports`` of its last steps, the instances another
        process held (``busy``), those flow control held back (``held``: id -> the monotonic
        time its job's budget refills, ``None`` when it waits for a slot), or the ``error``
        that failed the batch. It is idle again."""
        self.on_steps(reports, now)
        held = held or {}
        for instance_id, until in held.items():
            job = instance_id.split(":", 2)[1]
            self.holds[job] = (now + SLOT_RECHECK, True) if until is None else (until, False)
        state = self._workers[worker]
        batch, state.batch = state.batch or {}, None
        for instance_id in busy:
            self._back_off(instance_id, BUSY_BACKOFF, BUSY, now)
        if self.spread and len(busy) >= SPREAD_BUSY:
            self._spread_until = now + SPREAD_MEMORY
        if error is not None:
            for instance_id in batch:
                self._back_off(instance_id, ERROR_BACKOFF, error, now)
        elif not state.timing_out:
            for instance_id, step in batch.items():
                if instance_id not in busy and instance_id not in held:
                    self._ran_at[instance_id] = step
        state.timing_out = False
        if self._backlog or self._woken_at < state.dispatched_at:
            self._read_needed = True  # more is due than was handed out, or nothing was sent since
        else:
            self._paced_read(now)  # clients keep sending: gather their work for a window

    def on_daemons(self, count: int) -> None:
        """``count`` daemons (this one included) serve the database now: with others, reads
        are spread (where ``spread``)."""
        self._others = self.spread and count > 1

    def _spreading(self, now: float) -> bool:
        return self._order is None and (self._others or now < self._spread_until)

    def on_lost(
        self, worker: int, now: float, *, crashed: bool = True, current: str | None = None
    ) -> None:
        """``worker`` is gone; its instances are due again. ``crashed``: it died running its
        batch (not killed on purpose), in step ``current`` if it had announced one."""
        batch = self._workers.pop(worker).batch
        self._read_needed = True
        if not crashed:
            return
        if current is None and batch is not None and len(batch) == 1:
            (current,) = batch
        if current is not None:
            crashes = self._crashes[current] = self._crashes.get(current, 0) + 1
            if crashes > 1:  # the step keeps killing workers: do not loop on it
                self._back_off(current, STUCK_BACKOFF, "its worker died", now)
        elif batch:
            # Which step killed it is not known (only steps with a timeout are announced):
            # the batch's instances go out one by one until each has run once.
            self._suspects.update(batch)

    def assign_time_out(self, worker: int, instance_id: str) -> None:
        """``worker`` (idle, new) records the timeout of ``instance_id``'s step: busy till done."""
        state = self._workers[worker]
        state.batch, state.timing_out = {instance_id: -1}, True

    def on_wake(self, now: float) -> None:
        """A client set an alarm: instances claimed elsewhere are tried now; a paced read."""
        if self.stopping:
            return
        for backoff in self.backoff.values():
            if backoff.why == BUSY:
                backoff.retry_at = now  # the other process may have finished: try now
        for job in [j for j, (_, slot) in self.holds.items() if slot]:
            del self.holds[job]  # ... and given its slot back
        self._woken_at = now
        self._paced_read(now)

    def on_alarm(self) -> None:
        """An alarm is due (or the daemon must re-read for another reason): read at once."""
        self._read_needed = True

    def on_stop(self) -> None:
        """The daemon stops: no more reads, no more batches."""
        self.stopping = True

    def _paced_read(self, now: float) -> None:
        """Read at once, or ``WAKE_WINDOW`` after the last hand-out if that is later."""
        at = self._dispatched_at + WAKE_WINDOW
        if now >= at:
            self._read_needed = True
        elif self._read_at is None or at < self._read_at:
            self._read_at = at

    def _back_off(
        self, instance_id: str, policy: tuple[float, float], why: str, now: float
    ) -> None:
        previous = self.backoff.get(instance_id)
        backoff = self.backoff[instance_id] = (previous or Backoff(None, 0.0, "")).again(
            policy, why, now
        )
        if previous is None or previous.why != why:
            level = logging.DEBUG if policy is BUSY_BACKOFF else logging.WARNING
            self._note(level, f"{instance_id}: {why}; trying again in {backoff.delay:g}s")

    # -- when to read --------------------------------------------------------------------------

    def next_wakeup(self, now: float) -> float | None:
        """When the daemon should read next (``now`` or earlier: at once); ``None``: only when
        an event says so (nothing waits, or no worker is idle)."""
        if not self.can_read():
            return None
        if self._read_needed:
            return now
        times = [b.retry_at for b in self.backoff.values() if b.retry_at is not None]
        error_retry = None if self.read_error is None else self.read_error.retry_at
        times.extend(t for t in (error_retry, self._held_until, self._read_at) if t is not None)
        times.extend(until for until, _ in self.holds.values())
        return min(times, default=None)

    def should_read(self, now: float) -> bool:
        """Whether the daemon should read the due rows now."""
        wakeup = self.next_wakeup(now)
        return wakeup is not None and wakeup <= now
