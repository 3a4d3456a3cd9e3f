"""The jobs the crash state machine drives, and a plain-Python reference model of them.

Three small jobs, one of each kind, whose handlers log every call and fail on demand:

- ``c`` (Continuous): ``every("10s")``, ``Retry(max_attempts=2, fixed 5 s)`` (exhausted:
  terminate); its state counts successful runs.
- ``d`` (Debounce): a list-accumulating reducer, ``flush_after`` 10 s, ``max_events`` 3, no retry
  (a failed flush parks the batch); ``execute`` records the batch it saw.
- ``t`` (Task): ``on_event`` counts events and schedules ``execute`` 10 s ahead; ``execute``
  counts executions; ``on_idle`` counts idles; no retry (a failed execute parks the task).

Each job has ``concurrency=1`` (flow control, issue 21): the machine holds a job's one slot in
the "other process" while ``run_due`` runs (none of that job's steps may run then), and pauses
and resumes jobs and instances (stored: part of the world; a paused one runs no alarm step).

The model (``World`` + ``Sim``) says, for one operation on one world, the successor world, the
result or error the call must give, and the handler calls it makes. A ``World`` holds what the
database must hold (per instance: the kind's counters, state, alarm, status, queued events;
the accepted idempotency keys) plus two logs of the user's view that the database does not
keep: the debounce events acknowledged so far and the batches committed by flushes (the
"durable side log"), with the events a ``clear`` discarded. ``World.check()`` says that no
acknowledged event was lost or duplicated: each is in exactly one committed batch, the current
batch, the queue, or was discarded, in order.

Time is virtual: every ``now`` is ``T0 + whole seconds``, so the grid arithmetic is exact.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from durajobs import Continuous, Debounce, Jobs, Retry, Task, every
from durajobs.errors import (
    DuplicateEventError,
    ExecutionError,
    InstanceNotFoundError,
    InvalidStateError,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PERIOD = 10.0
RETRY_DELAY = 5.0
MAX_ATTEMPTS = 2
FLUSH_AFTER = 10.0
MAX_EVENTS = 3
TASK_DELAY = 10.0
IDS = ("a", "b")


# -- the jobs ---------------------------------------------------------------------------------


class Controls:
    """What the handlers read and write: failure flags (per instance id) and a call log."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.fail: set[str] = set()  # the next execute of these instances raises
        self.fail_event: set[str] = set()  # the next event handler (task on_event, debounce
        # reducer) of these instances raises
        self.calls: list[tuple[str, str, Any]] = []

    def failing(self, flags: set[str], instance_id: str) -> bool:
        if instance_id in flags:
            flags.discard(instance_id)
            return True
        return False


CONTROLS = Controls()


class Boom(RuntimeError):
    """The failure a handler was told to have."""


@attrs.define
class Runs:
    n: int = 0


@attrs.define
class Order:
    events: int = 0
    executes: int = 0
    idles: int = 0


def c_execute(ctx: Any) -> None:
    CONTROLS.calls.append(("c.execute", ctx.instance_id, ctx.state.n))
    if CONTROLS.failing(CONTROLS.fail, ctx.instance_id):
        raise Boom(f"{ctx.instance_id}: told to fail")
    ctx.state = Runs(ctx.state.n + 1)


def d_reduce(ctx: Any) -> list[int]:
    CONTROLS.calls.append(("d.on_event", ctx.instance_id, ctx.event))
    if CONTROLS.failing(CONTROLS.fail_event, ctx.instance_id):
        raise Boom(f"{ctx.instance_id}: told to fail")
    return [*(ctx.state or []), ctx.event]


def d_execute(ctx: Any) -> None:
    CONTROLS.calls.append(("d.execute", ctx.instance_id, tuple(ctx.state)))
    if CONTROLS.failing(CONTROLS.fail, ctx.instance_id):
        raise Boom(f"{ctx.instance_id}: told to fail")


def t_on_event(event: int, ctx: Any) -> None:
    CONTROLS.calls.append(("t.on_event", ctx.instance_id, event))
    if CONTROLS.failing(CONTROLS.fail_event, ctx.instance_id):
        raise Boom(f"{ctx.instance_id}: told to fail")
    state = ctx.state or Order()
    ctx.state = Order(state.events + 1, state.executes, state.idles)
    ctx.schedule("10s")


def t_execute(ctx: Any) -> None:
    CONTROLS.calls.append(("t.execute", ctx.instance_id, None))
    if CONTROLS.failing(CONTROLS.fail, ctx.instance_id):
        raise Boom(f"{ctx.instance_id}: told to fail")
    ctx.state = attrs.evolve(ctx.state, executes=ctx.state.executes + 1)


def t_on_idle(ctx: Any) -> None:
    CONTROLS.calls.append(("t.on_idle", ctx.instance_id, None))
    ctx.state = attrs.evolve(ctx.state, idles=ctx.state.idles + 1)


REGISTRY = {
    "c": Continuous(
        state=Runs, schedule=every(PERIOD), execute=c_execute,
        retry=Retry(max_attempts=MAX_ATTEMPTS, delay=RETRY_DELAY), concurrency=1,
    ),
    "d": Debounce(
        event=int, state=list[int], on_event=d_reduce, execute=d_execute,
        flush_after=FLUSH_AFTER, max_events=MAX_EVENTS, concurrency=1,
    ),
    "t": Task(
        state=Order, event=int, on_event=t_on_event, execute=t_execute, on_idle=t_on_idle,
        concurrency=1,
    ),
}  # fmt: skip

C_IDS = tuple(f"continuous:c:{i}" for i in IDS)
D_IDS = tuple(f"debounce:d:{i}" for i in IDS)
T_IDS = tuple(f"task:t:{i}" for i in IDS)
ALL_IDS = C_IDS + D_IDS + T_IDS


# -- the model --------------------------------------------------------------------------------


@attrs.frozen
class Cont:
    runs: int  # the state: successful runs
    run_count: int
    attempt: int
    due_at: float | None
    scheduled_for: float | None
    anchor: float | None


@attrs.frozen
class Deb:
    batch: tuple[int, ...]  # the folded events (= the state)
    queued: tuple[tuple[int, float], ...]  # (event, added_at) stored behind a running step
    status: str  # "debouncing" | "failed"
    attempt: int
    started_at: float | None
    due_at: float | None
    reason: str | None  # a parked batch keeps the reason of the flush that failed
    window: float | None  # scheduled_for: when the batch's window ends


@attrs.frozen
class Tsk:
    events: int
    executes: int
    idles: int
    event_count: int
    run_count: int
    status: str  # "active" | "idle" | "failed"
    attempt: int
    due_at: float | None


Inst = Cont | Deb | Tsk


@attrs.frozen
class World:
    """What must be stored (``insts``, ``keys``) plus the user's logs (see the module doc)."""

    insts: Mapping[str, Inst] = attrs.field(factory=dict)
    keys: frozenset[tuple[str, str]] = frozenset()
    acked: tuple[tuple[str, int], ...] = ()  # debounce events whose add returned, in order
    flushed: tuple[tuple[str, tuple[int, ...]], ...] = ()  # batches committed by flushes
    discarded: tuple[tuple[str, tuple[int, ...]], ...] = ()  # batches a clear threw away
    paused: frozenset[str] = frozenset()  # paused job names and instance ids

    def stored(self) -> tuple[dict[str, Inst], frozenset[tuple[str, str]], frozenset[str]]:
        return dict(self.insts), self.keys, self.paused

    def check(self) -> None:
        """No acknowledged debounce event lost or duplicated: each is accounted for once."""
        for iid in D_IDS:
            acked = [e for i, e in self.acked if i == iid]
            seen: list[int] = []
            for log in sorted(
                [(n, b) for n, (i, b) in enumerate(self.flushed) if i == iid]
                + [(n + 0.5, b) for n, (i, b) in enumerate(self.discarded) if i == iid]
            ):
                seen += log[1]
            inst = self.insts.get(iid)
            if isinstance(inst, Deb):
                seen += inst.batch
                seen += [e for e, _ in inst.queued]
            assert sorted(seen) == sorted(acked), f"{iid}: acknowledged {acked}, accounted {seen}"
            assert len(set(seen)) == len(seen), f"{iid}: an event is in two places: {seen}"


def next_after(anchor: float, after: float) -> float:
    """The first grid point ``anchor + k * PERIOD`` strictly after ``after``."""
    return anchor + (math.floor((after - anchor) / PERIOD) + 1) * PERIOD


@attrs.frozen
class Outcome:
    """What one operation must do."""

    world: World
    calls: tuple[tuple[str, str, Any], ...]
    result: dict[str, Any] = attrs.field(factory=dict)  # fields the result must have
    error: type[Exception] | None = None
    fail: frozenset[str] = frozenset()  # failure flags left after the call
    fail_event: frozenset[str] = frozenset()
    # run_due commits pass by pass: the outcome after each pass (its calls are a prefix)
    stages: tuple[Outcome, ...] = ()


class Sim:
    """Simulates one operation on a copy of a world."""

    def __init__(self, world: World, now: float, fail: set[str], fail_event: set[str]) -> None:
        self.insts: dict[str, Any] = dict(world.insts)
        self.keys = set(world.keys)
        self.acked = list(world.acked)
        self.flushed = list(world.flushed)
        self.discarded = list(world.discarded)
        self.paused = set(world.paused)
        self.now = now
        self.fail = set(fail)
        self.fail_event = set(fail_event)
        self.calls: list[tuple[str, str, Any]] = []
        self.stages: list[Outcome] = []

    def outcome(self, result: dict[str, Any] | None = None, error: Any = None) -> Outcome:
        world = World(
            dict(self.insts), frozenset(self.keys), tuple(self.acked), tuple(self.flushed),
            tuple(self.discarded), frozenset(self.paused),
        )  # fmt: skip
        return Outcome(
            world, tuple(self.calls), result or {}, error, frozenset(self.fail),
            frozenset(self.fail_event), tuple(self.stages),
        )  # fmt: skip

    def _failing(self, flags: set[str], iid: str) -> bool:
        if iid in flags:
            flags.discard(iid)
            return True
        return False

    # -- Continuous ---------------------------------------------------------------------------

    def _c_run(self, iid: str, c: Cont, due: float, *, restart: bool) -> str:
        now = self.now
        first = restart or c.attempt == 1
        run_count = c.run_count + 1 if first else c.run_count
        attempt = 1 if restart else c.attempt
        anchor = now if restart else c.anchor
        assert anchor is not None
        self.calls.append(("c.execute", iid, c.runs))
        if not self._failing(self.fail, iid):
            nxt = next_after(anchor, max(due, now))
            self.insts[iid] = Cont(c.runs + 1, run_count, 1, nxt, nxt, anchor)
            return "ok"
        if attempt < MAX_ATTEMPTS:
            self.insts[iid] = Cont(c.runs, run_count, attempt + 1, now + RETRY_DELAY, due, anchor)
            return "retry"
        del self.insts[iid]  # retries exhausted: terminate (purge)
        return "exhausted"

    def c_start(self, iid: str) -> dict[str, Any]:
        if iid in self.insts:
            return {"created": False, "status": "running"}
        fresh = Cont(0, 0, 1, None, None, self.now)
        out = self._c_run(iid, fresh, self.now, restart=False)
        return {"created": True, "status": "running", "retry_scheduled": out == "retry"}

    def c_trigger(self, iid: str) -> dict[str, Any]:
        c = self.insts.get(iid)
        if c is None:
            return {"triggered": False}
        out = self._c_run(iid, c, self.now, restart=True)
        return {"triggered": True, "terminated": False, "retry_scheduled": out == "retry"}

    def terminate(self, iid: str) -> dict[str, Any]:
        inst = self.insts.pop(iid, None)
        if inst is None:
            return {"terminated": False}
        return {"terminated": True}

    # -- Debounce -----------------------------------------------------------------------------

    def _fold(self, iid: str, d: Deb | None, add: int | None, flush: str | None) -> dict[str, Any]:
        now = self.now
        created = d is None
        if d is None:
            d = Deb((), (), "debouncing", 1, None, None, None, None)
        items = list(d.queued) + ([(add, now)] if add is not None else [])
        batch = list(d.batch)
        started, window = d.started_at, d.window
        rest: tuple[tuple[int, float], ...] = ()
        for index, (event, added_at) in enumerate(items):
            if len(batch) >= MAX_EVENTS:
                rest = tuple(items[index:])  # a batch never exceeds max_events: these wait
                break
            self.calls.append(("d.on_event", iid, event))
            if self._failing(self.fail_event, iid):
                if index == len(d.queued):  # the added event: the call raises, nothing changes
                    return {"error": ExecutionError}
                # A queued event: the step fails (no retry: the batch parks) and every queued
                # event stays queued, the one this call adds included (behaviour 5).
                queued = d.queued + (((add, now),) if add is not None else ())
                self.insts[iid] = attrs.evolve(
                    d, queued=queued, status="failed", attempt=d.attempt + 1, due_at=None
                )
                return {"failed": True}
            if not batch:
                started = added_at
            batch.append(event)
            assert started is not None
            window = started + FLUSH_AFTER
        if not batch:
            if not created:
                del self.insts[iid]
            return {"flushed": False, "event_count": 0, "reason": "empty"}
        assert window is not None
        if flush == "flush_after?":  # an alarm: flush only if the window is over
            flush = "flush_after" if window <= now else None
        if flush is None and len(batch) >= MAX_EVENTS:
            flush = "max_events"
        folded = Deb(tuple(batch), rest, d.status, d.attempt, started, d.due_at, d.reason, window)
        result: dict[str, Any] = {"created": created, "event_count": len(batch), "requeued": rest}
        if flush is None or (folded.status == "failed" and flush != "manual"):
            if folded.status == "failed":
                due = None  # parked: no alarm until resumed
            elif folded.attempt > 1 and folded.due_at is not None:
                due = folded.due_at
            else:
                due = window
            if folded.reason == "manual" and folded.due_at is not None:
                # A flush that was asked for (manual, or a resumed batch that a manual flush
                # parked) stays due now: a later add does not postpone it.
                due = min(due, folded.due_at)
            if rest and folded.status != "failed" and folded.attempt == 1:
                due = min(now if due is None else due, now)  # queued events: a step soon
            self.insts[iid] = attrs.evolve(folded, due_at=due)
            return {**result, "flushed": False, "reason": None}
        self.calls.append(("d.execute", iid, tuple(batch)))
        if self._failing(self.fail, iid):
            self.insts[iid] = attrs.evolve(
                folded, status="failed", attempt=folded.attempt + 1, due_at=None, reason=flush
            )
            return {**result, "flushed": False, "reason": flush}
        self.insts.pop(iid, None)
        self.flushed.append((iid, tuple(batch)))
        if rest:  # the next batch's events: a fresh instance, due now
            self.insts[iid] = Deb((), rest, "debouncing", 1, None, now, None, None)
        return {**result, "flushed": True, "reason": flush}

    def _key_taken(self, iid: str, key: str | None) -> bool:
        return key is not None and (iid, key) in self.keys

    def d_add(self, iid: str, event: int, key: str | None = None) -> tuple[dict[str, Any], Any]:
        if self._key_taken(iid, key):
            return {}, DuplicateEventError
        result = self._fold(iid, self.insts.get(iid), event, None)
        if "error" in result:
            return {}, result["error"]
        self.acked.append((iid, event))
        if key is not None:
            self.keys.add((iid, key))
        if "failed" in result:
            return {"created": False}, None
        if result["requeued"]:  # the batch was full: the result counts the next batch
            return {"created": result["created"], "event_count": len(result["requeued"])}, None
        return {"created": result["created"], "event_count": result["event_count"]}, None

    def d_enqueue(self, iid: str, event: int, key: str | None = None) -> tuple[dict[str, Any], Any]:
        if self._key_taken(iid, key):
            return {}, DuplicateEventError
        now = self.now
        d = self.insts.get(iid)
        if d is None:
            self.insts[iid] = Deb((), ((event, now),), "debouncing", 1, None, now, None, None)
        else:
            due = d.due_at
            if d.status != "failed" and (due is None or due > now):
                due = now  # the next step folds it soon
            self.insts[iid] = attrs.evolve(d, queued=(*d.queued, (event, now)), due_at=due)
        self.acked.append((iid, event))
        if key is not None:
            self.keys.add((iid, key))
        return {"created": False}, None

    def d_flush(self, iid: str) -> dict[str, Any]:
        d = self.insts.get(iid)
        if d is None:
            return {"flushed": False, "event_count": 0, "reason": "empty"}
        result = self._fold(iid, d, None, "manual")
        if "failed" in result:  # a queued event's reducer failed: the batch parked
            return {"flushed": False}
        return {k: result[k] for k in ("flushed", "event_count", "reason")}

    def d_clear(self, iid: str) -> dict[str, Any]:
        d = self.insts.pop(iid, None)
        if d is None:
            return {"cleared": False, "discarded_events": 0}
        events = d.batch + tuple(e for e, _ in d.queued)
        self.discarded.append((iid, events))
        return {"cleared": True, "discarded_events": len(events)}

    def _d_alarm(self, iid: str, d: Deb) -> None:
        if d.reason is None and d.attempt == 1:
            self._fold(iid, d, None, "flush_after?")
        else:
            self._fold(iid, d, None, d.reason or "flush_after")

    # -- Task ---------------------------------------------------------------------------------

    def t_send(self, iid: str, event: int, key: str | None) -> tuple[dict[str, Any], Any]:
        if self._key_taken(iid, key):
            return {}, DuplicateEventError
        self.calls.append(("t.on_event", iid, event))
        if self._failing(self.fail_event, iid):
            return {}, ExecutionError
        t = self.insts.get(iid)
        created = t is None
        if t is None:
            t = Tsk(0, 0, 0, 0, 0, "idle", 1, None)
        due = self.now + TASK_DELAY
        attempt = t.attempt if t.attempt > 1 and due == t.due_at else 1
        self.insts[iid] = Tsk(
            t.events + 1, t.executes, t.idles, t.event_count + 1, t.run_count, "active",
            attempt, due,
        )  # fmt: skip
        if key is not None:
            self.keys.add((iid, key))
        return {"created": created, "scheduled_at": due}, None

    def _t_execute(self, iid: str, t: Tsk, attempt: int) -> None:
        execute_count = t.run_count + 1 if attempt == 1 else t.run_count
        self.calls.append(("t.execute", iid, None))
        if self._failing(self.fail, iid):  # no retry: park
            self.insts[iid] = attrs.evolve(
                t, status="failed", due_at=None, attempt=attempt + 1, run_count=execute_count
            )
            return
        self.calls.append(("t.on_idle", iid, None))  # execute set no alarm
        self.insts[iid] = attrs.evolve(
            t, executes=t.executes + 1, idles=t.idles + 1, status="idle", attempt=1,
            run_count=execute_count, due_at=None,
        )  # fmt: skip

    def t_trigger(self, iid: str) -> dict[str, Any]:
        t = self.insts.get(iid)
        if t is None:
            return {"triggered": False}
        self._t_execute(iid, t, 1)
        return {"triggered": True}

    # -- shared ---------------------------------------------------------------------------------

    def resume(self, iid: str) -> tuple[dict[str, Any], Any]:
        inst = self.insts.get(iid)
        if inst is None:
            return {}, InstanceNotFoundError
        if inst.status != "failed":
            return {}, InvalidStateError
        live = "debouncing" if isinstance(inst, Deb) else "active"
        self.insts[iid] = attrs.evolve(inst, status=live, due_at=self.now, attempt=1)
        return {"resumed": True}, None

    def set_paused(self, target: str, paused: bool) -> dict[str, Any]:
        changed = (target in self.paused) != paused
        if paused:
            self.paused.add(target)
        else:
            self.paused.discard(target)
        return {"paused": paused, "changed": changed}

    def run_due(self, held: frozenset[str] = frozenset()) -> int:
        """Passes over the due instances, one step each, until a pass finds nothing due.

        A step can leave its instance due at once (a flush that left queued events for the next
        batch revives the instance, due now), so one ``run_due`` may step an instance twice.
        Each pass commits on its own (``stages``): a failed commit leaves the earlier passes.
        Paused instances and jobs, and the jobs in ``held`` (their one slot is taken
        elsewhere), run nothing: their alarms stay as they are.
        """
        total = 0
        while True:
            due = sorted(
                (inst.due_at, iid)
                for iid, inst in self.insts.items()
                if inst.due_at is not None and inst.due_at <= self.now
                and iid not in self.paused
                and not {iid.split(":")[1]} & (self.paused | held)
            )  # fmt: skip
            if not due:
                return total
            for _, iid in due:
                inst = self.insts[iid]
                if isinstance(inst, Cont):
                    assert inst.scheduled_for is not None
                    self._c_run(iid, inst, inst.scheduled_for, restart=False)
                elif isinstance(inst, Deb):
                    self._d_alarm(iid, inst)
                else:
                    self._t_execute(iid, inst, inst.attempt)
            total += len(due)
            self.stages.append(self.outcome())


# -- reading a database as a world --------------------------------------------------------------


def observe(
    jobs: Jobs,
) -> tuple[dict[str, Inst], frozenset[tuple[str, str]], frozenset[str]]:
    """The stored part of a world, read from a database through ``jobs``.

    Also checks that each row is internally consistent with its kind's rules (status vs alarm,
    counters vs state), independently of the model.
    """
    store = jobs.engine.store
    insts: dict[str, Inst] = {}
    for iid in ALL_IDS:
        row = store.load(iid)
        if row is None:
            assert not store.queued(iid), f"{iid}: queued events without an instance row"
            continue
        kind, job, user_id = iid.split(":")
        assert (row.kind, row.job, row.user_id) == (kind, job, user_id)
        if kind == "continuous":
            state = jobs.continuous("c").get_state(user_id)
            assert row.status == "running", f"{iid}: {row}"
            assert row.due_at is not None, f"{iid}: a running continuous job without an alarm"
            insts[iid] = Cont(
                state.n, row.run_count, row.attempt, row.due_at, row.scheduled_for, row.anchor
            )
        elif kind == "debounce":
            batch = tuple(jobs.debounce("d").get_state(user_id) or ())
            queued = tuple((json.loads(q.event), q.added_at) for q in store.queued(iid))
            assert row.event_count == len(batch), f"{iid}: event_count vs state: {row}"
            if row.status == "failed":
                assert row.due_at is None, f"{iid}: a parked batch with an alarm: {row}"
            else:
                assert row.status == "debouncing", row
                assert batch or queued, f"{iid}: an empty batch kept: {row}"
                assert row.due_at is not None, f"{iid}: events pending without an alarm: {row}"
            insts[iid] = Deb(
                batch, queued, row.status, row.attempt, row.started_at, row.due_at, row.reason,
                row.scheduled_for,
            )  # fmt: skip
        else:
            state = jobs.task("t").get_state(user_id)
            assert (row.status == "active") == (row.due_at is not None), f"{iid}: {row}"
            assert state is not None, f"{iid}: no state: {row}"
            assert state.events == row.event_count, f"{iid}: {row} {state}"
            insts[iid] = Tsk(
                state.events, state.executes, state.idles, row.event_count, row.run_count,
                row.status, row.attempt, row.due_at,
            )  # fmt: skip
    keys = frozenset(
        (str(i), str(k)) for i, k in store.query("SELECT instance_id, key FROM event_keys")
    )
    return insts, keys, store.paused_targets()
